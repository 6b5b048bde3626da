//! `vigil.toml`: the typed config of a vigil process. Unknown keys are refused with file, line and
//! column; every value is checked once, here, before anything runs.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vigil_detect::DetectConfig;
use vigil_ingest::ArchiveConfig;

/// The whole config file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VigilConfig {
    /// Where events come from.
    #[serde(default)]
    pub input: InputConfig,
    /// Where everything is kept.
    #[serde(default)]
    pub archive: ArchiveConfig,
    /// How events are judged.
    #[serde(default)]
    pub detect: DetectConfig,
    /// Where findings are also written as NDJSON, besides the archive.
    #[serde(default)]
    pub output: OutputConfig,
    /// Consume Kafka topics as a consumer group instead of reading [input].
    #[serde(default)]
    pub kafka: Option<vigil_ingest::source::kafka::KafkaConfig>,
    /// `vigil serve`: events over HTTP.
    #[serde(default)]
    pub http: HttpConfig,
    /// The server beside `vigil run`: metrics, the control API, the gateway check.
    #[serde(default)]
    pub api: ApiConfig,
    /// What findings do to agents: breakers, modes, trip rules, the flap guard.
    #[serde(default)]
    pub respond: vigil_respond::RespondConfig,
    /// Where breaker transitions are sent (Standard Webhooks), one table per endpoint.
    #[serde(default)]
    pub webhook: Vec<WebhookConfig>,
    /// The control log (breaker state and webhook outbox) and how long a finite run waits for it.
    #[serde(default)]
    pub control: ControlConfig,
    /// A listener for Prometheus alone.
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// `[metrics]`: a listener of its own for `/metrics` and `/healthz` (no API, so no token: the metrics
/// name no agent). For runs without `[api] listen`, or to scrape on another interface than the API's.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to listen on, e.g. `127.0.0.1:9465`; none by default.
    #[serde(default)]
    pub listen: Option<String>,
}

/// `[[webhook]]`: one endpoint that is told about breaker transitions.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// A name for the record ("halt delivered to NAME"); the URL's host when not given.
    #[serde(default)]
    pub name: Option<String>,
    /// `http://` or `https://` URL.
    pub url: String,
    /// The signing secret, `whsec_…`, inline (prefer `secret_env` or `secret_file`).
    #[serde(default)]
    pub secret: Option<String>,
    /// An environment variable holding the secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// A file holding the secret.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// The event types sent (`agent.halt`, `agent.warn`, `agent.half_open`, `agent.resume`, `cohort.…`,
    /// `fleet.…`); by default every halt, warn and resume.
    #[serde(default = "default_webhook_events")]
    pub events: Vec<String>,
    /// Allow targets in private, loopback or link-local ranges (a gateway on the same host or network).
    #[serde(default)]
    pub allow_private: bool,
    /// One attempt's limit (connect, TLS, answer), in milliseconds.
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
    /// The first retry's delay, in milliseconds; each retry doubles it (with jitter) up to `max_backoff_ms`.
    #[serde(default = "default_webhook_backoff_ms")]
    pub initial_backoff_ms: u64,
    /// The longest delay between attempts, in milliseconds (a `Retry-After` may ask for longer).
    #[serde(default = "default_webhook_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// A delivery still failing this long after its transition is given up (recorded as failed).
    #[serde(default = "default_webhook_give_up_seconds")]
    pub give_up_after_seconds: u64,
}

fn default_webhook_events() -> Vec<String> {
    [
        "agent.halt",
        "agent.warn",
        "agent.half_open",
        "agent.resume",
        "cohort.halt",
        "cohort.warn",
        "cohort.resume",
        "fleet.halt",
        "fleet.warn",
        "fleet.resume",
    ]
    .map(String::from)
    .to_vec()
}
const fn default_webhook_timeout_ms() -> u64 {
    5_000
}
const fn default_webhook_backoff_ms() -> u64 {
    500
}
const fn default_webhook_max_backoff_ms() -> u64 {
    60_000
}
/// A day: a gateway down over a night still gets its halts in the morning.
const fn default_webhook_give_up_seconds() -> u64 {
    86_400
}

/// `[control]`: where breaker state and the webhook outbox are kept, and the waits around them.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Directory of the control log; `<archive.dir>/_control` by default.
    #[serde(default)]
    pub dir: Option<PathBuf>,
    /// A finite run (a file, stdin) waits this long at the end for its webhooks to be delivered; what
    /// is left stays owed for the next start.
    #[serde(default = "default_delivery_grace_seconds")]
    pub delivery_grace_seconds: f64,
    /// An operator's halt answers once every event received before it is archived, waiting at most this
    /// long (then it answers with `"archived": false`).
    #[serde(default = "default_halt_archive_wait_ms")]
    pub halt_archive_wait_ms: u64,
    /// Transitions remembered per agent for `GET /v1/agents/{id}`.
    #[serde(default = "default_history_per_agent")]
    pub history_per_agent: usize,
    /// The control log is compacted on start when it is larger than this.
    #[serde(default = "default_compact_bytes")]
    pub compact_bytes: u64,
}

const fn default_delivery_grace_seconds() -> f64 {
    10.0
}
const fn default_halt_archive_wait_ms() -> u64 {
    5_000
}
const fn default_history_per_agent() -> usize {
    32
}
const fn default_compact_bytes() -> u64 {
    64 << 20
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            dir: None,
            delivery_grace_seconds: default_delivery_grace_seconds(),
            halt_archive_wait_ms: default_halt_archive_wait_ms(),
            history_per_agent: default_history_per_agent(),
            compact_bytes: default_compact_bytes(),
        }
    }
}

impl ControlConfig {
    /// The control log's directory.
    pub fn dir(&self, archive: &ArchiveConfig) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| archive.dir.join("_control"))
    }
}

/// `[api]`: the one HTTP server beside `vigil run` (a file, stdin or a Kafka member): `/metrics`,
/// `/healthz`, the control API and the gateway check. `vigil serve` hosts the same routes on
/// `[http] listen`. Beyond loopback it needs a token.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address to listen on, e.g. `127.0.0.1:9464` (Prometheus's usual exporter range); none by default:
    /// a batch run needs no server.
    #[serde(default)]
    pub listen: Option<String>,
    /// An environment variable holding the bearer token of the control API (and the check).
    #[serde(default)]
    pub token_env: Option<String>,
    /// A file holding that token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// An environment variable holding a read-only token: the check endpoint and the GETs, no commands.
    #[serde(default)]
    pub read_token_env: Option<String>,
    /// A file holding the read-only token.
    #[serde(default)]
    pub read_token_file: Option<PathBuf>,
    /// The header Envoy's ext_authz (HTTP) check takes the agent id from.
    #[serde(default = "default_agent_header")]
    pub agent_header: String,
    /// The most agents one page of `GET /v1/agents` lists.
    #[serde(default = "default_page_limit")]
    pub max_page: usize,
}

fn default_agent_header() -> String {
    "x-agent-id".into()
}
const fn default_page_limit() -> usize {
    1000
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: None,
            token_env: None,
            token_file: None,
            read_token_env: None,
            read_token_file: None,
            agent_header: default_agent_header(),
            max_page: default_page_limit(),
        }
    }
}

/// `[http]`: the `POST /v1/events` endpoint of `vigil serve`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on. Loopback by default: put a TLS-terminating proxy in front to expose it.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Largest request body as sent (compressed or not), in bytes; larger ones get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Largest request body once decompressed, in bytes; a body that inflates past it gets 413.
    #[serde(default = "default_max_decoded_bytes")]
    pub max_decoded_bytes: usize,
    /// Requests handled at once once their bodies are in (decompressed, checked, taken); one more gets
    /// 429. A body still arriving holds no such slot, so slow clients cannot shut honest ones out.
    /// Bounds decompression memory at about `max_inflight_requests * max_decoded_bytes`.
    #[serde(default = "default_max_inflight_requests")]
    pub max_inflight_requests: usize,
    /// Bytes of request bodies being received at once, over all clients, taken as the bytes arrive (a
    /// client trickling a body holds only what it sent); a request that would go over gets 429.
    #[serde(default = "default_body_bytes_in_flight")]
    pub body_bytes_in_flight: usize,
    /// The slowest a body may arrive, on average, after its first two seconds; a slower one gets 408
    /// rather than holding its connection for `request_timeout_seconds`. `0`: no minimum.
    #[serde(default = "default_min_body_bytes_per_second")]
    pub min_body_bytes_per_second: u64,
    /// Without Kafka: request batches waiting for the pipeline thread; when full, requests get 429.
    #[serde(default = "default_queue_batches")]
    pub queue_batches: usize,
    /// The `Retry-After` a saturated server answers with, in seconds.
    #[serde(default = "default_retry_after_seconds")]
    pub retry_after_seconds: u64,
    /// Time allowed to receive a request's headers and body, in seconds; a slower client gets 408.
    #[serde(default = "default_request_timeout_seconds")]
    pub request_timeout_seconds: u64,
    /// Per-item errors listed in a response; the rest are counted.
    #[serde(default = "default_max_errors_listed")]
    pub max_errors_listed: usize,
    /// Items (NDJSON lines, blank ones included, or array elements) one request may carry; a body with
    /// more gets 413 before anything of it is kept. Bounds what a request costs whatever it inflates to.
    #[serde(default = "default_max_items_per_request")]
    pub max_items_per_request: usize,
    /// Threads serving connections.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// On SIGINT/SIGTERM, how long requests in flight are given to finish, in seconds.
    #[serde(default = "default_drain_seconds")]
    pub drain_seconds: u64,
    /// Who may post events (`[[http.sender]]`): with any declared, a request needs one's bearer token
    /// (401 otherwise) and may only carry events for the agents (and from the sources) that sender is
    /// granted. With none, anyone who reaches the listener may post for any agent, which `vigil serve`
    /// allows on loopback only.
    #[serde(default, rename = "sender", skip_serializing_if = "Vec::is_empty")]
    pub senders: Vec<SenderConfig>,
}

/// One sender of events (a gateway, a service): its token, and what it may claim.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SenderConfig {
    /// Its name, in dead letters and logs.
    pub name: String,
    /// An environment variable holding its bearer token (at least 16 characters).
    #[serde(default)]
    pub token_env: Option<String>,
    /// A file holding its bearer token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The agent ids (globs) it may send events for.
    pub agents: Vec<String>,
    /// The `source` values (globs) its events may carry; empty allows any, and none.
    #[serde(default)]
    pub sources: Vec<String>,
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}
/// 8 MiB: thousands of events per request, and a gateway batching each second stays well inside.
const fn default_max_body_bytes() -> usize {
    8 << 20
}
/// 64 MiB: room for an 8× gzip ratio on a full body.
const fn default_max_decoded_bytes() -> usize {
    64 << 20
}
const fn default_max_inflight_requests() -> usize {
    64
}
/// 512 MiB: 64 full bodies.
const fn default_body_bytes_in_flight() -> usize {
    512 << 20
}
/// 1 KiB/s: slower than any real sender, faster than a slow-loris drip.
const fn default_min_body_bytes_per_second() -> u64 {
    1024
}
const fn default_queue_batches() -> usize {
    16
}
const fn default_retry_after_seconds() -> u64 {
    1
}
const fn default_request_timeout_seconds() -> u64 {
    30
}
/// 100k items: a full 8 MiB body of events is about 20k; a gzip body inflating to 64 MiB of real
/// events about 140k, which a client splits in two. 100k items cost the pipeline about 60 MB.
const fn default_max_items_per_request() -> usize {
    100_000
}
const fn default_max_errors_listed() -> usize {
    100
}
const fn default_workers() -> usize {
    2
}
const fn default_drain_seconds() -> u64 {
    30
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            max_body_bytes: default_max_body_bytes(),
            max_decoded_bytes: default_max_decoded_bytes(),
            max_inflight_requests: default_max_inflight_requests(),
            body_bytes_in_flight: default_body_bytes_in_flight(),
            min_body_bytes_per_second: default_min_body_bytes_per_second(),
            queue_batches: default_queue_batches(),
            retry_after_seconds: default_retry_after_seconds(),
            request_timeout_seconds: default_request_timeout_seconds(),
            max_errors_listed: default_max_errors_listed(),
            max_items_per_request: default_max_items_per_request(),
            workers: default_workers(),
            drain_seconds: default_drain_seconds(),
            senders: Vec::new(),
        }
    }
}

impl HttpConfig {
    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigProblem> {
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return bad(
                "http.listen",
                format!("must be an address like 127.0.0.1:8080, got {:?}", self.listen),
            );
        }
        for (key, v) in [
            ("http.max_body_bytes", self.max_body_bytes),
            ("http.max_decoded_bytes", self.max_decoded_bytes),
            ("http.max_inflight_requests", self.max_inflight_requests),
            ("http.queue_batches", self.queue_batches),
            ("http.max_items_per_request", self.max_items_per_request),
            ("http.workers", self.workers),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1".into());
            }
        }
        if self.max_decoded_bytes < self.max_body_bytes {
            return bad(
                "http.max_decoded_bytes",
                format!(
                    "({}) must be at least http.max_body_bytes ({})",
                    self.max_decoded_bytes, self.max_body_bytes
                ),
            );
        }
        if self.request_timeout_seconds == 0 {
            return bad("http.request_timeout_seconds", "must be at least 1".into());
        }
        if self.body_bytes_in_flight < self.max_body_bytes {
            return bad(
                "http.body_bytes_in_flight",
                format!(
                    "({}) must be at least http.max_body_bytes ({}), or a full body could never be read",
                    self.body_bytes_in_flight, self.max_body_bytes
                ),
            );
        }
        let mut names = std::collections::HashSet::new();
        for sd in &self.senders {
            if sd.name.is_empty() || !names.insert(sd.name.as_str()) {
                return bad("http.sender", format!("needs a name of its own, got {:?}", sd.name));
            }
            if sd.token_env.is_some() == sd.token_file.is_some() {
                return bad("http.sender", format!("{:?} needs one of token_env or token_file", sd.name));
            }
            if sd.agents.is_empty() {
                return bad(
                    "http.sender",
                    format!("{:?} grants no agents (agents = [\"*\"] grants every one)", sd.name),
                );
            }
        }
        Ok(())
    }
}

/// `[input]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// NDJSON file (plain, `.gz` or `.zst`) or `-` for stdin.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Name of the source in archive file names and checkpoints. Defaults to the file name without
    /// extensions; stdin defaults to `stdin-<start time>` so two different streams never share one.
    #[serde(default)]
    pub source_name: Option<String>,
    /// Largest accepted event, in bytes; larger lines are dead-lettered as `too_large`.
    #[serde(default = "default_max_event_bytes")]
    pub max_event_bytes: usize,
    /// How many bytes of a `too_large` line its dead letter keeps (other refused lines are kept whole).
    #[serde(default = "default_dead_letter_payload_bytes")]
    pub dead_letter_payload_bytes: usize,
    /// How many recent event_ids are remembered to refuse duplicates (0 turns the check off).
    #[serde(default = "default_dedup_window")]
    pub dedup_window: usize,
    /// Bytes of input decoded per batch.
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: usize,
    /// Seconds an event's `ts` may be ahead of this host's clock; later ones are dead-lettered as
    /// `future_timestamp` (0 turns the check off, e.g. to replay a simulated future).
    #[serde(default = "default_max_future_seconds")]
    pub max_future_seconds: u64,
    /// Batches of at least this many items use a second core: their lines are decoded on two threads,
    /// and their rows are built for the archive while the engine judges them (0: one thread always).
    /// A file run decodes on its own reading thread, and builds rows beside the engine only with more
    /// than three cores. The same input gives the same findings and archive either way.
    #[serde(default = "default_parallel_batch_items")]
    pub parallel_batch_items: usize,
    /// From stdin: whole lines that arrived are judged and archived after at most this many milliseconds,
    /// even when a batch is far from full (a trickling pipe). 0 waits for full batches.
    #[serde(default = "default_batch_timeout_ms")]
    pub batch_timeout_ms: u64,
}

/// The contract's cap: 1 MiB.
const fn default_max_event_bytes() -> usize {
    vigil_schemas::DEFAULT_MAX_EVENT_BYTES
}
/// 64 KiB of a bad line is plenty to see what it was.
const fn default_dead_letter_payload_bytes() -> usize {
    64 * 1024
}
/// One million ids is about 24 MiB and covers minutes of a busy fleet, where redelivery happens.
const fn default_dedup_window() -> usize {
    1_000_000
}
/// A quarter of an hour: far beyond honest clock skew, far short of blinding a day of windows.
const fn default_max_future_seconds() -> u64 {
    900
}
/// Half a second: a critical event in a trickle is judged at once, and a busy pipe still fills batches.
const fn default_batch_timeout_ms() -> u64 {
    500
}
/// Below about a thousand items (a millisecond or two of work) a second thread costs more than it saves.
const fn default_parallel_batch_items() -> usize {
    1024
}
/// 4 MiB batches (about 10k events) amortise per-batch work and stay in cache-friendly sizes.
const fn default_batch_bytes() -> usize {
    4 << 20
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            path: None,
            source_name: None,
            max_event_bytes: default_max_event_bytes(),
            dead_letter_payload_bytes: default_dead_letter_payload_bytes(),
            dedup_window: default_dedup_window(),
            batch_bytes: default_batch_bytes(),
            max_future_seconds: default_max_future_seconds(),
            parallel_batch_items: default_parallel_batch_items(),
            batch_timeout_ms: default_batch_timeout_ms(),
        }
    }
}

/// `[output]`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputConfig {
    /// Findings as NDJSON, to a file or `-` for stdout.
    #[serde(default)]
    pub findings: Option<PathBuf>,
    /// Seconds between the status lines that long-running commands (`vigil run --kafka`, `vigil serve`)
    /// write to stderr; 0 turns them off.
    #[serde(default = "default_status_seconds")]
    pub status_seconds: f64,
}

/// A line a minute: enough to see a service is alive and how fast it goes, little enough for any log.
const fn default_status_seconds() -> f64 {
    60.0
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig { findings: None, status_seconds: default_status_seconds() }
    }
}

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown keys or wrong types.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A value is out of range.
    #[error("{path}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong (boxed: errors travel by value and this one is large).
        problem: Box<ConfigProblem>,
    },
}

/// A config value vigil cannot run with; the message names the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigProblem {
    /// In `[archive]`.
    #[error(transparent)]
    Archive(#[from] vigil_ingest::archive::ArchiveConfigError),
    /// In `[kafka]`.
    #[error(transparent)]
    Kafka(#[from] vigil_ingest::source::kafka::KafkaSetupError),
    /// In `[detect]`.
    #[error(transparent)]
    Detect(#[from] vigil_detect::ConfigError),
    /// In `[respond]`.
    #[error(transparent)]
    Respond(#[from] vigil_respond::ConfigError),
    /// Any other key.
    #[error("{key} {problem}")]
    Value {
        /// The key, with its table (`http.listen`).
        key: &'static str,
        /// What is wrong with its value.
        problem: String,
    },
}

fn bad(key: &'static str, problem: String) -> Result<(), ConfigProblem> {
    Err(ConfigProblem::Value { key, problem })
}

impl VigilConfig {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<VigilConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and checks config text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<VigilConfig, ConfigError> {
        let mut cfg: VigilConfig = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            let before = &text[..offset.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            ConfigError::Parse { path: path.to_owned(), line, column, message: e.message().trim().to_owned() }
        })?;
        // How far ahead an event may be stamped is how far the watermark may be asked to lag.
        cfg.detect.max_skew_seconds.get_or_insert(cfg.input.max_future_seconds);
        cfg.validate().map_err(|p| ConfigError::Invalid { path: path.to_owned(), problem: Box::new(p) })?;
        Ok(cfg)
    }

    /// Checks every value; the message names the key.
    pub fn validate(&self) -> Result<(), ConfigProblem> {
        self.archive.validate()?;
        self.http.validate()?;
        if let Some(l) = &self.api.listen
            && l.parse::<std::net::SocketAddr>().is_err()
        {
            return bad("api.listen", format!("must be an address like 127.0.0.1:9464, got {l:?}"));
        }
        if let Some(l) = &self.metrics.listen
            && l.parse::<std::net::SocketAddr>().is_err()
        {
            return bad("metrics.listen", format!("must be an address like 127.0.0.1:9465, got {l:?}"));
        }
        if let Some(k) = &self.kafka {
            k.validate()?;
        }
        self.detect.build()?;
        self.respond.validate()?;
        if self.api.max_page == 0 {
            return bad("api.max_page", "must be at least 1".into());
        }
        if self.api.agent_header.is_empty()
            || !self.api.agent_header.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad(
                "api.agent_header",
                format!("must be a header name, got {:?}", self.api.agent_header),
            );
        }
        let c = &self.control;
        if !(c.delivery_grace_seconds.is_finite() && c.delivery_grace_seconds >= 0.0) {
            return bad(
                "control.delivery_grace_seconds",
                format!("must be 0 or more, got {}", c.delivery_grace_seconds),
            );
        }
        if c.history_per_agent == 0 {
            return bad("control.history_per_agent", "must be at least 1".into());
        }
        let mut names = std::collections::HashSet::new();
        for w in &self.webhook {
            let name = crate::deliver::Endpoint::check(w)
                .map_err(|problem| ConfigProblem::Value { key: "webhook", problem })?;
            if !names.insert(name.clone()) {
                return bad("webhook.name", format!("{name:?} is used by two endpoints; give each a name"));
            }
        }
        let status = self.output.status_seconds;
        if !(status.is_finite() && status >= 0.0) {
            return bad("output.status_seconds", format!("must be 0 (off) or more, got {status}"));
        }
        let i = &self.input;
        if i.max_event_bytes == 0 {
            return bad("input.max_event_bytes", "must be at least 1".into());
        }
        if i.batch_bytes < 4096 {
            return bad("input.batch_bytes", format!("must be at least 4096, got {}", i.batch_bytes));
        }
        if let Some(name) = &i.source_name
            && let Some(problem) = vigil_ingest::source::source_name_problem(name)
        {
            return bad("input.source_name", format!("{name:?} {problem}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/vigil.toml"));
        let cfg = VigilConfig::load(path).unwrap();
        assert!(!cfg.detect.policies.is_empty());
    }

    #[test]
    fn unknown_keys_name_file_line_and_column() {
        let err = VigilConfig::parse("[archive]\nflush_rows = 10\n  flush_secs = 3\n", Path::new("v.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("v.toml:3:3: unknown field `flush_secs`"), "{err}");
        let err = VigilConfig::parse("[archive]\nflush_rows = \"many\"\n", Path::new("v.toml")).unwrap_err();
        assert!(err.to_string().starts_with("v.toml:2:14: invalid type"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_refused() {
        let err = VigilConfig::parse("[archive]\nzstd_level = 40\n", Path::new("v.toml")).unwrap_err();
        assert_eq!(err.to_string(), "v.toml: archive.zstd_level must be between 1 and 22, got 40");
        let err =
            VigilConfig::parse("[archive]\nrandom_id_zstd_level = 0\n", Path::new("v.toml")).unwrap_err();
        assert_eq!(err.to_string(), "v.toml: archive.random_id_zstd_level must be between 1 and 22, got 0");
        let err = VigilConfig::parse(
            "[archive]\ntext_statistics = [\"agent_id\", \"sesion_id\"]\n",
            Path::new("v.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("v.toml: archive.text_statistics: \"sesion_id\" is not a text column of the archive (text columns: event_id, agent_id, action, resource,"),
            "{err}"
        );
        assert!(
            err.contains(", session_id,") && err.contains(", finding_id,") && err.contains(", reason,"),
            "{err}"
        );
        let cfg = VigilConfig::parse("[archive]\ntext_statistics = [\"session_id\"]\n", Path::new("v.toml"))
            .unwrap();
        assert_eq!(cfg.archive.text_statistics, ["session_id"]);
        let err = VigilConfig::parse("[input]\nsource_name = \"a/b\"\n", Path::new("v.toml")).unwrap_err();
        assert!(err.to_string().contains("may only hold"), "{err}");
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    /// The documented example must describe the simulator's fleet and the defaults, or it misleads.
    #[test]
    fn example_config_matches_the_simulator_and_the_defaults() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/vigil.toml"));
        let cfg = VigilConfig::load(path).unwrap();
        assert_eq!(cfg.detect.policies, crate::simulate::policies());
        let sensitive: Vec<String> = crate::simulate::SENSITIVE.iter().map(|s| s.to_string()).collect();
        assert_eq!(cfg.detect.sensitive_resources, sensitive);
        let defaults = VigilConfig::default();
        assert_eq!(cfg.input, defaults.input);
        assert_eq!(cfg.archive, defaults.archive);
        assert_eq!(cfg.http, defaults.http);
        assert_eq!(cfg.respond, defaults.respond);
        assert_eq!(cfg.control, defaults.control);
        assert_eq!(cfg.api, defaults.api);
        assert_eq!(cfg.detect.rate_limit_per_minute, defaults.detect.rate_limit_per_minute);
    }
}

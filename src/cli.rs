//! The command line: `vigil run | serve | validate | simulate | audit | eval | demo`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use vigil_ingest::source::{Chunk, LineReader, open_input};
use vigil_schemas::timestamp::parse_rfc3339_ms;

use crate::config::VigilConfig;
use crate::control::Control;
use crate::pipeline::{self, Moved, RunOptions, Summary};
use crate::progress::Progress;
use crate::run::{file, kafka};
use crate::simulate::{self, SimConfig};
use crate::telemetry::Telemetry;
use crate::{audit, eval, server};
use std::sync::Arc;
use vigil_ingest::source::kafka::KafkaConfig;

/// vigil: the audit-log pipeline and anomaly detector for autonomous AI agents.
#[derive(Debug, Parser)]
#[command(name = "vigil", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How vigil's own log events are written on stderr: `human` lines, or `json` objects for a log
    /// shipper. `VIGIL_LOG` filters them (default `info`).
    #[arg(long, global = true, value_enum, env = "VIGIL_LOG_FORMAT", default_value = "human")]
    log_format: crate::log::LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Ingest NDJSON events: validate, judge, archive to Parquet, write findings.
    Run(RunArgs),
    /// Take events over HTTP: POST /v1/events (NDJSON or a JSON array, gzip or zstd). Without Kafka they
    /// are judged and archived here and each request is answered once durable; with --kafka they are
    /// produced to the topic and answered once acknowledged. Runs until SIGINT/SIGTERM.
    Serve(ServeArgs),
    /// Check NDJSON events against the contract; print every bad line and a summary.
    Validate {
        /// NDJSON file (plain, .gz, .zst) or - for stdin.
        input: PathBuf,
        /// Largest accepted event in bytes.
        #[arg(long, default_value_t = vigil_schemas::DEFAULT_MAX_EVENT_BYTES)]
        max_event_bytes: usize,
        /// How many recent event_ids are remembered to report duplicates (as `vigil run` does).
        #[arg(long, default_value_t = 1_000_000)]
        dedup_window: usize,
        /// Seconds an event's ts may be ahead of this host's clock (as `vigil run` does; 0: no bound).
        #[arg(long, default_value_t = 900)]
        max_future_seconds: u64,
        /// Print one JSON document instead: counts, reasons and the bad lines (the first --max-errors).
        #[arg(long)]
        json: bool,
        /// With --json, the most bad lines listed (all are counted).
        #[arg(long, default_value_t = 1000)]
        max_errors: usize,
    },
    /// Generate a realistic fleet of agents as NDJSON, with labelled incidents.
    Simulate(SimArgs),
    /// Least-privilege review over the archive: per agent, allow-list entries never used (revoke
    /// candidates), things used but not declared, shared credentials, agents with no policy, agents
    /// acting for humans.
    Audit(AuditArgs),
    /// Check a config file without running anything (like `vector validate`): every table and value,
    /// the policies and budgets compiled, the webhooks' URLs and secrets; then what it sets up. Exit 0
    /// when it would start, 1 when it would not (the reason printed).
    CheckConfig {
        /// The vigil.toml to check.
        file: PathBuf,
    },
    /// Least privilege from evidence: `vigil policy suggest` writes the allow-lists the archive's
    /// successful actions justify, each entry with its evidence, or compares them with a config's.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Run detection over a simulated fleet and score it against the simulator's labels: recall per
    /// incident kind, precision per finding kind, false findings per 100 agent-days, time to detect.
    Eval(EvalArgs),
    /// Halt an agent, a cohort (every agent behind a model, provider or credential issuer) or the whole
    /// fleet, through a running vigil's control API. A cohort or fleet halt first lists the agents it
    /// would halt and needs --yes. Exit codes: 0 done, 2 failed, 3 unchanged, 4 needs --yes.
    Halt(ControlArgs),
    /// Resume an agent, a cohort or the fleet (stages: resuming the fleet leaves cohort and agent halts
    /// in force). Exit codes: 0 done, 2 failed, 3 unchanged.
    Resume(ControlArgs),
    /// What is halted now, why, since when, by whom, and whether each webhook endpoint has it.
    Status(StatusArgs),
    /// Simulate a fleet with incidents, run the whole pipeline on it, and show what vigil found.
    Demo {
        /// Where the demo writes its input, archive and findings (replaced on each run).
        #[arg(long, default_value = "vigil-demo")]
        dir: PathBuf,
        /// Agents in the simulated fleet.
        #[arg(long, default_value_t = 200)]
        agents: usize,
        /// Simulated span. Six hours leave the baselines their hour of warm-up before the incidents.
        #[arg(long, default_value = "6h")]
        duration: String,
        /// Average fleet-wide events per second of simulated time.
        #[arg(long, default_value_t = 40.0)]
        rate: f64,
        /// Seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Config file (TOML); see examples/vigil.toml.
    #[arg(long)]
    config: Option<PathBuf>,
    /// NDJSON input (plain, .gz, .zst), or - for stdin. Overrides [input] path [default: none; a file run needs one]
    #[arg(long)]
    input: Option<PathBuf>,
    /// Archive root. Overrides [archive] dir [default: vigil-archive]
    #[arg(long)]
    archive: Option<PathBuf>,
    /// Findings as NDJSON to a file, or - for stdout. Overrides [output] findings [default: none; they are archived either way]
    #[arg(long)]
    findings: Option<PathBuf>,
    /// Source name used in archive file names and the checkpoint. Overrides [input] source_name [default: the input file's name; stdin-<time> for stdin]
    #[arg(long)]
    source_name: Option<String>,
    /// Print the run summary as JSON on stdout instead of text on stderr.
    #[arg(long)]
    json: bool,
    /// Consume Kafka instead of a file: bootstrap brokers (host:port,...). Overrides [kafka] brokers.
    #[arg(long, value_name = "BROKERS")]
    kafka: Option<String>,
    /// Topic to consume (repeat for several). Overrides [kafka] topics [default: none; Kafka needs one]
    #[arg(long)]
    topic: Vec<String>,
    /// Consumer group. Overrides [kafka] group [default: vigil]
    #[arg(long)]
    group: Option<String>,
    /// With Kafka: stop once every assigned partition is read to its end and no message has arrived for
    /// this long (e.g. 30s), committing everything. Without it vigil consumes until interrupted.
    #[arg(long)]
    idle_exit: Option<String>,
    /// Serve the control API, the gateway check, /metrics and /healthz beside the run on this address
    /// (e.g. 127.0.0.1:9464). Overrides [api] listen [default: none]
    #[arg(long, value_name = "ADDR")]
    api_listen: Option<String>,
    /// Serve /metrics and /healthz only (no API) on this address. Overrides [metrics] listen
    /// [default: none]
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Config file (TOML); see examples/vigil.toml ([http], [archive], [detect], [kafka]).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on (port 0 picks a free one). Overrides [http] listen [default: 127.0.0.1:8080]
    #[arg(long)]
    listen: Option<String>,
    /// Archive root (without Kafka). Overrides [archive] dir [default: vigil-archive]
    #[arg(long)]
    archive: Option<PathBuf>,
    /// Findings as NDJSON to a file, or - for stdout (without Kafka). Overrides [output] findings [default: none]
    #[arg(long)]
    findings: Option<PathBuf>,
    /// Produce to Kafka instead of judging and archiving here: bootstrap brokers. Overrides [kafka] brokers.
    #[arg(long, value_name = "BROKERS")]
    kafka: Option<String>,
    /// With Kafka: the topic events are produced to. Overrides [kafka] topics [default: none; Kafka needs one]
    #[arg(long)]
    topic: Option<String>,
    /// Print the summary at exit as JSON on stdout instead of text on stderr.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct AuditArgs {
    /// Archive root (as written by `vigil run`).
    #[arg(long)]
    archive: PathBuf,
    /// Config whose policies are reviewed (TOML); default: a vigil.toml beside the archive (as `vigil
    /// demo` writes), else none, and every agent is reported as having no policy.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Start of the period (RFC 3339, inclusive); default: the archive's beginning.
    #[arg(long)]
    since: Option<String>,
    /// End of the period (RFC 3339, exclusive); default: the archive's end.
    #[arg(long)]
    until: Option<String>,
    /// Output: a table for a terminal, JSON, or CSV (one row per item).
    #[arg(long, value_enum, default_value_t = AuditFormat::Table)]
    format: AuditFormat,
    /// Distinct actions, resources or scopes kept per agent (the rest are counted, not listed).
    #[arg(long, default_value_t = 10_000)]
    max_values: usize,
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Write `[[detect.policy]]` allow-lists (TOML) built from the successful actions in the archive,
    /// generalised to the detector's resource prefixes, every entry commented with its evidence (events,
    /// agents, first and last use), for a person to review and commit. With --against, show instead
    /// how a config's policies differ from that evidence.
    Suggest(SuggestArgs),
}

#[derive(Debug, clap::Args)]
struct SuggestArgs {
    /// Archive root (as written by `vigil run`).
    #[arg(long)]
    archive: PathBuf,
    /// Start of the period (RFC 3339, inclusive); default: the archive's beginning.
    #[arg(long)]
    since: Option<String>,
    /// End of the period (RFC 3339, exclusive); default: the archive's end.
    #[arg(long)]
    until: Option<String>,
    /// One policy per role (agents whose events name none get one each), or one per agent.
    #[arg(long, value_enum, default_value = "role")]
    by: crate::policy::By,
    /// Path segments a resource entry keeps before `/**` (default: the config's
    /// detect.scope.resource_depth, else 2).
    #[arg(long)]
    depth: Option<usize>,
    /// Config to read detect.scope.resource_depth and detect.sensitive_resources (marked in the
    /// suggestion) from; default: a vigil.toml beside the archive, else the defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Compare this config's policies with the evidence instead: grants never used (revoke
    /// candidates, `-`), uses never granted (`+`), agents no policy covers (`!`).
    #[arg(long, value_name = "CONFIG")]
    against: Option<PathBuf>,
    /// Write the suggestion to this file instead of stdout.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Distinct actions, resources or scopes kept per policy (the rest are counted and said).
    #[arg(long, default_value_t = 10_000)]
    max_values: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum AuditFormat {
    Table,
    Json,
    Csv,
}

#[derive(Debug, clap::Args)]
struct EvalArgs {
    /// Events (NDJSON, plain, .gz or .zst), as written by `vigil simulate`.
    #[arg(long)]
    events: PathBuf,
    /// Labels (NDJSON), as written by `vigil simulate --labels`.
    #[arg(long)]
    labels: PathBuf,
    /// Config whose [detect] section is evaluated; default: vigil's defaults with the simulator's role
    /// policies and sensitive resources (what `vigil demo` runs).
    #[arg(long)]
    config: Option<PathBuf>,
    /// How long after an incident's end a finding still counts as caused by it.
    #[arg(long, default_value = "10m")]
    grace: String,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Also write every finding (updates folded) as NDJSON to this file, to look at the misses.
    #[arg(long)]
    findings: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
struct SimArgs {
    /// Agents in the fleet.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Simulated span: 90s, 30m, 2h, 7d.
    #[arg(long, default_value = "1h")]
    duration: String,
    /// Start of the span (RFC 3339). A fixed default keeps output reproducible.
    #[arg(long, default_value = "2026-01-05T00:00:00Z")]
    start: String,
    /// Seed: same seed and parameters, same bytes.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Average fleet-wide events per second of simulated time.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Incidents to inject; kinds cycle through runaway_loop, data_exfiltration, scope_drift,
    /// policy_violation, shared_credential, model_swap, denied_burst, scope_creep.
    #[arg(long, default_value_t = 0)]
    incidents: usize,
    /// Also inject a bad_model incident: every agent behind one model turns bad at once (the cohort
    /// breaker's case).
    #[arg(long)]
    bad_model: bool,
    /// Output file, or - for stdout.
    #[arg(long, default_value = "-")]
    out: PathBuf,
    /// Where to write the incident labels (NDJSON).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Produce to Kafka instead of writing a file: bootstrap brokers (host:port,...). Messages are keyed
    /// by agent_id, so each agent's events stay in one partition, in order.
    #[arg(long, value_name = "BROKERS")]
    kafka: Option<String>,
    /// With --kafka: the topic (created with --partitions when missing).
    #[arg(long, default_value = "agent-events")]
    topic: String,
    /// With --kafka: partitions of the topic when vigil creates it.
    #[arg(long, default_value_t = 8)]
    partitions: i32,
    /// With --kafka: messages per second of wall time; 0 produces as fast as the broker takes them.
    #[arg(long, default_value_t = 0.0)]
    produce_rate: f64,
}

/// Where the control API is.
#[derive(Debug, clap::Args)]
struct ApiArgs {
    /// The control API's base URL (a running `vigil run --api-listen` or `vigil serve`).
    #[arg(long, env = "VIGIL_API", default_value = "http://127.0.0.1:9464")]
    api: String,
    /// The environment variable holding the bearer token.
    #[arg(long, default_value = "VIGIL_API_TOKEN")]
    token_env: String,
    /// How long to wait for an answer, in seconds (a halt answers once earlier events are archived).
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
}

/// `vigil halt` and `vigil resume`.
#[derive(Debug, clap::Args)]
struct ControlArgs {
    /// The agent's id.
    agent: Option<String>,
    /// Every agent behind FACTOR=VALUE: model=NAME, provider=NAME or issuer=NAME.
    #[arg(long, value_name = "FACTOR=VALUE")]
    cohort: Option<String>,
    /// Every agent.
    #[arg(long)]
    fleet: bool,
    /// Why (required; archived with the command).
    #[arg(long)]
    reason: String,
    /// Who you are, for the record (default: $USER).
    #[arg(long)]
    actor: Option<String>,
    /// Carry out a cohort or fleet halt (without it, the agents it would halt are listed).
    #[arg(long)]
    yes: bool,
    /// Print the API's answer as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

/// `vigil status`.
#[derive(Debug, clap::Args)]
struct StatusArgs {
    /// One agent in detail: breaker, halt, history, latest findings and what is normal for it.
    agent: Option<String>,
    /// Print the API's answer as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    api: ApiArgs,
}

fn api_target(a: &ApiArgs) -> Result<crate::responder::ApiTarget, String> {
    if !(a.timeout.is_finite() && a.timeout > 0.0) {
        return Err(format!("--timeout must be a positive number of seconds, got {}", a.timeout));
    }
    Ok(crate::responder::ApiTarget {
        url: a.api.clone(),
        token: std::env::var(&a.token_env).ok().filter(|t| !t.is_empty()),
        timeout: std::time::Duration::from_secs_f64(a.timeout),
    })
}

fn cmd_control(verb: &str, args: ControlArgs) -> Result<ExitCode, String> {
    let scope = crate::responder::Scope::from_args(args.agent, args.cohort, args.fleet)?;
    let actor = args.actor.or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "operator".into());
    let api = api_target(&args.api)?;
    crate::responder::command(&api, verb, &scope, &args.reason, &actor, args.yes, args.json)
}

/// Runs the CLI and maps the outcome to an exit code: 0 success, 1 bad input found by `validate`,
/// 2 an error that stopped the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::log::init(cli.log_format);
    let result = match cli.command {
        Command::Run(args) => cmd_run(args),
        Command::Serve(args) => cmd_serve(args),
        Command::Validate { input, max_event_bytes, dedup_window, max_future_seconds, json, max_errors } => {
            let listed = json.then_some(max_errors);
            cmd_validate(&input, max_event_bytes, dedup_window, max_future_seconds, listed)
        }
        Command::Simulate(args) => cmd_simulate(args),
        Command::Eval(args) => cmd_eval(args),
        Command::Audit(args) => cmd_audit(args),
        Command::Policy(PolicyCommand::Suggest(args)) => cmd_suggest(args),
        Command::CheckConfig { file } => Ok(cmd_check_config(&file)),
        Command::Demo { dir, agents, duration, rate, seed } => cmd_demo(&dir, agents, &duration, rate, seed),
        Command::Halt(args) => cmd_control("halt", args),
        Command::Resume(args) => cmd_control("resume", args),
        Command::Status(args) => api_target(&args.api)
            .and_then(|api| crate::responder::status(&api, args.agent.as_deref(), args.json)),
    };
    match result {
        Ok(code) => code,
        Err(msg) if cli.log_format == crate::log::LogFormat::Json => {
            tracing::error!("{msg}");
            ExitCode::from(2)
        }
        Err(msg) => {
            eprintln!("vigil: error: {msg}");
            ExitCode::from(2)
        }
    }
}

fn cmd_run(args: RunArgs) -> Result<ExitCode, String> {
    let mut cfg = load_with(args.config.as_deref(), args.archive, args.findings, args.kafka.as_deref())?;
    if args.input.is_some() && cfg.kafka.is_some() {
        // Either would be silently ignored: say so instead.
        return Err(
            "--input and Kafka ([kafka] or --kafka) are two inputs: give one (a file run, or a member)"
                .into(),
        );
    }
    if let Some(p) = args.input {
        cfg.input.path = Some(p);
    }
    if let Some(s) = args.source_name {
        cfg.input.source_name = Some(s);
    }
    if let Some(k) = cfg.kafka.as_mut() {
        if !args.topic.is_empty() {
            k.topics = args.topic.clone();
        }
        if let Some(g) = &args.group {
            k.group = g.clone();
        }
    } else if !args.topic.is_empty() || args.group.is_some() {
        return Err("--topic and --group need --kafka BROKERS (or a [kafka] section in the config)".into());
    }
    if let Some(l) = args.api_listen {
        cfg.api.listen = Some(l);
    }
    if let Some(l) = args.metrics_listen {
        cfg.metrics.listen = Some(l);
    }
    cfg.validate().map_err(|e| e.to_string())?;
    let telemetry = Arc::new(Telemetry::new());
    // Every halt in force again, every delivery still owed queued, before anything is judged.
    let control = Control::open(&cfg, telemetry.clone()).map_err(|e| e.to_string())?;
    // A Kafka member reads every member's halts from the control topic before it serves a check.
    let _bus = match &cfg.kafka {
        Some(k) if !k.control_topic.is_empty() && cfg.api.listen.is_some() => {
            if k.create_topics {
                k.ensure_output_topics(k.setup_timeout()).map_err(|e| e.to_string())?;
            }
            let producer = k.producer().map_err(|e| format!("creating the producer: {e}"))?;
            let bus = kafka::ControlBus::start(k, Arc::new(producer), control.clone(), k.setup_timeout())
                .map_err(|e| e.to_string())?;
            Some(bus)
        }
        _ => None,
    };
    // The server runs beside the driver, on its own threads, for as long as the run.
    let server = match &cfg.api.listen {
        Some(listen) => {
            // api.listen is validated as an address; the tokens are settled before it is open.
            let addr = listen.parse().map_err(|_| format!("api.listen: {listen:?} is not an address"))?;
            let auth = server::api::Auth::resolve(&cfg.api, addr)?;
            let mut s = server::Server::bind(listen, 2).map_err(|e| e.to_string())?;
            let routes = server::api::routes(control.clone(), auth, &cfg.api, telemetry.clone());
            s.start(routes, telemetry.clone(), std::time::Duration::from_secs(10));
            tracing::info!(addr = %s.addr(), "control API, check and metrics on http://{}/", s.addr());
            Some(s)
        }
        None => None,
    };
    let _metrics = server::metrics_listener(&cfg, telemetry.clone()).map_err(|e| e.to_string())?;
    let summary = if cfg.kafka.is_some() {
        let idle_exit = args.idle_exit.as_deref().map(simulate::parse_duration_ms).transpose()?;
        let opts = kafka::KafkaRunOptions {
            idle_exit: idle_exit.map(|ms| std::time::Duration::from_millis(ms as u64)),
        };
        let stop = stop_on_signals()?;
        kafka::run_with(&cfg, &opts, &stop, telemetry, control).map_err(|e| e.to_string())?.0
    } else {
        file::run_with(&cfg, &RunOptions { progress: true }, telemetry, control).map_err(|e| e.to_string())?
    };
    if let Some(s) = server {
        s.shutdown();
    }
    print_summary(&summary, &cfg.archive.dir, args.json);
    Ok(ExitCode::SUCCESS)
}

/// The config file (or the defaults) with the overrides `run` and `serve` share: archive root, findings
/// output and Kafka brokers (which turn Kafka on).
fn load_with(
    config: Option<&Path>,
    archive: Option<PathBuf>,
    findings: Option<PathBuf>,
    kafka: Option<&str>,
) -> Result<VigilConfig, String> {
    let mut cfg = match config {
        Some(p) => VigilConfig::load(p).map_err(|e| e.to_string())?,
        None => VigilConfig::default(),
    };
    if let Some(d) = archive {
        cfg.archive.dir = d;
    }
    if let Some(f) = findings {
        cfg.output.findings = Some(f);
    }
    if let Some(brokers) = kafka {
        let k = cfg.kafka.get_or_insert_with(|| KafkaConfig::new(brokers, Vec::new()));
        k.brokers = brokers.to_owned();
    }
    Ok(cfg)
}

/// A run's summary: JSON on stdout for scripts, or text on stderr for a person.
/// Written, not printed: with stdout or stderr gone (a closed pipe) the run's work is done and
/// durable, and the exit code still says how it went; `println!` would panic.
fn print_summary(summary: &Summary, archive: &Path, json: bool) {
    use std::io::Write;
    let _ = if json {
        writeln!(std::io::stdout(), "{}", summary_json(summary, archive))
    } else {
        write!(std::io::stderr(), "{}", render_summary(summary, archive))
    };
}

/// A flag set by Ctrl-C or SIGTERM (a deploy, a scale-down): long-running commands then stop cleanly,
/// archiving and committing what they took before the process exits.
fn stop_on_signals() -> Result<std::sync::Arc<std::sync::atomic::AtomicBool>, String> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|e| format!("installing a signal handler: {e}"))?;
    }
    Ok(stop)
}

fn cmd_serve(args: ServeArgs) -> Result<ExitCode, String> {
    let mut cfg = load_with(args.config.as_deref(), args.archive, args.findings, args.kafka.as_deref())?;
    if let Some(l) = args.listen {
        cfg.http.listen = l;
    }
    match (cfg.kafka.as_mut(), args.topic) {
        (Some(k), Some(t)) => k.topics = vec![t],
        (None, Some(_)) => {
            return Err("--topic needs --kafka BROKERS (or a [kafka] section in the config)".into());
        }
        _ => {}
    }
    cfg.validate().map_err(|e| e.to_string())?;
    let stop = stop_on_signals()?;
    let mode = match &cfg.kafka {
        Some(k) => format!("producing to kafka topic {} at {}", k.topics[0], k.brokers),
        None => format!("archiving to {}", cfg.archive.dir.display()),
    };
    let summary = server::serve(&cfg, &stop, |addr| {
        tracing::info!(%addr, "serving POST http://{addr}/v1/events, {mode}; Ctrl-C stops");
    })
    .map_err(|e| e.to_string())?;
    print_summary(&summary, &cfg.archive.dir, args.json);
    Ok(ExitCode::SUCCESS)
}

/// The run summary as one JSON object (for scripts and tests).
pub fn summary_json(s: &Summary, archive: &Path) -> serde_json::Value {
    let findings: BTreeMap<String, u64> =
        s.findings.iter().map(|((k, sev), n)| (format!("{}/{}", k.as_str(), sev.as_str()), *n)).collect();
    serde_json::json!({
        "source": s.source,
        "lines": s.lines,
        "skipped": s.skipped,
        "recovered": s.recovered,
        "blank": s.blank,
        "valid": s.valid,
        "dead_lettered": s.dead_lettered(),
        "dead_letters": s.dead_letters,
        "balanced": s.balanced(),
        "findings": findings,
        "distinct_findings": s.distinct_findings,
        "agents_without_policy": s.agents_without_policy,
        "agents_with_findings": s.agents_with_findings,
        "transitions": s.moved.iter().map(|m| serde_json::json!({
            "breaker": m.key, "action": m.action, "mode": m.mode, "actor": m.actor,
        })).collect::<Vec<_>>(),
        "webhooks": { "delivered": s.delivered, "undelivered": s.undelivered, "owed": s.owed },
        "agents": s.agents,
        "late": s.late,
        "overflow": s.overflow,
        "forgotten": s.forgotten,
        "bytes": s.bytes,
        "files": s.files,
        "archive_bytes": s.archive_bytes,
        "elapsed_seconds": s.elapsed.as_secs_f64(),
        "lag": s.lag,
        "archive": archive,
    })
}

/// The run summary as text for a person.
pub fn render_summary(s: &Summary, archive: &Path) -> String {
    let mut o = String::new();
    let secs = s.elapsed.as_secs_f64().max(1e-9);
    let _ = writeln!(
        o,
        "read {} lines ({:.1} MB) in {:.2}s: {:.0} lines/s, {:.1} MB/s",
        s.lines,
        s.bytes as f64 / 1e6,
        secs,
        s.lines as f64 / secs,
        s.bytes as f64 / 1e6 / secs
    );
    let _ = writeln!(
        o,
        "  valid {} + dead-lettered {} + blank {} + already archived {} = {} lines{}",
        s.valid,
        s.dead_lettered(),
        s.blank,
        s.skipped,
        s.lines,
        if s.balanced() { "" } else { "  (MISMATCH: please report)" }
    );
    if s.recovered > 0 {
        let _ = writeln!(o, "  of which {} recovered from the journal of an interrupted run", s.recovered);
    }
    for (reason, n) in &s.dead_letters {
        let _ = writeln!(o, "  dead letters {reason}: {n}");
    }
    let total: u64 = s.findings.values().sum();
    let _ = writeln!(
        o,
        "findings: {} on {} of {} agents ({total} rows: a finding is archived again each time it grows)",
        s.distinct_findings, s.agents_with_findings, s.agents
    );
    for ((kind, sev), n) in &s.findings {
        let _ = writeln!(o, "  {:<22} {:<8} {n}", kind.as_str(), sev.as_str());
    }
    if s.overflow > 0 {
        let _ = writeln!(
            o,
            "  {} events of agents beyond detect.max_agents were archived but not judged (an agent_overflow finding says so)",
            s.overflow
        );
    }
    if s.forgotten > 0 {
        let _ = writeln!(o, "  {} agents idle past detect.forget_idle_hours were forgotten", s.forgotten);
    }
    if s.late > 0 {
        let _ = writeln!(o, "  {} events arrived too late for their rate window (archived, counted)", s.late);
    }
    if s.agents_without_policy > 0 {
        let _ = writeln!(
            o,
            "WARNING: {} agents are covered by no policy, so the allow-list checks are off for them (e.g. {}); \
             declare [[detect.policy]] or run `vigil policy suggest`",
            s.agents_without_policy,
            s.uncovered_sample.iter().map(|a| crate::policy::printable(a)).collect::<Vec<_>>().join(", ")
        );
    }
    if !s.moved.is_empty() {
        let mut by: BTreeMap<(&str, &str), usize> = BTreeMap::new();
        for m in &s.moved {
            *by.entry((m.action, m.mode)).or_default() += 1;
        }
        let list: Vec<String> = by.iter().map(|((a, m), n)| format!("{n} {a} ({m})")).collect();
        let _ = writeln!(o, "breakers: {}", list.join(", "));
        // The halts that were enforced, by name: what an operator needs to look at first.
        let halts: Vec<&Moved> =
            s.moved.iter().filter(|m| m.action.ends_with(".halt") && m.mode == "enforce").collect();
        for m in halts.iter().take(10) {
            let _ = writeln!(o, "  halted {} ({}, {})", m.key, m.actor, m.action);
        }
        if halts.len() > 10 {
            let _ = writeln!(o, "  … and {} more halts (--json lists every transition)", halts.len() - 10);
        }
    }
    if s.delivered + s.undelivered + s.owed > 0 {
        let _ = writeln!(
            o,
            "webhooks: {} delivered, {} not delivered (see control/), {} still owed{}",
            s.delivered,
            s.undelivered,
            s.owed,
            if s.owed > 0 { " (kept in the outbox; sent on the next start)" } else { "" }
        );
    }
    let _ = writeln!(
        o,
        "archive: {} new files, {:.1} MB under {}",
        s.files,
        s.archive_bytes as f64 / 1e6,
        archive.display()
    );
    o
}

/// `vigil validate`; `json` is the most bad lines a JSON report lists, text when `None`.
fn cmd_validate(
    input: &Path,
    max_event_bytes: usize,
    dedup_window: usize,
    max_future_seconds: u64,
    json: Option<usize>,
) -> Result<ExitCode, String> {
    let mut errors: Vec<serde_json::Value> = Vec::new();
    let mut report = |out: &mut dyn Write, line: u64, e: &vigil_schemas::Invalid| match json {
        Some(max) => {
            if errors.len() < max {
                errors.push(serde_json::json!({
                    "line": line, "code": e.code(), "field": e.field(), "error": e.to_string(),
                }));
            }
        }
        None => {
            let _ = writeln!(out, "line {line}: {}: {e}", e.code());
        }
    };
    let opened = open_input(input).map_err(|e| e.to_string())?;
    let mut reader = LineReader::new(opened.reader, max_event_bytes, 256);
    let mut chunk = Chunk::default();
    let (mut lines, mut valid, mut blank) = (0u64, 0u64, 0u64);
    let mut reasons: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut dedup = pipeline::DedupWindow::new(dedup_window);
    dedup.counting("line");
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    loop {
        let more = match reader.next_chunk(&mut chunk, 4 << 20) {
            Ok(more) => more,
            // A damaged input: report every line read before it, then the unreadable tail as one line.
            Err(e) => {
                let reason =
                    vigil_schemas::Invalid::Unreadable { offset: reader.bytes_read(), detail: e.to_string() };
                report(&mut out, lines + 1, &reason);
                *reasons.entry(reason.code()).or_default() += 1;
                false
            }
        };
        if !more {
            break;
        }
        for line in &chunk.lines {
            lines += 1;
            let Some(result) = pipeline::classify(
                chunk.bytes(line),
                line,
                max_event_bytes,
                pipeline::Horizon::now(max_future_seconds),
                &mut dedup,
            ) else {
                blank += 1;
                continue;
            };
            match result {
                Ok(_) => valid += 1,
                Err(e) => {
                    *reasons.entry(e.code()).or_default() += 1;
                    report(&mut out, line.position, &e);
                }
            }
        }
    }
    let bad: u64 = reasons.values().sum();
    if json.is_some() {
        let doc = serde_json::json!({
            "input": input, "lines": lines, "valid": valid, "invalid": bad, "blank": blank,
            "reasons": reasons, "errors_listed": errors.len(), "errors": errors,
        });
        let _ = writeln!(out, "{doc}");
    } else {
        let _ = writeln!(out, "{lines} lines: {valid} valid, {bad} invalid, {blank} blank");
        for (r, n) in &reasons {
            let _ = writeln!(out, "  {r}: {n}");
        }
    }
    let _ = out.flush();
    Ok(if bad > 0 { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn sim_config(args: &SimArgs) -> Result<SimConfig, String> {
    if args.agents == 0 {
        return Err("--agents must be at least 1".into());
    }
    if !(args.rate.is_finite() && args.rate > 0.0) {
        return Err(format!("--rate must be a positive number of events per second, got {}", args.rate));
    }
    Ok(SimConfig {
        agents: args.agents,
        duration_ms: simulate::parse_duration_ms(&args.duration)?,
        start_ms: parse_rfc3339_ms(&args.start).map_err(|e| format!("--start {:?}: {e}", args.start))?,
        seed: args.seed,
        rate: args.rate,
        incidents: args.incidents,
        bad_model: args.bad_model,
    })
}

fn create(path: &Path) -> Result<BufWriter<Box<dyn Write>>, String> {
    let w: Box<dyn Write> = if path == Path::new("-") {
        Box::new(std::io::stdout())
    } else {
        Box::new(File::create(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?)
    };
    Ok(BufWriter::with_capacity(1 << 20, w))
}

/// Simulates to `out` and writes labels; returns the number of events.
fn simulate_to(cfg: &SimConfig, out: &Path, labels: Option<&Path>) -> Result<u64, String> {
    let mut w = create(out)?;
    let n = std::cell::Cell::new(0u64);
    let mut progress = Progress::new(out != Path::new("-"), "simulate", Some(cfg.duration_ms as u64));
    let started = Instant::now();
    let found = simulate::simulate(
        cfg,
        |line| {
            n.set(n.get() + 1);
            w.write_all(line.as_bytes())?;
            w.write_all(b"\n")
        },
        |t| progress.update((t - cfg.start_ms) as u64, n.get(), started.elapsed()),
    )
    .map_err(|e| format!("writing {}: {e}", out.display()))?;
    w.flush().map_err(|e| format!("writing {}: {e}", out.display()))?;
    progress.finish();
    if let Some(path) = labels {
        let mut lw = create(path)?;
        simulate::write_labels(&found, &mut lw)
            .and_then(|_| lw.flush())
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(n.get())
}

fn cmd_simulate(args: SimArgs) -> Result<ExitCode, String> {
    let cfg = sim_config(&args)?;
    if let Some(brokers) = &args.kafka {
        let n = kafka::produce_simulated(
            &cfg,
            brokers,
            &args.topic,
            args.partitions,
            args.produce_rate,
            args.labels.as_deref(),
        )
        .map_err(|e| e.to_string())?;
        eprintln!("produced {n} events to {} at {brokers}", args.topic);
        return Ok(ExitCode::SUCCESS);
    }
    let n = simulate_to(&cfg, &args.out, args.labels.as_deref())?;
    if args.out != Path::new("-") {
        eprintln!("wrote {n} events to {}", args.out.display());
    }
    Ok(ExitCode::SUCCESS)
}

/// The config a least-privilege command reads: `--config`, else a `vigil.toml` beside the archive (where
/// `vigil demo` writes the one it judged with, said on stderr), else the defaults.
fn config_for_archive(cmd: &str, config: Option<&Path>, archive: &Path) -> Result<VigilConfig, String> {
    let beside = archive.parent().map(|p| p.join("vigil.toml")).filter(|p| p.is_file());
    match (config, beside) {
        (Some(p), _) => VigilConfig::load(p).map_err(|e| e.to_string()),
        (None, Some(p)) => {
            eprintln!("vigil {cmd}: config from {} (beside the archive; --config to choose)", p.display());
            VigilConfig::load(&p).map_err(|e| e.to_string())
        }
        (None, None) => Ok(VigilConfig::default()),
    }
}

/// A least-privilege command's archive and period: the archive must have `events/`; `--since` and
/// `--until` are RFC 3339 (UTC ms back).
fn archive_period(
    archive: &Path,
    since: Option<&str>,
    until: Option<&str>,
) -> Result<(Option<i64>, Option<i64>), String> {
    if !archive.join("events").is_dir() {
        return Err(format!("{} has no events/ table: is it a vigil archive?", archive.display()));
    }
    let time = |flag: &str, v: Option<&str>| -> Result<Option<i64>, String> {
        v.map(|t| parse_rfc3339_ms(t).map_err(|e| format!("{flag} {t:?}: {e}"))).transpose()
    };
    Ok((time("--since", since)?, time("--until", until)?))
}

fn cmd_audit(args: AuditArgs) -> Result<ExitCode, String> {
    let cfg = config_for_archive("audit", args.config.as_deref(), &args.archive)?;
    let (since, until) = archive_period(&args.archive, args.since.as_deref(), args.until.as_deref())?;
    let (usage, scanned) = audit::collect(&args.archive, since, until, args.max_values.max(1))?;
    let review = audit::review(&usage, scanned, &cfg.detect);
    let text = match args.format {
        AuditFormat::Table => audit::render(&review, &args.archive),
        AuditFormat::Json => serde_json::to_string_pretty(&review).unwrap_or_default() + "\n",
        AuditFormat::Csv => audit::to_csv(&review),
    };
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        // A reader that stopped early (`| head`) is not an error.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(format!("writing the review: {e}")),
        _ => Ok(ExitCode::SUCCESS),
    }
}

fn cmd_check_config(file: &Path) -> ExitCode {
    let cfg = match VigilConfig::load(file)
        .map_err(|e| e.to_string())
        .and_then(|c| c.validate().map(|()| c).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            let path = file.display().to_string();
            println!("{}", if e.starts_with(&path) { e } else { format!("{path}: {e}") });
            return ExitCode::from(1);
        }
    };
    let d = &cfg.detect;
    println!("{}: ok", file.display());
    let input = match (&cfg.kafka, &cfg.input.path) {
        (Some(k), _) => format!("kafka {} at {}", k.topics.join(", "), k.brokers),
        (None, Some(p)) => p.display().to_string(),
        (None, None) => "none (give --input, or serve over HTTP)".into(),
    };
    println!("  input: {input}");
    println!(
        "  archive: {} (flush every {} rows or {} s)",
        cfg.archive.dir.display(),
        cfg.archive.flush_rows,
        cfg.archive.flush_seconds
    );
    println!(
        "  policies: {}, budgets: {}, sensitive resources: {}",
        d.policies.len(),
        d.budgets.len(),
        d.sensitive_resources.len()
    );
    println!("  webhooks: {}", cfg.webhook.len());
    let listen = |what: &str, l: &Option<String>| {
        l.as_deref().map_or(format!("{what} off"), |l| format!("{what} on {l}"))
    };
    println!(
        "  {}; {}; serve on {}",
        listen("api", &cfg.api.listen),
        listen("metrics", &cfg.metrics.listen),
        cfg.http.listen
    );
    if d.policies.is_empty() {
        println!(
            "  warning: no [[detect.policy]]: the allow-list checks are off (vigil policy suggest writes them from an archive)"
        );
    }
    let token = [&cfg.api.token_env, &cfg.api.read_token_env].iter().any(|t| t.is_some())
        || cfg.api.token_file.is_some()
        || cfg.api.read_token_file.is_some();
    let beyond = cfg
        .api
        .listen
        .as_deref()
        .and_then(|l| l.parse::<std::net::SocketAddr>().ok())
        .is_some_and(|a| !a.ip().is_loopback());
    if beyond && !token {
        println!(
            "  error: api.listen is beyond loopback and no token is configured: vigil would refuse to start"
        );
        return ExitCode::from(1);
    }
    println!(
        "  event senders: {}",
        if cfg.http.senders.is_empty() {
            "none declared (anyone reaching http.listen may post, so vigil serve takes events on loopback only)"
                .to_owned()
        } else {
            cfg.http.senders.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ")
        }
    );
    let http_beyond = cfg.http.listen.parse::<std::net::SocketAddr>().is_ok_and(|a| !a.ip().is_loopback());
    if http_beyond && cfg.http.senders.is_empty() {
        println!(
            "  error: http.listen is beyond loopback and no [[http.sender]] is declared: vigil serve would refuse to start"
        );
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

fn cmd_suggest(args: SuggestArgs) -> Result<ExitCode, String> {
    let (since, until) = archive_period(&args.archive, args.since.as_deref(), args.until.as_deref())?;
    let max_values = args.max_values.max(1);
    let text = match &args.against {
        Some(path) => {
            let cfg = VigilConfig::load(path).map_err(|e| e.to_string())?;
            crate::policy::against(&args.archive, since, until, max_values, &cfg.detect)?
        }
        None => {
            let cfg = config_for_archive("policy suggest", args.config.as_deref(), &args.archive)?;
            let depth = args.depth.unwrap_or(cfg.detect.scope.resource_depth);
            let seen = crate::policy::collect(&args.archive, since, until, args.by, depth, max_values)?;
            if seen.scanned.events == 0 {
                return Err(format!(
                    "no successful events in {} for that period: nothing to suggest",
                    args.archive.display()
                ));
            }
            let sensitive = vigil_detect::GlobSet::new(&cfg.detect.sensitive_resources);
            crate::policy::render(&seen, &args.archive, depth, &sensitive)
        }
    };
    match &args.out {
        Some(path) => {
            fs::write(path, &text).map_err(|e| format!("writing {}: {e}", path.display()))?;
            eprintln!("wrote {} (review it, then add it to your config)", path.display());
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let mut out = std::io::stdout().lock();
            match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(format!("writing: {e}")),
                _ => Ok(ExitCode::SUCCESS),
            }
        }
    }
}

fn cmd_eval(args: EvalArgs) -> Result<ExitCode, String> {
    let cfg = match &args.config {
        Some(p) => VigilConfig::load(p).map_err(|e| e.to_string())?,
        None => demo_config(Path::new(".")),
    };
    let grace_ms = simulate::parse_duration_ms(&args.grace)?;
    let labels = eval::read_labels(&args.labels)?;
    let size = fs::metadata(&args.events).map(|m| m.len()).ok();
    let mut progress = Progress::new(true, "eval", size);
    let started = Instant::now();
    let detected =
        eval::detect_file(&cfg, &args.events, |bytes, n| progress.update(bytes, n, started.elapsed()))?;
    progress.finish();
    if let Some(path) = &args.findings {
        let mut w = create(path)?;
        for f in &detected.findings {
            serde_json::to_writer(&mut w, f)
                .map_err(std::io::Error::from)
                .and_then(|_| w.write_all(b"\n"))
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
        w.flush().map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    let agent_days = detected.agents as f64 * detected.span_ms as f64 / 86_400_000.0;
    let report = eval::score(&detected.findings, &labels, agent_days, grace_ms)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        println!(
            "{} events from {} agents over {:.1} days ({} invalid lines), judged in {:.1}s\n",
            detected.events,
            detected.agents,
            detected.span_ms as f64 / 86_400_000.0,
            detected.invalid,
            started.elapsed().as_secs_f64()
        );
        print!("{}", eval::render(&report));
    }
    Ok(ExitCode::SUCCESS)
}

/// The config the demo runs: the simulator's role policies and sensitive resources.
pub fn demo_config(dir: &Path) -> VigilConfig {
    let mut cfg = VigilConfig::default();
    cfg.input.path = Some(dir.join("fleet.ndjson"));
    cfg.archive.dir = dir.join("archive");
    cfg.output.findings = Some(dir.join("findings.ndjson"));
    cfg.detect.policies = simulate::policies();
    cfg.detect.sensitive_resources = simulate::SENSITIVE.iter().map(|s| s.to_string()).collect();
    cfg
}

fn cmd_demo(dir: &Path, agents: usize, duration: &str, rate: f64, seed: u64) -> Result<ExitCode, String> {
    if dir.exists() {
        let ours = dir.join("archive").join("_vigil").exists() || dir.join("fleet.ndjson").exists();
        let empty = fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(false);
        if !ours && !empty {
            return Err(format!("{} exists and is not a vigil demo folder; pass --dir", dir.display()));
        }
        fs::remove_dir_all(dir).map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
    }
    fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let sim = SimConfig {
        agents,
        duration_ms: simulate::parse_duration_ms(duration)?,
        start_ms: parse_rfc3339_ms("2026-01-05T07:00:00Z").unwrap_or_default(),
        seed,
        rate,
        incidents: simulate::IncidentKind::ALL.len(),
        bad_model: true,
    };
    let started = Instant::now();
    println!("vigil demo: simulating {agents} agents for {duration} with {} incidents...", sim.incidents);
    let n = simulate_to(&sim, &dir.join("fleet.ndjson"), Some(&dir.join("labels.ndjson")))?;
    // A few broken lines, as real feeds have, so the dead letters show too.
    let bad = [
        "this line is not JSON",
        r#"{"event_id":"demo-bad-1","ts":"yesterday","agent_id":"coding-agent-0000","action":"file.read","resource":"file:///repo/x"}"#,
        r#"{"event_id":"demo-bad-2","ts":"2026-01-05T12:00:00Z","action":"file.read","resource":"file:///repo/x"}"#,
        r#"["an", "array", "is", "not", "an", "event"]"#,
    ];
    fs::OpenOptions::new()
        .append(true)
        .open(dir.join("fleet.ndjson"))
        .and_then(|mut f| f.write_all((bad.join("\n") + "\n").as_bytes()))
        .map_err(|e| format!("writing the demo's input: {e}"))?;
    println!(
        "  {n} events and {} broken lines in {:.1}s -> {}",
        bad.len(),
        started.elapsed().as_secs_f64(),
        dir.join("fleet.ndjson").display()
    );
    let mut cfg = demo_config(dir);
    // The supply-chain kill switch enforces in the demo, so its cohort halt reaches the gateway.
    cfg.respond.cohort.mode = Some(vigil_schemas::rows::Mode::Enforce);
    // The config it judges with, policies included, beside its archive: `vigil audit` finds it there.
    let written = toml::to_string(&cfg).map_err(|e| format!("writing the demo's config: {e}"))?;
    let config_path = dir.join("vigil.toml");
    fs::write(&config_path, format!("# The config `vigil demo` judged {} with.\n{written}", dir.display()))
        .map_err(|e| format!("writing {}: {e}", config_path.display()))?;
    let receiver = crate::demo::Receiver::start().map_err(|e| format!("the demo's webhook receiver: {e}"))?;
    cfg.webhook.push(receiver.endpoint());
    println!("a local gateway receives signed webhooks on {}", receiver.url());
    println!("running the pipeline (decode, validate, detect, respond, archive)...");
    let s = file::run(&cfg, &RunOptions { progress: true }).map_err(|e| e.to_string())?;
    print!("{}", render_summary(&s, &cfg.archive.dir));
    println!("\ninjected incidents (from {}):", dir.join("labels.ndjson").display());
    let labels = fs::read_to_string(dir.join("labels.ndjson")).unwrap_or_default();
    for l in labels.lines() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap_or_default();
        println!(
            "  {:<18} {:<22} {}",
            v["kind"].as_str().unwrap_or("?"),
            v["agent_id"].as_str().unwrap_or("?"),
            v["start"].as_str().unwrap_or("?")
        );
    }
    println!("\nbreakers (every transition archived in {}/control/):", cfg.archive.dir.display());
    let mut by: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for m in &s.moved {
        *by.entry((m.mode, m.action)).or_default() += 1;
    }
    for ((mode, action), n) in &by {
        let first = s.moved.iter().find(|m| m.mode == *mode && m.action == *action);
        let e = first.map(|m| format!("{} ({})", m.key, m.actor)).unwrap_or_default();
        println!("  {mode:<8} {action:<16} {n:>4}   e.g. {e}");
    }
    if s.moved.is_empty() {
        println!("  none");
    }
    let got = receiver.received();
    println!(
        "\nthe local gateway received {} signed webhooks (every signature verified: {}); {} still owed",
        got.values().sum::<usize>(),
        receiver.all_verified(),
        s.owed
    );
    for (kind, n) in &got {
        println!("  {kind:<16} {n}");
    }
    println!("  shadow decisions are recorded, never sent; warn sends agent.warn and the agent keeps acting");
    let archive = cfg.archive.dir.display();
    println!(
        "\nParquet archive: {archive}/{{events,findings,control,dead-letters}}/dt=YYYY-MM-DD/hour=HH/*.parquet"
    );
    println!("findings as NDJSON: {}", dir.join("findings.ndjson").display());
    println!("the config and policies it judged with: {}", config_path.display());
    println!("\nleast privilege: vigil audit --archive {archive}");
    println!("  and vigil policy suggest --archive {archive} --against {}", config_path.display());
    println!("\ntry it with DuckDB (pip install duckdb, or the duckdb CLI):");
    println!("  SELECT kind, severity, agent_id, summary");
    println!("  FROM read_parquet('{archive}/findings/**/*.parquet', hive_partitioning = true)");
    println!("  ORDER BY ts;");
    println!("\ndone in {:.1}s", started.elapsed().as_secs_f64());
    Ok(ExitCode::SUCCESS)
}

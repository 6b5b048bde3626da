//! The pipeline core: one [`Lane`] per source partition takes batches of items, classifies, judges,
//! archives and fans out, and flushes on one rule by one path. Drivers (`crate::run`) feed lanes; nothing
//! here knows where the bytes came from.
//!
//! Batch at a time: items borrow from the driver's buffer, are decoded into events that borrow from it,
//! judged, copied once into Arrow builders, and the buffer is reused. Parquet encoding and the commit run
//! on the lane's writer thread, one flush job in flight, in order.

mod classify;
mod lane;

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vigil_detect::{Engine, FindingKind, Severity, Snapshot};
use vigil_ingest::archive::ArchiveError;
use vigil_ingest::source::InputError;
use vigil_schemas::rows::{Finding, Transition};

pub(crate) use classify::within_cap;
pub use classify::{Claim, DedupWindow, Horizon, Sender, classify};
pub use lane::{Decoded, Decoder, Durable, Fanout, Flushing, Item, Lane, Origin, Spare, Taken};

use crate::telemetry::Telemetry;

/// What stopped a run. Bad input never does: it is dead-lettered.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The control plane (breakers, control log, webhooks).
    #[error(transparent)]
    Control(#[from] crate::control::ControlError),
    /// An input named like vigil's own control records.
    #[error(
        "the source name {} is reserved for vigil's own control records: set [input] source_name",
        vigil_ingest::source::RESERVED_SOURCE
    )]
    Reserved,
    /// No input was configured.
    #[error("no input: give --input PATH (or - for stdin), or [input] path in the config")]
    NoInput,
    /// The input could not be opened.
    #[error(transparent)]
    Input(#[from] InputError),
    /// Reading the input failed midway.
    #[error("reading {path}: {source}")]
    Read {
        /// The input.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The archive could not be written.
    #[error(transparent)]
    Archive(#[from] ArchiveError),
    /// The detection config is invalid.
    #[error("detect config: {0}")]
    Detect(#[from] vigil_detect::ConfigError),
    /// The checkpoint's detector state does not fit this version.
    #[error(
        "the detector state in {from} is unreadable ({source}). The archive and its position are intact: \
         to restart the detector with empty baselines from there, set \"state\" to null in that checkpoint \
         (under Kafka, also delete the partition's key on the state topic). Do not move _vigil/ aside: \
         vigil then refuses to open the archive rather than lose track of what it holds"
    )]
    State {
        /// Where the state came from.
        from: String,
        /// Why.
        source: serde_json::Error,
    },
    /// The input is not the one this source name archived before.
    #[error(
        "source {source_name} in this archive was another input (its first line differs), archived up to line \
         {committed}; give this one its own --source-name (or [input] source_name)"
    )]
    OtherInput {
        /// The source name.
        source_name: String,
        /// How far the other input was archived.
        committed: u64,
    },
    /// The archive writer thread ended without saying why (it panicked).
    #[error("the archive writer thread stopped unexpectedly")]
    WriterStopped,
    /// Kafka refused something the pipeline cannot do without (offsets stay where they were).
    #[error("kafka: {0}")]
    Kafka(String),
    /// The Kafka side could not be set up (topics, the state topic, clients).
    #[error("kafka: {0}")]
    KafkaSetup(#[from] vigil_ingest::source::kafka::KafkaSetupError),
    /// Writing findings output failed.
    #[error("writing findings to {path}: {source}")]
    Findings {
        /// Where.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The intake journal could not be read or written.
    #[error("intake journal {path}: {source}")]
    Journal {
        /// Its directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Counts of one run, for the summary line and the tests that hold the pipeline to "nothing lost".
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    /// Source name used in the archive.
    pub source: String,
    /// Lines read in this run (skipped ones included).
    pub lines: u64,
    /// Lines already archived by an earlier run, skipped.
    pub skipped: u64,
    /// Of `lines`: items an earlier run took into its journal but had not archived, judged again here.
    pub recovered: u64,
    /// Blank lines (whitespace only): nothing to keep.
    pub blank: u64,
    /// Valid events archived and judged.
    pub valid: u64,
    /// Lines dead-lettered, by reason code.
    pub dead_letters: BTreeMap<&'static str, u64>,
    /// Findings by kind and severity.
    pub findings: BTreeMap<(FindingKind, Severity), u64>,
    /// Breaker transitions of this run (bounded; the archive's `control/` has them all).
    pub moved: Vec<Moved>,
    /// Distinct findings (an incident archived once per update counts once).
    pub distinct_findings: u64,
    /// Agents with at least one finding.
    pub agents_with_findings: u64,
    /// Agents no policy covers (the allow-list checks are off for them).
    pub agents_without_policy: u64,
    /// The first few of them.
    pub uncovered_sample: Vec<String>,
    /// Webhook deliveries that ended 2xx.
    pub delivered: u64,
    /// Webhook deliveries that ended otherwise (given up, endpoint disabled, refused).
    pub undelivered: u64,
    /// Webhook deliveries still owed at the end: they stay in the outbox for the next start.
    pub owed: u64,
    /// Distinct agents seen (all runs on this checkpoint).
    pub agents: usize,
    /// Events judged too late for their window.
    pub late: u64,
    /// Events of agents beyond `detect.max_agents`: archived, not judged.
    pub overflow: u64,
    /// Agents forgotten after `detect.forget_idle_hours` without an event.
    pub forgotten: u64,
    /// Decompressed input bytes read.
    pub bytes: u64,
    /// Parquet files written in this run.
    pub files: u64,
    /// Parquet bytes written in this run.
    pub archive_bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
    /// Kafka only: the last consumer lag librdkafka reported per `topic/partition`.
    pub lag: BTreeMap<String, i64>,
}

impl Summary {
    /// Dead letters, all reasons.
    pub fn dead_lettered(&self) -> u64 {
        self.dead_letters.values().sum()
    }

    /// The accounting identity every run must satisfy.
    pub fn balanced(&self) -> bool {
        self.lines == self.skipped + self.blank + self.valid + self.dead_lettered()
    }
}

/// A status line every so often on stderr, for commands that run until stopped (`vigil run --kafka`,
/// `vigil serve`): what came in since the last line, and the totals. Unlike the progress display it is
/// written to logs too, at a low rate (`output.status_seconds`).
#[derive(Debug)]
pub(crate) struct StatusLine {
    label: &'static str,
    every: Option<Duration>,
    last: Instant,
    lines_then: u64,
}

impl StatusLine {
    pub(crate) fn new(label: &'static str, seconds: f64) -> StatusLine {
        let every = (seconds > 0.0).then(|| Duration::from_secs_f64(seconds));
        StatusLine { label, every, last: Instant::now(), lines_then: 0 }
    }

    /// Writes the line if one is due, from the run's counters; `extra` (say, consumer lag) is only
    /// built then.
    pub(crate) fn tick(&mut self, telemetry: &Telemetry, extra: impl FnOnce() -> String) {
        if self.every.is_none_or(|d| self.last.elapsed() < d) {
            return;
        }
        let s = &telemetry.summary("");
        let secs = self.last.elapsed().as_secs_f64();
        let new = s.lines.saturating_sub(self.lines_then);
        self.last = Instant::now();
        self.lines_then = s.lines;
        let rate = new as f64 / secs.max(1e-9);
        let findings = s.findings.values().sum::<u64>();
        let extra = extra();
        tracing::info!(
            what = self.label,
            lines = s.lines,
            valid = s.valid,
            dead_lettered = s.dead_lettered(),
            findings,
            late = s.late,
            lines_per_second = rate.round() as u64,
            "{}: {new} lines in the last {secs:.0}s ({rate:.0}/s); total {} lines: {} valid, {} dead-lettered, \
             {findings} findings, {} late{extra}",
            self.label,
            s.lines,
            s.valid,
            s.dead_lettered(),
            s.late,
        );
    }
}

/// Wall time, UTC ms.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// One breaker transition, as the run summary lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// `agent:ID`, `cohort:FACTOR=VALUE` or `fleet`.
    pub key: String,
    /// `agent.halt`, …
    pub action: &'static str,
    /// `shadow`, `warn` or `enforce`.
    pub mode: &'static str,
    /// `rule:NAME` or `operator:NAME`.
    pub actor: String,
}

/// Options of one run beyond the config file.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Show a progress line on stderr (only drawn when stderr is a terminal).
    pub progress: bool,
}

/// An engine for `detect`, restored from a saved state when there is one (a checkpoint's, or the Kafka
/// state topic's). Every pipeline (file, Kafka partition, HTTP) starts this way; `from` names where the
/// state came from in the error.
pub(crate) fn restored_engine(
    detect: &vigil_detect::DetectConfig,
    state: Option<vigil_ingest::archive::State>,
    from: &str,
) -> Result<Engine, PipelineError> {
    let mut engine = Engine::new(detect)?;
    // A checkpoint written before anything was judged (or reset by an operator) holds no state.
    if let Some(state) = state.filter(|s| !vigil_ingest::archive::is_no_state(s)) {
        let snap: Snapshot = serde_json::from_str(state.get())
            .map_err(|source| PipelineError::State { from: from.to_owned(), source })?;
        engine.restore(snap);
    }
    Ok(engine)
}

/// Names an archive's checkpoints in messages.
pub(crate) fn checkpoint_of(archive: &Path) -> String {
    format!("the checkpoint under {}", archive.display())
}

/// `[output] findings`: every finding also written as one NDJSON line, to a file or stdout.
pub struct FindingsFile {
    w: Box<dyn Write + Send>,
    path: PathBuf,
    line: String,
}

impl std::fmt::Debug for FindingsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FindingsFile").field("path", &self.path).finish_non_exhaustive()
    }
}

impl FindingsFile {
    /// The output for `path` (`-` is stdout), as a lane's fan-out arm; none when no path is set.
    pub fn open(path: Option<&Path>) -> Result<Vec<Box<dyn Fanout>>, PipelineError> {
        let Some(path) = path else { return Ok(Vec::new()) };
        let w: Box<dyn Write + Send> = if path == Path::new("-") {
            Box::new(std::io::BufWriter::new(std::io::stdout()))
        } else {
            let f = std::fs::File::create(path)
                .map_err(|source| PipelineError::Findings { path: path.to_owned(), source })?;
            Box::new(std::io::BufWriter::new(f))
        };
        Ok(vec![Box::new(FindingsFile { w, path: path.to_owned(), line: String::new() })])
    }

    fn io(&self, source: std::io::Error) -> PipelineError {
        PipelineError::Findings { path: self.path.clone(), source }
    }
}

impl Fanout for FindingsFile {
    fn emit(&mut self, findings: &[Finding], _: &[Transition]) -> Result<(), PipelineError> {
        for f in findings {
            self.line.clear();
            self.line.push_str(&serde_json::to_string(f).unwrap_or_default());
            self.line.push('\n');
            if let Err(e) = self.w.write_all(self.line.as_bytes()) {
                return Err(self.io(e));
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), PipelineError> {
        self.w.flush().map_err(|e| self.io(e))
    }
}

/// Lowers the calling thread's scheduling priority by `nice` steps (Linux keeps a nice value per
/// thread), so the threads that answer requests run first when the cores are contended.
pub(crate) fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getpriority_process, setpriority_process};
        let tid = rustix::thread::gettid();
        // A failure (a sandbox refusing it) leaves the priority as it was: a preference, not a need.
        if let Ok(now) = getpriority_process(Some(tid)) {
            let _ = setpriority_process(Some(tid), (now + nice).min(19));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

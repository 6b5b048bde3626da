//! The embedded pipeline: lines from a source → decode and validate → detect → archive, committing the
//! archive's checkpoint (with the detector state) only after its files are durable.
//!
//! Batch at a time: a chunk of lines is read into one buffer, decoded into events that borrow from it,
//! judged, copied once into Arrow builders, and the buffer is reused. Parquet encoding and the commit run
//! on one writer thread, one flush job in flight, in order.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vigil_detect::{Engine, FindingKind, Output, Severity, Snapshot};
use vigil_ingest::archive::{Archive, ArchiveError, DeadLetter, FlushJob, FlushReport};
use vigil_ingest::source::{Chunk, InputError, Line, LineReader, open_input};
use vigil_schemas::{Event, Invalid};

use crate::config::VigilConfig;
use crate::progress::Progress;

/// What stopped a run. Bad input never does: it is dead-lettered.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
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
        "the detector state in {from} is unreadable ({source}); move it aside (the archive's _vigil/, or \
         the partition's key on the state topic) to start fresh"
    )]
    State {
        /// Where the state came from.
        from: String,
        /// Why.
        source: serde_json::Error,
    },
    /// The archive writer thread ended without saying why (it panicked).
    #[error("the archive writer thread stopped unexpectedly")]
    WriterStopped,
    /// Kafka refused something the pipeline cannot do without (offsets stay where they were).
    #[error("kafka: {0}")]
    Kafka(String),
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
    /// Agents a halt decision was recorded for (shadow mode), with the rule that decided.
    pub halted: Vec<(String, String)>,
    /// Distinct agents seen (all runs on this checkpoint).
    pub agents: usize,
    /// Events judged too late for their window.
    pub late: u64,
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

    /// Writes the line if one is due; `extra` (say, consumer lag) is only built then.
    pub(crate) fn tick(&mut self, s: &Summary, extra: impl FnOnce() -> String) {
        if self.every.is_none_or(|d| self.last.elapsed() < d) {
            return;
        }
        let secs = self.last.elapsed().as_secs_f64();
        let new = s.lines.saturating_sub(self.lines_then);
        self.last = Instant::now();
        self.lines_then = s.lines;
        eprintln!(
            "vigil {}: {new} lines in the last {secs:.0}s ({:.0}/s); total {} lines: {} valid, {} dead-lettered, \
             {} findings, {} late{}",
            self.label,
            new as f64 / secs.max(1e-9),
            s.lines,
            s.valid,
            s.dead_lettered(),
            s.findings.values().sum::<u64>(),
            s.late,
            extra()
        );
    }
}

/// Wall time, UTC ms.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Recent event ids, to refuse duplicates: a bounded set of 64-bit hashes, oldest forgotten first.
#[derive(Debug)]
pub struct DedupWindow {
    cap: usize,
    seen: HashMap<u64, u64, BuildHasherDefault<IdentityHasher>>,
    order: VecDeque<u64>,
    hasher: BuildHasherDefault<DefaultHasher>,
}

/// The keys are already hashes; hashing them again would waste the time the window exists to save.
#[derive(Debug, Default)]
struct IdentityHasher(u64);

impl std::hash::Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

impl DedupWindow {
    /// A window remembering the last `cap` ids (0: remembers none, refuses no duplicate).
    pub fn new(cap: usize) -> Self {
        DedupWindow {
            cap,
            seen: HashMap::with_capacity_and_hasher(cap.min(1 << 20), BuildHasherDefault::default()),
            order: VecDeque::with_capacity(cap.min(1 << 20)),
            hasher: BuildHasherDefault::default(),
        }
    }

    /// Remembers what `archive` already holds (its newest `cap` events), so that after a restart a resend
    /// of one of them is refused as it would be in one uninterrupted run. Returns the ids remembered.
    pub fn seed_from(&mut self, archive: &Archive) -> Result<usize, ArchiveError> {
        archive.recent_event_ids(self.cap, |id, position| {
            self.check(id, position);
        })
    }

    /// Records `id` at `position`; returns the first position if it was seen already.
    fn check(&mut self, id: &str, position: u64) -> Option<u64> {
        if self.cap == 0 {
            return None;
        }
        let h = self.hasher.hash_one(id);
        if let Some(&first) = self.seen.get(&h) {
            return Some(first);
        }
        if self.order.len() == self.cap
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        self.seen.insert(h, position);
        self.order.push_back(h);
        None
    }
}

/// The latest event time a pipeline accepts: its clock plus the skew allowed (`input.max_future_seconds`).
/// One event stamped far ahead would otherwise move event time, and so the lateness cut-off, forward for
/// every agent judged with it, and their real events would count as late: a way to blind the detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Horizon {
    /// The receiving clock, UTC ms.
    pub now_ms: i64,
    /// Seconds an event may be ahead of it.
    pub skew_s: u64,
}

impl Horizon {
    /// The horizon now for a skew of `skew_s` seconds; `None` when the check is off (0).
    pub fn now(skew_s: u64) -> Option<Horizon> {
        (skew_s > 0).then(|| Horizon { now_ms: now_ms(), skew_s })
    }
}

/// A line's bytes in `buf` as the contract check sees them: an oversize line only by its prefix.
pub(crate) fn kept<'a>(buf: &'a [u8], line: &Line, max: usize) -> &'a [u8] {
    let bytes = &buf[line.start..line.end];
    &bytes[..bytes.len().min(max)]
}

/// Judges one line against the contract: `None` for a blank line, else the event or why it is refused.
/// Every path in (`run`, `validate`, Kafka, HTTP) shares it, so they cannot disagree about a line.
/// `horizon` bounds `ts` from above (the receiving clock plus the allowed skew); `None` checks no bound
/// (offline scoring of simulated fleets). A refused line does not enter the dedup window, so its
/// corrected resend is taken.
pub fn classify<'a>(
    bytes: &'a [u8],
    line: &Line,
    max_event_bytes: usize,
    horizon: Option<Horizon>,
    dedup: &mut DedupWindow,
) -> Option<Result<Event<'a>, Invalid>> {
    let decoded = match line.oversize {
        Some(size) => Err(Invalid::TooLarge { size: size as usize, limit: max_event_bytes }),
        None if bytes.iter().all(u8::is_ascii_whitespace) => return None,
        None => vigil_schemas::decode(bytes, max_event_bytes),
    };
    Some(decoded.and_then(|ev| {
        if let Some(h) = horizon
            && ev.ts_ms > h.now_ms.saturating_add(h.skew_s as i64 * 1000)
        {
            return Err(Invalid::FutureTimestamp {
                ahead_s: (ev.ts_ms - h.now_ms) / 1000,
                limit_s: h.skew_s,
            });
        }
        match dedup.check(&ev.event_id, line.position) {
            Some(first_position) => {
                Err(Invalid::DuplicateEventId { event_id: ev.event_id.to_string(), first_position })
            }
            None => Ok(ev),
        }
    }))
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
    state: Option<serde_json::Value>,
    from: &str,
) -> Result<Engine, PipelineError> {
    let mut engine = Engine::new(detect)?;
    if let Some(state) = state {
        let snap: Snapshot = serde_json::from_value(state)
            .map_err(|source| PipelineError::State { from: from.to_owned(), source })?;
        engine.restore(snap);
    }
    Ok(engine)
}

/// Names an archive's checkpoints in messages.
pub(crate) fn checkpoint_of(archive: &Path) -> String {
    format!("the checkpoint under {}", archive.display())
}

/// The engine's state as a checkpoint stores it. Serialising the snapshot of a well-formed engine cannot
/// fail: every key is a string.
pub(crate) fn engine_state(engine: &Engine) -> serde_json::Value {
    serde_json::to_value(engine.snapshot()).unwrap_or_default()
}

/// Counts, archives and writes out one batch of findings and decisions.
pub(crate) fn record(
    out: &Output,
    summary: &mut Summary,
    archive: &mut Archive,
    findings_out: &mut FindingsSink,
    line_buf: &mut String,
) -> Result<(), PipelineError> {
    for f in &out.findings {
        *summary.findings.entry((f.kind, f.severity)).or_default() += 1;
        archive.push_finding(f);
        if let Some((w, p)) = findings_out.as_mut() {
            line_buf.clear();
            line_buf.push_str(&serde_json::to_string(f).unwrap_or_default());
            line_buf.push('\n');
            w.write_all(line_buf.as_bytes())
                .map_err(|source| PipelineError::Findings { path: p.clone(), source })?;
        }
    }
    for d in &out.decisions {
        summary.halted.push((d.agent_id.clone(), d.actor.to_owned()));
        archive.push_decision(d);
    }
    Ok(())
}

/// Runs the whole pipeline over the configured input until it ends.
pub fn run(cfg: &VigilConfig, opts: &RunOptions) -> Result<Summary, PipelineError> {
    let started = Instant::now();
    let path = cfg.input.path.clone().ok_or(PipelineError::NoInput)?;
    let input = open_input(&path)?;
    let source = match (&cfg.input.source_name, path == Path::new("-")) {
        (Some(name), _) => name.clone(),
        (None, true) => format!("stdin-{}", now_ms()),
        (None, false) => input.name.clone(),
    };
    let (mut archive, checkpoint) = Archive::open(&cfg.archive, &source, 0)?;
    let mut engine =
        restored_engine(&cfg.detect, checkpoint.map(|c| c.state), &checkpoint_of(&cfg.archive.dir))?;
    let skip_until = archive.committed_position();
    let mut findings_out = open_findings(cfg.output.findings.as_deref())?;
    let mut summary = Summary { source: source.clone(), ..Summary::default() };
    let mut reader =
        LineReader::new(input.reader, cfg.input.max_event_bytes, cfg.input.dead_letter_payload_bytes);
    let mut progress = Progress::new(opts.progress, "ingest", input.size);
    let mut dedup = DedupWindow::new(cfg.input.dedup_window);
    dedup.seed_from(&archive)?;
    let mut chunk = Chunk::default();
    let mut out = Output::default();
    let mut positions: Vec<u64> = Vec::new();
    let flush_every = Duration::from_secs_f64(cfg.archive.flush_seconds);
    let mut last_flush = Instant::now();
    let base_stats = engine.stats();
    let mut line_buf = String::new();
    // Parquet encoding runs on its own thread, overlapping the decoding of the next batches. One job in
    // flight at most bounds memory; jobs are written in order, so checkpoints only move forward.
    let writer = archive.writer();
    std::thread::scope(|scope| -> Result<(), PipelineError> {
        // Both channel ends live in this closure, so an early return drops the sender and the writer
        // ends before the scope joins it.
        let (jobs, job_rx) = mpsc::sync_channel::<FlushJob>(1);
        let (report_tx, reports) = mpsc::channel::<Result<FlushReport, ArchiveError>>();
        scope.spawn(move || {
            let mut writer = writer;
            for job in job_rx {
                let result = writer.write(job);
                let failed = result.is_err();
                if report_tx.send(result).is_err() || failed {
                    break;
                }
            }
        });
        let flusher = Flusher { jobs: &jobs, reports: &reports };
        loop {
            let more = reader
                .next_chunk(&mut chunk, cfg.input.batch_bytes)
                .map_err(|source| PipelineError::Read { path: path.clone(), source })?;
            if !more {
                break;
            }
            archive.set_ingested_at(now_ms());
            let horizon = Horizon::now(cfg.input.max_future_seconds);
            let mut events: Vec<Event<'_>> = Vec::with_capacity(chunk.lines.len());
            positions.clear();
            for line in &chunk.lines {
                summary.lines += 1;
                if line.position <= skip_until {
                    summary.skipped += 1;
                    continue;
                }
                let bytes = chunk.bytes(line);
                let Some(decoded) = classify(bytes, line, cfg.input.max_event_bytes, horizon, &mut dedup)
                else {
                    summary.blank += 1;
                    archive.consumed(line.position);
                    continue;
                };
                match decoded {
                    Ok(ev) => {
                        events.push(ev);
                        positions.push(line.position);
                    }
                    Err(reason) => {
                        *summary.dead_letters.entry(reason.code()).or_default() += 1;
                        archive.push_dead_letter(&DeadLetter::new(
                            reason,
                            line.position,
                            line.oversize.unwrap_or(bytes.len() as u64),
                            bytes,
                            cfg.input.dead_letter_payload_bytes,
                        ));
                    }
                }
            }
            summary.valid += events.len() as u64;
            out.clear();
            engine.process(&events, &mut out);
            for (ev, &pos) in events.iter().zip(&positions) {
                archive.push_event(ev, pos);
            }
            drop(events);
            record(&out, &mut summary, &mut archive, &mut findings_out, &mut line_buf)?;
            if archive.should_flush() || last_flush.elapsed() >= flush_every {
                flusher.flush(&mut archive, &engine, &mut summary)?;
                last_flush = Instant::now();
            }
            progress.update(
                input.consumed.load(std::sync::atomic::Ordering::Relaxed),
                summary.lines,
                started.elapsed(),
            );
        }
        // The input ended: close the windows still open, so their last minutes are judged too.
        out.clear();
        engine.finish(&mut out);
        record(&out, &mut summary, &mut archive, &mut findings_out, &mut line_buf)?;
        flusher.flush(&mut archive, &engine, &mut summary)?;
        drop(jobs);
        // The writer finishes every job in flight; its reports (or its error) come back here.
        for report in reports.iter() {
            summary.record(report?);
        }
        Ok(())
    })?;
    if let Some((mut w, p)) = findings_out {
        w.flush().map_err(|source| PipelineError::Findings { path: p, source })?;
    }
    progress.finish();
    let stats = engine.stats();
    summary.late = stats.late - base_stats.late;
    summary.agents = engine.agents();
    summary.bytes = reader.bytes_read();
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Hands flush jobs to the writer thread and collects what it reports.
struct Flusher<'a> {
    jobs: &'a SyncSender<FlushJob>,
    reports: &'a Receiver<Result<FlushReport, ArchiveError>>,
}

impl Flusher<'_> {
    fn flush(
        &self,
        archive: &mut Archive,
        engine: &Engine,
        summary: &mut Summary,
    ) -> Result<(), PipelineError> {
        while let Ok(report) = self.reports.try_recv() {
            summary.record(report?);
        }
        if !archive.has_uncommitted() {
            return Ok(());
        }
        if let Some(job) = archive.take_flush(engine_state(engine), now_ms())
            && self.jobs.send(job).is_err()
        {
            // The writer stopped: it has sent the error that stopped it.
            return Err(match self.reports.recv() {
                Ok(Err(e)) => e.into(),
                _ => PipelineError::WriterStopped,
            });
        }
        Ok(())
    }
}

impl Summary {
    fn record(&mut self, report: FlushReport) {
        self.files += report.files.len() as u64;
        self.archive_bytes += report.bytes;
    }
}

/// Where findings are also written as NDJSON (`[output] findings`), with its path for messages.
pub(crate) type FindingsSink = Option<(Box<dyn Write + Send>, PathBuf)>;

pub(crate) fn open_findings(path: Option<&Path>) -> Result<FindingsSink, PipelineError> {
    let Some(path) = path else { return Ok(None) };
    let w: Box<dyn Write + Send> = if path == Path::new("-") {
        Box::new(std::io::BufWriter::new(std::io::stdout()))
    } else {
        let f = std::fs::File::create(path)
            .map_err(|source| PipelineError::Findings { path: path.to_owned(), source })?;
        Box::new(std::io::BufWriter::new(f))
    };
    Ok(Some((w, path.to_owned())))
}

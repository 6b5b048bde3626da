//! The Parquet archive: `events/`, `findings/`, `control/` and `dead-letters/` under one root, each hive
//! partitioned `dt=YYYY-MM-DD/hour=HH/`, zstd-compressed, timestamps in UTC milliseconds.
//!
//! **A file appears under its final name only complete and fsynced**: it is written as
//! `.<name>.tmp`, closed, fsynced, renamed, and its directory fsynced. **The checkpoint moves only after
//! every file of a flush is durable**, and file names derive from the source positions they hold
//! (`<source>-<partition>-<first>-<last>.parquet`), so recovery can delete exactly the files of a flush
//! that never committed and a replay rewrites instead of duplicating.

mod columns;
mod config;
mod encode;
mod read;
pub mod small;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::arrow_writer::ArrowWriterOptions;
use parquet::arrow::{ArrowSchemaConverter, add_encoded_arrow_schema_to_metadata};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterPropertiesBuilder};
use parquet::schema::types::{ColumnPath, SchemaDescriptor};
use serde::{Deserialize, Serialize};
use vigil_schemas::Invalid;
use vigil_schemas::rows::{ControlRecord, Finding};
use vigil_schemas::timestamp::civil_hour;

pub use columns::{ControlColumns, DeadLetterColumns, EventColumns, FindingColumns, Origin, Table};
pub use config::{ArchiveConfig, ArchiveConfigError, Partitioning};
use encode::{FileEncoder, spread};
pub use read::{scan_table, table_files};
pub use small::SmallFile;

/// The archive's tables, by directory name.
pub const TABLES: [&str; 4] = ["events", "findings", "control", "dead-letters"];

/// Where checkpoints live under the root.
const CHECKPOINT_DIR: &str = "_vigil/checkpoints";

/// Something the archive could not do. Every variant names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A file system operation failed.
    #[error("archive I/O on {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Writing Parquet failed.
    #[error("writing Parquet file {path}: {source}")]
    Parquet {
        /// The file.
        path: PathBuf,
        /// The writer's error.
        source: parquet::errors::ParquetError,
    },
    /// Reading a Parquet file back failed.
    #[error("reading Parquet file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The reader's error.
        source: parquet::errors::ParquetError,
    },
    /// Final files of a source partition exist but its checkpoint does not: nothing says which of them
    /// are committed, so none is deleted and nothing is written over them.
    #[error(
        "{files} archived files of source {source_name} partition {partition} (e.g. {example:?}) but no checkpoint at \
         {checkpoint:?}: vigil neither deletes nor duplicates them. Restore the checkpoint (from a backup of \
         _vigil/), or move those files out of the archive, or give this input another source name"
    )]
    NoCheckpoint {
        /// The source.
        source_name: String,
        /// Its partition.
        partition: i32,
        /// How many final files it has.
        files: usize,
        /// One of them.
        example: PathBuf,
        /// Where the checkpoint should be.
        checkpoint: PathBuf,
    },
    /// Another vigil (or another lane of this one) has this source partition open: two writers of one
    /// source would each commit over the other and lose what the other acknowledged.
    #[error(
        "source {source_name} partition {partition} of the archive {root:?} is in use ({holder}): two writers of \
         one source lose acknowledged events. Stop the other vigil, or give this one another --archive or \
         source name"
    )]
    Busy {
        /// The archive root.
        root: PathBuf,
        /// The source.
        source_name: String,
        /// Its partition.
        partition: i32,
        /// What the lock file says of its holder.
        holder: String,
    },
    /// The checkpoint file is unreadable.
    #[error("checkpoint {path} is corrupt: {source}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// The parse error.
        source: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io { path: path.to_owned(), source }
}

/// A line refused by the decoder, on its way to `dead-letters/`.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Why it was refused.
    pub reason: Invalid,
    /// Its source position.
    pub position: u64,
    /// Its full size in bytes.
    pub size: u64,
    /// The original bytes (a prefix when `truncated`).
    pub payload: Vec<u8>,
    /// Whether `payload` is only a prefix (the line was over the size cap).
    pub truncated: bool,
}

impl DeadLetter {
    /// The one way every source builds a dead letter. `bytes` is what the source holds of a line
    /// whose full size was `size`. A line within the event cap is kept whole (it may be all there
    /// is of it, as with an HTTP body); one refused as `too_large` keeps its first `keep` bytes (the
    /// input's `dead_letter_payload_bytes`). `truncated` says whether anything was left out.
    pub fn new(reason: Invalid, position: u64, size: u64, bytes: &[u8], keep: usize) -> Self {
        let payload = DeadLetter::kept(&reason, bytes, keep).to_vec();
        Self { reason, position, size, truncated: (payload.len() as u64) < size, payload }
    }

    /// What a dead letter keeps of `bytes` refused for `reason`: all of them, or the first `keep` of a
    /// `too_large` line. Also what goes to a dead-letter topic or journal where nothing else holds them.
    pub fn kept<'a>(reason: &Invalid, bytes: &'a [u8], keep: usize) -> &'a [u8] {
        let held = if matches!(reason, Invalid::TooLarge { .. }) { keep } else { bytes.len() };
        &bytes[..bytes.len().min(held)]
    }
}

/// A detector state as JSON text: the detect crate writes it, the archive and the state topic only
/// store and hand it back.
pub type State = Box<serde_json::value::RawValue>;

/// The JSON `null`: no detector state yet.
pub fn no_state() -> State {
    serde_json::value::RawValue::NULL.to_owned()
}

/// The detector state a flush commits, which writes itself as JSON text (the detect crate's shape; the
/// archive only stores it, see [`State`]): text already written, or a copy of the engine's state that
/// the writer thread serialises straight into the checkpoint file, so that the thread judging events
/// does not spend its time there (with a hundred thousand agents, writing their state at each flush was
/// a fifth of a run's samples) and the state's text is never held whole in memory.
pub trait StateJson: Send + std::fmt::Debug {
    /// Writes the state as one JSON value.
    fn write_json(&self, out: &mut dyn io::Write) -> io::Result<()>;
}

impl StateJson for State {
    fn write_json(&self, out: &mut dyn io::Write) -> io::Result<()> {
        out.write_all(self.get().as_bytes())
    }
}

/// Whether a stored state is empty (`null`).
pub fn is_no_state(s: &State) -> bool {
    s.get().trim() == "null"
}

/// The committed state of one source partition, as stored next to the archive.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Format version of this file.
    pub version: u32,
    /// Source name.
    pub source: String,
    /// Source partition.
    pub partition: i32,
    /// Every position up to and including this one is durable in the archive.
    pub committed_position: u64,
    /// Wall time of the commit, UTC ms.
    pub committed_at: i64,
    /// Totals over the life of this source in this archive.
    pub totals: Totals,
    /// The detector state as of `committed_position`, as the JSON text it was written as (read and
    /// written whole, never parsed into a tree here).
    pub state: State,
    /// For a file source: what identifies the input (a hash of its first line), so that another file
    /// with the same name is not taken for a rerun of this one. Absent in older checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_fingerprint: Option<String>,
}

/// Running totals kept in the checkpoint.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Events archived.
    pub events: u64,
    /// Dead letters archived.
    pub dead_letters: u64,
    /// Findings archived.
    pub findings: u64,
    /// Control rows archived (transitions and delivery outcomes).
    pub control: u64,
    /// Files written.
    pub files: u64,
    /// Bytes of Parquet written.
    pub bytes: u64,
}

/// What one flush wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FlushReport {
    /// Files made durable.
    pub files: Vec<PathBuf>,
    /// Their total size.
    pub bytes: u64,
    /// Rows written, all tables.
    pub rows: u64,
    /// The position committed.
    pub committed_position: u64,
}

/// Rows of one table since the last flush, split by event-time directory (hour or day).
///
/// The rows go into one set of builders in the order they come, whatever their directory, with the
/// directory of each run of consecutive rows; a directory's batch is a slice of what the builders
/// finished (a copy only where its rows did not come together). One set of builders per directory made
/// a replay of sparse history build, finish and drop a set of 28 builders per hour touched, and
/// allocation was a tenth of its CPU. A directory's rows are the same rows in the same order either way.
#[derive(Debug)]
struct Partitioned<T> {
    /// Rows since the last finish, in arrival order.
    live: T,
    /// The directory and length of each run of consecutive rows in `live`.
    runs: Vec<(i64, usize)>,
    /// Rows finished early (when parts were taken) and not yet handed over, with their runs.
    done: Vec<(RecordBatch, Vec<(i64, usize)>)>,
    /// Rows not yet handed over, by directory: every directory touched since the last flush (one whose
    /// rows all went in parts with 0, as its file is still to be written).
    pending: BTreeMap<i64, usize>,
    span_ms: i64,
    /// Rows handed to the writer in parts since the last flush ([`Archive::take_parts`]).
    parted_rows: usize,
}

impl<T: Table> Partitioned<T> {
    fn new(by: Partitioning) -> Self {
        Partitioned {
            live: T::default(),
            runs: Vec::new(),
            done: Vec::new(),
            pending: BTreeMap::new(),
            span_ms: by.span_ms(),
            parted_rows: 0,
        }
    }

    /// The builders for one row of event time `ts_ms`: the caller pushes exactly one row.
    fn at(&mut self, ts_ms: i64) -> &mut T {
        let dir = ts_ms.div_euclid(self.span_ms);
        match self.runs.last_mut() {
            Some((d, n)) if *d == dir => *n += 1,
            _ => self.runs.push((dir, 1)),
        }
        *self.pending.entry(dir).or_default() += 1;
        &mut self.live
    }

    /// Rows since the last flush: buffered, and handed to the writer in parts.
    fn rows(&self) -> usize {
        self.pending.values().sum::<usize>() + self.parted_rows
    }

    /// The files a flush would write for this table: one per directory touched (one whose rows all went
    /// in parts too: the flush finishes its file).
    fn files(&self) -> usize {
        self.pending.len()
    }

    /// Finishes the rows of every directory holding at least `rows` as parts for the writer (one per run
    /// of its rows, in order: the writer writes them into one file one after another).
    fn take_parts(&mut self, rows: usize, name: &str, out: &mut Vec<Part>) {
        let due: Vec<i64> =
            self.pending.iter().filter(|&(_, &n)| n >= rows && n > 0).map(|(&d, _)| d).collect();
        if due.is_empty() {
            return;
        }
        self.finish_live();
        for index in due {
            for batch in self.gather(index) {
                self.parted_rows += batch.num_rows();
                out.push(Part { table: T::DIR, index, name: name.to_owned(), batch });
            }
            self.pending.insert(index, 0);
        }
        // What is left of the finished rows is copied out of them (rows of other directories at a turn
        // of the hour: few), so the rows handed over go with their parts once written, not at the flush.
        for (batch, runs) in std::mem::take(&mut self.done) {
            let kept: usize = runs.iter().filter(|&&(d, _)| d != TAKEN).map(|&(_, n)| n).sum();
            if kept == batch.num_rows() {
                self.done.push((batch, runs));
            } else if kept > 0 {
                let rest = copy_runs(&batch, &runs, |d| d != TAKEN);
                let mut kept_runs = Vec::<(i64, usize)>::new();
                for (d, n) in runs.into_iter().filter(|&(d, _)| d != TAKEN) {
                    match kept_runs.last_mut() {
                        Some((last, m)) if *last == d => *m += n,
                        _ => kept_runs.push((d, n)),
                    }
                }
                self.done.push((rest, kept_runs));
            }
        }
    }

    /// Forgets the parts: their rows are committed (or abandoned) with the flush that follows them.
    fn clear_parts(&mut self) {
        self.parted_rows = 0;
    }

    /// Moves the rows in the builders to `done`.
    fn finish_live(&mut self) {
        if !self.runs.is_empty() {
            let batch = self.live.finish();
            self.done.push((batch, std::mem::take(&mut self.runs)));
        }
    }

    /// Every row of directory `index` not yet handed over, in arrival order, one batch per finished
    /// batch holding any: a slice where they are one run (rows that came together, the usual case), the
    /// rows taken out by index where they are several (rows of directories that came interleaved). Its
    /// runs are marked taken. The builders must have been finished.
    fn gather(&mut self, index: i64) -> Vec<RecordBatch> {
        let mut out = Vec::new();
        for (batch, runs) in &mut self.done {
            let mine: Vec<(usize, usize)> =
                spans(runs).filter(|&(d, _, _)| d == index).map(|(_, at, n)| (at, n)).collect();
            match mine[..] {
                [] => continue,
                [(at, n)] => out.push(batch.slice(at, n)),
                _ => out.push(copy_runs(batch, runs, |d| d == index)),
            }
            runs.iter_mut().filter(|(d, _)| *d == index).for_each(|(d, _)| *d = TAKEN);
        }
        out
    }

    /// Every directory's rows not yet handed over, in directory order (a directory's runs one after
    /// another), and a fresh start.
    fn take_batches(&mut self, out: &mut Vec<(&'static str, i64, RecordBatch)>) {
        self.finish_live();
        for index in std::mem::take(&mut self.pending).into_iter().filter(|&(_, n)| n > 0).map(|(d, _)| d) {
            for batch in self.gather(index) {
                out.push((T::DIR, index, batch));
            }
        }
        self.done.clear();
    }
}

/// The directory index of runs already handed over (no event time is that far in the past).
const TAKEN: i64 = i64::MIN;

/// Each run as (directory, first row, rows).
fn spans(runs: &[(i64, usize)]) -> impl Iterator<Item = (i64, usize, usize)> + '_ {
    runs.iter().scan(0, |at, &(d, n)| {
        *at += n;
        Some((d, *at - n, n))
    })
}

/// The rows of `batch` in the runs whose directory `pick` keeps, in order, copied into a batch of their
/// own.
fn copy_runs(batch: &RecordBatch, runs: &[(i64, usize)], pick: impl Fn(i64) -> bool) -> RecordBatch {
    let rows: Vec<u32> = spans(runs)
        .filter(|&(d, _, _)| pick(d))
        .flat_map(|(_, at, n)| (at..at + n).map(|r| r as u32))
        .collect();
    arrow_select::take::take_record_batch(batch, &arrow_array::UInt32Array::from(rows))
        .expect("the rows taken are the batch's own")
}

/// Rows of one table and directory, finished early and handed to the writer thread, which encodes
/// them into the directory's file of the coming flush (under a temporary name until that flush): a
/// flush of many rows is then mostly encoded by the time it is due, instead of all at once after it.
#[derive(Debug)]
pub struct Part {
    table: &'static str,
    index: i64,
    /// The open file's name: that of a flush starting and ending at the flush's first position (the
    /// final name is known only at the flush), so the temporary file is this source's to clear on
    /// recovery like any other.
    name: String,
    batch: RecordBatch,
}

/// What is stamped on every row: the source partition and the ingest time.
#[derive(Debug)]
struct Stamp {
    source: String,
    partition: i32,
    ingested_at: i64,
    /// Subtracted from positions when they are written (`_position`, file names): 0 for files, whose
    /// positions are line numbers, 1 for Kafka, whose positions are offset + 1 so that 0 can mean
    /// "nothing committed" while the archive shows real offsets.
    base: u64,
}

impl Stamp {
    fn origin(&self) -> Origin<'_> {
        Origin { source: &self.source, partition: self.partition, ingested_at: self.ingested_at }
    }
}

/// The archive writer for one source partition.
#[derive(Debug)]
pub struct Archive {
    /// An exclusive `flock` on `_vigil/locks/<source>-<partition>.lock` for as long as this is open (the
    /// OS releases it when the process dies, so a crash never leaves it held).
    _lock: File,
    root: PathBuf,
    stamp: Stamp,
    flush_rows: usize,
    flush_files: usize,
    part_rows: usize,
    packing: PackingRule,
    sync_each_up_to: usize,
    write_threads: usize,
    /// The properties of a zstd file (a Snappy or plain one is made from them), statistics for every
    /// column: `unsummarised` takes them off where the writer applies them.
    props: WriterProperties,
    /// The text columns written without min/max statistics (not in `text_statistics`), in zstd and
    /// Snappy files; a plain file keeps every column's (its writer computes them at no cost to speak of).
    unsummarised: Vec<ColumnPath>,
    events: Partitioned<EventColumns>,
    dead: Partitioned<DeadLetterColumns>,
    findings: Partitioned<FindingColumns>,
    control: Partitioned<ControlColumns>,
    first: Option<u64>,
    /// The input's fingerprint, written into every checkpoint (file sources).
    fingerprint: Option<String>,
    last: u64,
    committed: u64,
    totals: Totals,
}

/// Columns whose values are mostly unique: Parquet dictionary pages would only cost space and time.
const UNIQUE_COLUMNS: &[&str] = &[
    "event_id",
    "ts",
    "trace_id",
    "span_id",
    "_position",
    "_ingested_at",
    "finding_id",
    "payload",
    "cost_usd",
];

/// Columns of random identifiers (W3C trace context), compressed by `random_id_zstd_level`.
const RANDOM_ID_COLUMNS: &[&str] = &["trace_id", "span_id"];

/// The text columns of every table, each name once (the tables share some), in schema order.
pub(crate) fn text_columns() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let schemas = [
        EventColumns::schema(),
        FindingColumns::schema(),
        ControlColumns::schema(),
        DeadLetterColumns::schema(),
    ];
    for f in schemas.iter().flat_map(|s| s.fields().iter()) {
        if f.data_type() == &arrow_schema::DataType::Utf8 && !out.contains(f.name()) {
            out.push(f.name().clone());
        }
    }
    out
}

/// `props` compressing every column by `all`, except the columns of random identifiers by `random_ids`.
fn compressed(
    mut props: WriterPropertiesBuilder,
    all: Compression,
    random_ids: Compression,
) -> WriterPropertiesBuilder {
    props = props.set_compression(all);
    for c in RANDOM_ID_COLUMNS {
        props = props.set_column_compression(ColumnPath::from(*c), random_ids);
    }
    props
}

impl Archive {
    /// Opens the archive for one source partition and recovers from an interrupted run: files of a flush
    /// that never committed, and temporary files, are removed. Returns the writer and the last checkpoint.
    pub fn open(
        cfg: &ArchiveConfig,
        source: &str,
        partition: i32,
    ) -> Result<(Archive, Option<Checkpoint>), ArchiveError> {
        Archive::open_based(cfg, source, partition, 0)
    }

    /// [`Archive::open`] for a Kafka topic partition: positions are `offset + 1` (so the checkpoint's
    /// committed position is the next offset to read, what Kafka commits), and the archive shows offsets
    /// (`_position`, file names `<topic>-<partition>-<first offset>-<last offset>.parquet`).
    pub fn open_kafka(
        cfg: &ArchiveConfig,
        topic: &str,
        partition: i32,
    ) -> Result<(Archive, Option<Checkpoint>), ArchiveError> {
        Archive::open_based(cfg, topic, partition, 1)
    }

    /// Waits, for up to `wait`, until no other open file holds a source partition's lock, asking again
    /// every `every`; `held` is told who holds it the first time it is found held. The lock is not kept
    /// (opening the source takes it). Whether it had to wait; `Busy`, naming the holder, if it is still
    /// held after `wait`.
    pub fn wait_for_source(
        cfg: &ArchiveConfig,
        source: &str,
        partition: i32,
        (wait, every): (std::time::Duration, std::time::Duration),
        held: impl FnOnce(&str),
    ) -> Result<bool, ArchiveError> {
        let started = std::time::Instant::now();
        let mut held = Some(held);
        loop {
            match lock_source(&cfg.dir, source, partition) {
                Ok(_free) => return Ok(held.is_none()),
                Err(ArchiveError::Busy { holder, .. }) if started.elapsed() < wait => {
                    if let Some(say) = held.take() {
                        say(&holder);
                    }
                    std::thread::sleep(every);
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn open_based(
        cfg: &ArchiveConfig,
        source: &str,
        partition: i32,
        base: u64,
    ) -> Result<(Archive, Option<Checkpoint>), ArchiveError> {
        let root = cfg.dir.clone();
        fs::create_dir_all(root.join(CHECKPOINT_DIR)).map_err(io_err(&root))?;
        let lock = lock_source(&root, source, partition)?;
        let checkpoint = read_checkpoint(&root, source, partition)?;
        let committed = match &checkpoint {
            Some(c) => c.committed_position,
            None => {
                // Only a checkpoint may say a final file is past the commit (and delete it). Without one,
                // final files of this source are someone's archive: refuse rather than delete or
                // duplicate them.
                let finals = final_files(&root, source, partition)?;
                if let Some(example) = finals.first() {
                    return Err(ArchiveError::NoCheckpoint {
                        source_name: source.to_owned(),
                        partition,
                        files: finals.len(),
                        example: example.clone(),
                        checkpoint: checkpoint_path(&root, source, partition),
                    });
                }
                // A new source partition starts with a checkpoint at position 0, before any file is
                // written, so a crash after its first files leaves a checkpoint that disowns them.
                write_checkpoint(
                    &root,
                    &Checkpoint {
                        version: 1,
                        source: source.to_owned(),
                        partition,
                        committed_position: 0,
                        committed_at: 0,
                        totals: Totals::default(),
                        state: no_state(),
                        input_fingerprint: None,
                    },
                )?;
                0
            }
        };
        remove_uncommitted(&root, source, partition, committed, base)?;
        let zstd = |level| Compression::ZSTD(ZstdLevel::try_new(level).unwrap_or_default());
        let mut props = compressed(
            WriterProperties::builder()
                .set_created_by(format!("vigil {}", env!("CARGO_PKG_VERSION")))
                .set_dictionary_enabled(true),
            zstd(cfg.zstd_level),
            zstd(cfg.random_id_zstd_level),
        );
        for c in UNIQUE_COLUMNS {
            props = props.set_column_dictionary_enabled(ColumnPath::from(*c), false);
        }
        let archive = Archive {
            _lock: lock,
            root,
            stamp: Stamp { source: source.to_owned(), partition, ingested_at: 0, base },
            flush_rows: cfg.flush_rows,
            flush_files: cfg.flush_files,
            part_rows: cfg.part_rows,
            packing: PackingRule {
                compress_min_rows: cfg.compress_min_rows,
                zstd_min_rows: cfg.zstd_min_rows,
            },
            sync_each_up_to: cfg.sync_files_each_up_to,
            write_threads: cfg.write_threads,
            unsummarised: text_columns()
                .into_iter()
                .filter(|c| !cfg.text_statistics.contains(c))
                .map(ColumnPath::from)
                .collect(),
            props: props.build(),
            events: Partitioned::new(cfg.partition),
            dead: Partitioned::new(cfg.partition),
            findings: Partitioned::new(cfg.partition),
            control: Partitioned::new(cfg.partition),
            first: None,
            fingerprint: checkpoint.as_ref().and_then(|c| c.input_fingerprint.clone()),
            last: committed,
            committed,
            totals: checkpoint.as_ref().map(|c| c.totals).unwrap_or_default(),
        };
        Ok((archive, checkpoint))
    }

    /// Feeds `each` the event_id and position of at least the last `want` events this source partition
    /// archived (newest files only), oldest first: what a restarted pipeline seeds its dedup window with.
    pub fn recent_event_ids(
        &self,
        want: usize,
        each: impl FnMut(&str, &str, u64),
    ) -> Result<usize, ArchiveError> {
        let Stamp { source, partition, base, .. } = &self.stamp;
        read::recent_event_ids(&self.root, source, *partition, *base, want, each)
    }

    /// The input fingerprint this source partition's checkpoint records, if any.
    pub fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// Records the input's fingerprint, written with every checkpoint from now on.
    pub fn set_fingerprint(&mut self, fingerprint: String) {
        self.fingerprint = Some(fingerprint);
    }

    /// Every position up to this one is durable.
    pub fn committed_position(&self) -> u64 {
        self.committed
    }

    /// Moves the committed position forward to `position` without files: what lies before it was archived
    /// elsewhere (another member's archive root took those records). Nothing buffered may be pending.
    pub fn skip_to(&mut self, position: u64) {
        debug_assert!(self.first.is_none(), "skip_to with rows pending");
        if position > self.committed {
            self.committed = position;
            self.last = position;
        }
    }

    /// Sets the ingest time stamped on rows pushed from now on (UTC ms).
    pub fn set_ingested_at(&mut self, ms: i64) {
        self.stamp.ingested_at = ms;
    }

    /// Records that the source has been consumed up to `position` (valid, dead-lettered or blank).
    pub fn consumed(&mut self, position: u64) {
        if position > self.committed {
            // Dead letters are pushed as they are found, events after their batch is judged: positions
            // can come out of order within a batch, and the file name must still cover the whole range.
            self.first = Some(self.first.map_or(position, |f| f.min(position)));
            self.last = self.last.max(position);
        }
    }

    /// Buffers one event.
    pub fn push_event(&mut self, ev: &vigil_schemas::Event<'_>, position: u64) {
        self.consumed(position);
        let origin = self.stamp.origin();
        self.events.at(ev.ts_ms).push(ev, origin, position - self.stamp.base);
    }

    /// Buffers one dead letter (partitioned by ingest time: it has no trustworthy event time).
    pub fn push_dead_letter(&mut self, d: &DeadLetter) {
        self.consumed(d.position);
        let origin = self.stamp.origin();
        self.dead.at(origin.ingested_at).push(d, origin, d.position - self.stamp.base);
    }

    /// Buffers one finding.
    pub fn push_finding(&mut self, f: &Finding) {
        let origin = self.stamp.origin();
        self.findings.at(f.ts).push(f, origin);
    }

    /// Buffers one control record (a transition, or a webhook delivery outcome) at its control-log
    /// position.
    pub fn push_control(&mut self, r: &ControlRecord, position: u64) {
        self.consumed(position);
        let origin = self.stamp.origin();
        let ts = match r {
            ControlRecord::Transition(t) => t.ts,
            ControlRecord::Delivery(d) => d.ts,
        };
        self.control.at(ts).push(r, origin);
    }

    /// Rows buffered, all tables.
    pub fn pending_rows(&self) -> usize {
        self.events.rows() + self.dead.rows() + self.findings.rows() + self.control.rows()
    }

    /// The files a flush would write now, all tables.
    pub fn pending_files(&self) -> usize {
        self.events.files() + self.dead.files() + self.findings.files() + self.control.files()
    }

    /// Whether enough is buffered to flush on size: `flush_rows` rows, or rows for `flush_files` files.
    pub fn should_flush(&self) -> bool {
        self.pending_rows() >= self.flush_rows || self.pending_files() >= self.flush_files
    }

    /// The rows of every table and directory that has reached `part_rows` since the last take, finished
    /// as parts for the writer thread ([`FlushWriter::part`]); none when `part_rows` is 0. Parts must
    /// reach the writer before the flush that follows them.
    pub fn take_parts(&mut self) -> Vec<Part> {
        let mut out = Vec::new();
        let Some(first) = self.first.filter(|_| self.part_rows > 0) else { return out };
        let Stamp { source, partition, base, .. } = &self.stamp;
        let name = format!("{source}-{partition}-{0}-{0}.parquet", first - base);
        self.events.take_parts(self.part_rows, &name, &mut out);
        self.dead.take_parts(self.part_rows, &name, &mut out);
        self.findings.take_parts(self.part_rows, &name, &mut out);
        self.control.take_parts(self.part_rows, &name, &mut out);
        out
    }

    /// Whether anything was consumed since the last commit.
    pub fn has_uncommitted(&self) -> bool {
        self.first.is_some()
    }

    /// Writes every buffered row to durable files, then commits the checkpoint with `state`: the same
    /// as [`Archive::take_flush`] followed by [`FlushWriter::write`] on this thread. Not for an archive
    /// whose parts ([`Archive::take_parts`]) went to a writer: that writer holds their files.
    pub fn flush(
        &mut self,
        state: impl StateJson + 'static,
        now_ms: i64,
    ) -> Result<FlushReport, ArchiveError> {
        debug_assert!(
            [
                self.events.parted_rows,
                self.dead.parted_rows,
                self.findings.parted_rows,
                self.control.parted_rows
            ] == [0; 4],
            "rows taken as parts are flushed by the writer that holds them"
        );
        match self.take_flush(state, now_ms) {
            Some(job) => {
                let mut writer = self.writer();
                let report = writer.write(job)?;
                self.totals.files = writer.files;
                self.totals.bytes = writer.bytes;
                Ok(report)
            }
            None => Ok(FlushReport { committed_position: self.committed, ..FlushReport::default() }),
        }
    }

    /// A writer for flush jobs, to run on another thread so Parquet encoding overlaps decoding. Jobs must
    /// be written in the order they were taken, by one writer: that keeps checkpoints monotonic.
    pub fn writer(&self) -> FlushWriter {
        // A file of a few rows gains nothing from dictionaries, page-level statistics or an offset index
        // (its one page per column is its chunk), and each costs a share of the per-file work that
        // dominates such files (the offset index alone about a tenth of Parquet's).
        let plain = self
            .props
            .clone()
            .into_builder()
            .set_dictionary_enabled(false)
            .set_statistics_enabled(EnabledStatistics::Chunk)
            .set_offset_index_disabled(true);
        let plain = compressed(plain, Compression::UNCOMPRESSED, Compression::UNCOMPRESSED).build();
        let summarised = |mut b: WriterPropertiesBuilder| {
            for c in &self.unsummarised {
                b = b.set_column_statistics_enabled(c.clone(), EnabledStatistics::None);
            }
            b
        };
        let snappy = summarised(self.props.clone().into_builder());
        let snappy = compressed(snappy, Compression::SNAPPY, Compression::SNAPPY).build();
        let zstd = summarised(self.props.clone().into_builder()).build();
        let props = [plain, snappy, zstd];
        let tables = [
            (EventColumns::DIR, EventColumns::schema()),
            (FindingColumns::DIR, FindingColumns::schema()),
            (ControlColumns::DIR, ControlColumns::schema()),
            (DeadLetterColumns::DIR, DeadLetterColumns::schema()),
        ]
        .into_iter()
        .map(|(table, schema)| Prepared::new(table, schema, &props))
        .collect();
        FlushWriter {
            layout: Layout {
                root: self.root.clone(),
                props,
                tables,
                packing: self.packing,
                partition: self.events.span_ms,
            },
            sync_each_up_to: self.sync_each_up_to,
            write_threads: self.write_threads,
            files: self.totals.files,
            bytes: self.totals.bytes,
            open: Vec::new(),
            open_dirs: Vec::new(),
        }
    }

    /// Takes everything buffered since the last flush as a job for a [`FlushWriter`]: the finished Arrow
    /// batches, the file name of their position range, and the checkpoint to commit after them. From
    /// here on the positions covered count as committed for this writer's bookkeeping.
    pub fn take_flush(&mut self, state: impl StateJson + 'static, now_ms: i64) -> Option<FlushJob> {
        let first = self.first.take()?;
        let base = self.stamp.base;
        let name = format!(
            "{}-{}-{}-{}.parquet",
            self.stamp.source,
            self.stamp.partition,
            first - base,
            self.last - base
        );
        self.totals.events += self.events.rows() as u64;
        self.totals.dead_letters += self.dead.rows() as u64;
        self.totals.findings += self.findings.rows() as u64;
        self.totals.control += self.control.rows() as u64;
        self.events.clear_parts();
        self.dead.clear_parts();
        self.findings.clear_parts();
        self.control.clear_parts();
        let mut batches = Vec::new();
        self.events.take_batches(&mut batches);
        self.dead.take_batches(&mut batches);
        self.findings.take_batches(&mut batches);
        self.control.take_batches(&mut batches);
        self.committed = self.last;
        Some(FlushJob {
            name,
            batches,
            checkpoint: Checkpoint {
                version: 1,
                source: self.stamp.source.clone(),
                partition: self.stamp.partition,
                committed_position: self.last,
                committed_at: now_ms,
                totals: self.totals,
                // Filled in by the writer, from `state`.
                state: no_state(),
                input_fingerprint: self.fingerprint.clone(),
            },
            state: Box::new(state),
        })
    }
}

/// How a file is packed, by its rows: zstd's setup (a compression and a decompression context per
/// column, in parquet-rs) costs over a millisecond per file, more than it saves on a file of a few
/// hundred rows (a replay of sparse history writes one per hour or day touched), while Snappy's costs
/// nothing and still takes the bytes to a third (zstd: a quarter). Files of a handful of rows are not
/// compressed at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Packing {
    Plain = 0,
    Snappy = 1,
    Zstd = 2,
}

/// The row counts at which files start to be compressed, and compressed with zstd.
#[derive(Debug, Clone, Copy)]
struct PackingRule {
    compress_min_rows: usize,
    zstd_min_rows: usize,
}

impl PackingRule {
    fn packing(&self, rows: usize) -> Packing {
        if rows < self.compress_min_rows {
            Packing::Plain
        } else if rows < self.zstd_min_rows {
            Packing::Snappy
        } else {
            Packing::Zstd
        }
    }
}

/// What Parquet's writer works out for each file from a table's Arrow schema, worked out once per
/// writer: the Parquet schema, and the properties (one per [`Packing`]) with the Arrow schema already
/// encoded into their metadata. For files of a few rows (a replay of sparse
/// history writes one per hour touched) that encoding and conversion were a tenth of each file's cost.
/// The files are the same, byte for byte (`a_prepared_table_writes_what_arrow_writer_writes`).
#[derive(Debug)]
struct Prepared {
    table: &'static str,
    schema: SchemaRef,
    descr: Option<SchemaDescriptor>,
    /// By [`Packing`].
    props: [WriterProperties; 3],
    /// Its files packed plain, written straight; `None` when its schema has columns [`SmallFile`] does
    /// not cover.
    small: Option<SmallFile>,
}

impl Prepared {
    fn new(table: &'static str, schema: SchemaRef, props: &[WriterProperties; 3]) -> Self {
        let with_schema = |p: &WriterProperties| {
            let mut p = p.clone();
            add_encoded_arrow_schema_to_metadata(&schema, &mut p);
            p
        };
        // A schema Parquet cannot hold fails here and again, with its error, when a file is written.
        let coerce = props[Packing::Zstd as usize].coerce_types();
        let descr = ArrowSchemaConverter::new().with_coerce_types(coerce).convert(&schema).ok();
        let props = props.each_ref().map(with_schema);
        let small = descr.as_ref().and_then(|d| SmallFile::new(&schema, d, &props[Packing::Plain as usize]));
        Prepared { table, props, descr, schema, small }
    }

    /// The writer options for a file of this table packed as `packing`: its prepared schema and
    /// properties.
    fn options(&self, packing: Packing) -> Option<ArrowWriterOptions> {
        let props = &self.props[packing as usize];
        let options = ArrowWriterOptions::new().with_properties(props.clone()).with_skip_arrow_metadata(true);
        Some(options.with_parquet_schema(self.descr.clone()?))
    }
}

/// One flush, ready to write: Arrow batches by table and hour, and the checkpoint that follows them.
#[derive(Debug)]
pub struct FlushJob {
    name: String,
    batches: Vec<(&'static str, i64, RecordBatch)>,
    checkpoint: Checkpoint,
    /// The checkpoint's detector state, written by the writer once the files are durable.
    state: Box<dyn StateJson>,
}

/// Where a flush's files go and how they are packed: what the threads writing a flush share.
#[derive(Debug)]
struct Layout {
    root: PathBuf,
    /// By [`Packing`].
    props: [WriterProperties; 3],
    /// Each table's schema and properties, prepared.
    tables: Vec<Prepared>,
    packing: PackingRule,
    /// The span of one directory (`Partitioning::span_ms`).
    partition: i64,
}

/// Writes flush jobs: Parquet files (durable, atomically named), then the checkpoint.
#[derive(Debug)]
pub struct FlushWriter {
    layout: Layout,
    sync_each_up_to: usize,
    write_threads: usize,
    files: u64,
    bytes: u64,
    /// Files opened by parts, finished by the next flush.
    open: Vec<OpenFile>,
    /// Directories created for them, whose parents the flush makes durable.
    open_dirs: Vec<PathBuf>,
}

impl Drop for FlushWriter {
    /// Files opened by parts whose flush never came (the lane stopped without archiving, or failed) are
    /// removed; a crash leaves them to the next open's recovery.
    fn drop(&mut self) {
        for o in self.open.drain(..) {
            let OpenFile { tmp, writer, .. } = o;
            drop(writer);
            let _ = fs::remove_file(tmp);
        }
    }
}

impl FlushWriter {
    /// Writes one job's files, makes them durable, then commits its checkpoint.
    ///
    /// A few files are each written to a temporary name, fsynced and renamed, and their directories
    /// fsynced. Many (a replay of sparse history touches an hour per few events) are all written, the
    /// file system synced once, all renamed, and synced once more: the same guarantee (nothing under
    /// a final name before its bytes are durable; the checkpoint only after every rename is) for two
    /// syncs instead of two per file.
    pub fn write(&mut self, job: FlushJob) -> Result<FlushReport, ArchiveError> {
        let FlushJob { name, batches: all, mut checkpoint, state } = job;
        let mut report = FlushReport::default();
        let mut dirs = std::mem::take(&mut self.open_dirs);
        // The files opened by parts take the rest of their rows and are finished first, on up to
        // `write_threads` threads: files on threads of their own, and each file's columns on the threads
        // left over (the last flush of an input is often one big file, with the lane done).
        // A directory's rows may come as several batches in a row (slices of the rows as they arrived):
        // into a file opened by parts they are written one after another, as parts are; any other
        // file is written from one batch.
        let mut open: Vec<(OpenFile, Vec<RecordBatch>)> =
            self.open.drain(..).map(|o| (o, Vec::new())).collect();
        let mut grouped: Vec<(&'static str, i64, Vec<RecordBatch>)> = Vec::with_capacity(all.len());
        for b in all {
            match open.iter_mut().find(|(o, _)| o.table == b.0 && o.index == b.1) {
                Some((_, rest)) => rest.push(b.2),
                None => match grouped.last_mut() {
                    Some(last) if last.0 == b.0 && last.1 == b.1 => last.2.push(b.2),
                    _ => grouped.push((b.0, b.1, vec![b.2])),
                },
            }
        }
        let mut batches = Vec::with_capacity(grouped.len());
        for (table, index, mut parts) in grouped {
            let batch = match parts.len() {
                1 => parts.swap_remove(0),
                _ => arrow_select::concat::concat_batches(&parts[0].schema(), &parts).map_err(|e| {
                    ArchiveError::Parquet {
                        path: partition_dir(&self.layout.root, table, index, self.layout.partition),
                        source: e.into(),
                    }
                })?,
            };
            batches.push((table, index, batch));
        }
        let per_file = (self.write_threads / open.len().max(1)).max(1);
        let finish = |(mut o, rest): (OpenFile, Vec<RecordBatch>)| {
            for r in &rest {
                o.write(r, per_file)?;
            }
            o.finish(&name, per_file)
        };
        let open = open
            .into_iter()
            .map(|(o, rest)| {
                let rows = o.rows as usize + rest.iter().map(RecordBatch::num_rows).sum::<usize>();
                ((o, rest), file_weight(rows))
            })
            .collect();
        let finished =
            spread(open, self.write_threads, finish).into_iter().collect::<Result<Vec<_>, ArchiveError>>()?;
        let batched = batches.len() + finished.len() > self.sync_each_up_to && cfg!(target_os = "linux");
        let mut renames = Vec::new();
        if batched {
            // Written under temporary names, shared out to `write_threads` threads by rows (files of a few
            // rows are mostly Parquet's fixed cost per file, which is CPU), then made durable at once.
            let layout = &self.layout;
            let per_file = (self.write_threads / batches.len().max(1)).max(1);
            let work = batches.iter().map(|b| (b, file_weight(b.2.num_rows()))).collect();
            let mut files = spread(work, self.write_threads, |b| layout.write_one(&name, b, per_file))
                .into_iter()
                .collect::<Result<Vec<_>, ArchiveError>>()?;
            files.extend(finished.into_iter().map(|(w, _, _)| w));
            for Written { tmp, path, bytes, rows } in files {
                report.bytes += bytes;
                report.rows += rows;
                report.files.push(path.clone());
                renames.push((tmp, path));
            }
        } else {
            for (Written { tmp, path, bytes, rows }, file, dir) in finished {
                file.sync_all().map_err(io_err(&tmp))?;
                fs::rename(&tmp, &path).map_err(io_err(&path))?;
                report.bytes += bytes;
                report.rows += rows;
                report.files.push(path);
                dirs.push(dir);
            }
            for (table, index, batch) in &batches {
                let dir = partition_dir(&self.layout.root, table, *index, self.layout.partition);
                create_dirs(&self.layout.root, &dir, &mut dirs)?;
                let path = dir.join(&name);
                report.bytes += write_atomically(&path, |tmp| {
                    self.layout.write_file(tmp, &path, table, batch, true, self.write_threads)
                })?;
                report.rows += batch.num_rows() as u64;
                report.files.push(path);
                dirs.push(dir);
            }
        }
        if batched {
            sync_file_system(&self.layout.root)?;
            for (tmp, path) in &renames {
                fs::rename(tmp, path).map_err(io_err(path))?;
            }
            sync_file_system(&self.layout.root)?;
        } else {
            dirs.sort();
            dirs.dedup();
            for d in &dirs {
                sync_dir(d)?;
            }
        }
        self.files += report.files.len() as u64;
        self.bytes += report.bytes;
        checkpoint.totals.files = self.files;
        checkpoint.totals.bytes = self.bytes;
        write_checkpoint_with(&self.layout.root, &checkpoint, &*state)?;
        report.committed_position = checkpoint.committed_position;
        Ok(report)
    }

    /// Encodes a part into its directory's file of the coming flush, opening the file (under a
    /// temporary name, packed by the part's rows) for the first part of that directory. Parts must
    /// come in the order they were taken, before the flush they belong to.
    ///
    /// A part is encoded on this thread alone, as parts come while the lane judges the next batches on
    /// the other core; `hurried` (the lane is waiting for the writer: its input ended, or a Kafka member
    /// commits) spreads its columns over `write_threads` threads, as a flush's are. The file is the same
    /// either way.
    pub fn part(&mut self, part: Part, hurried: bool) -> Result<(), ArchiveError> {
        let threads = if hurried { self.write_threads } else { 1 };
        let Part { table, index, name, batch } = part;
        if let Some(o) = self.open.iter_mut().find(|o| o.table == table && o.index == index) {
            return o.write(&batch, threads);
        }
        let dir = partition_dir(&self.layout.root, table, index, self.layout.partition);
        create_dirs(&self.layout.root, &dir, &mut self.open_dirs)?;
        let tmp = tmp_path(&dir.join(&name));
        let options = self.layout.options_for(table, &batch);
        let writer = create_parquet(&tmp, &tmp, batch.schema(), options, 1 << 20)?;
        let mut open = OpenFile { table, index, dir, tmp, writer, rows: 0 };
        let written = open.write(&batch, threads);
        self.open.push(open);
        written
    }
}

impl Layout {
    /// The prepared schema and properties of `table`, if `batch` is of its schema.
    fn prepared(&self, table: &str, batch: &RecordBatch) -> Option<&Prepared> {
        let schema = batch.schema_ref();
        self.tables
            .iter()
            .find(|p| p.table == table && (Arc::ptr_eq(&p.schema, schema) || p.schema == *schema))
    }

    /// The options a batch of `table` is written with by Parquet's writer: its prepared schema and
    /// properties, packed by its rows.
    fn options_for(&self, table: &str, batch: &RecordBatch) -> ArrowWriterOptions {
        let packing = self.packing.packing(batch.num_rows());
        self.prepared(table, batch).and_then(|p| p.options(packing)).unwrap_or_else(|| {
            ArrowWriterOptions::new().with_properties(self.props[packing as usize].clone())
        })
    }

    /// Writes `batch` of `table` as a Parquet file at `tmp` (for `path`, named in errors), fsynced when
    /// `sync`: a file packed plain straight ([`SmallFile`]) when its columns are covered, any other by
    /// Parquet's writer, its columns on up to `threads` threads. Returns the file size.
    fn write_file(
        &self,
        tmp: &Path,
        path: &Path,
        table: &str,
        batch: &RecordBatch,
        sync: bool,
        threads: usize,
    ) -> Result<u64, ArchiveError> {
        let plain = self.packing.packing(batch.num_rows()) == Packing::Plain;
        let small =
            self.prepared(table, batch).and_then(|p| p.small.as_ref()).filter(|s| plain && s.covers(batch));
        match small {
            Some(small) => write_small(tmp, small, batch, sync),
            None => write_parquet(tmp, path, batch, self.options_for(table, batch), sync, threads),
        }
    }

    /// Writes one batch of a job under its temporary name, not synced (its directory made if missing;
    /// a batched flush syncs the whole file system instead of each directory).
    fn write_one(
        &self,
        name: &str,
        (table, index, batch): &(&'static str, i64, RecordBatch),
        threads: usize,
    ) -> Result<Written, ArchiveError> {
        let dir = partition_dir(&self.root, table, *index, self.partition);
        create_dirs(&self.root, &dir, &mut Vec::new())?;
        let path = dir.join(name);
        let tmp = tmp_path(&path);
        let bytes = self.write_file(&tmp, &path, table, batch, false, threads)?;
        Ok(Written { tmp, path, bytes, rows: batch.num_rows() as u64 })
    }
}

/// A file of the coming flush, opened by its directory's first part and finished by the flush.
#[derive(Debug)]
struct OpenFile {
    table: &'static str,
    index: i64,
    dir: PathBuf,
    tmp: PathBuf,
    writer: FileEncoder<BufWriter<Counted>>,
    rows: u64,
}

impl OpenFile {
    /// Encodes more rows on up to `threads` threads.
    fn write(&mut self, batch: &RecordBatch, threads: usize) -> Result<(), ArchiveError> {
        self.writer
            .write(batch, threads)
            .map_err(|source| ArchiveError::Parquet { path: self.tmp.clone(), source })?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// Closes its columns on up to `threads` threads and writes the footer: the file is whole under its
    /// temporary name, to be named `name` once durable.
    fn finish(self, name: &str, threads: usize) -> Result<(Written, File, PathBuf), ArchiveError> {
        let OpenFile { dir, tmp, writer, rows, .. } = self;
        let Counted { file, bytes } = finish_parquet(writer, threads, &tmp, &tmp)?;
        Ok((Written { path: dir.join(name), tmp, bytes, rows }, file, dir))
    }
}

/// A file being written, counting its bytes, so its size is known without asking the file system
/// (a replay of sparse history writes thousands of files per flush, each a few system calls).
#[derive(Debug)]
struct Counted {
    file: File,
    bytes: u64,
}

impl Counted {
    fn new(file: File) -> Self {
        Counted { file, bytes: 0 }
    }
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// About how much work a file of `rows` rows is to write, for sharing a flush's files out to threads:
/// its rows, and a fixed cost per file (Parquet's setup and footer, the system calls) that is about what
/// a hundred rows take to encode.
fn file_weight(rows: usize) -> usize {
    rows + 100
}

/// One file of a batched flush, written under its temporary name.
struct Written {
    tmp: PathBuf,
    path: PathBuf,
    bytes: u64,
    rows: u64,
}

/// The directory of one event-time span: `dt=…/hour=…` for hours, `dt=…` for days.
fn partition_dir(root: &Path, table: &str, index: i64, span_ms: i64) -> PathBuf {
    let (y, m, d, h) = civil_hour(index * span_ms);
    let day = root.join(table).join(format!("dt={y:04}-{m:02}-{d:02}"));
    if span_ms < 86_400_000 { day.join(format!("hour={h:02}")) } else { day }
}

/// Writes one batch as a Parquet file: temporary name, close, fsync, rename. Returns the file size.
pub fn write_parquet_atomically(
    path: &Path,
    batch: &RecordBatch,
    props: &WriterProperties,
) -> Result<u64, ArchiveError> {
    let options = ArrowWriterOptions::new().with_properties(props.clone());
    write_atomically(path, |tmp| write_parquet(tmp, path, batch, options, true, 1))
}

/// Writes the file at `path` through `write` (which fsyncs it) under its temporary name, then names it.
/// Returns the file size.
fn write_atomically(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<u64, ArchiveError>,
) -> Result<u64, ArchiveError> {
    let tmp = tmp_path(path);
    let size = write(&tmp)?;
    fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(size)
}

/// Writes one batch as a Parquet file at `tmp` (for `path`, named in errors), its columns encoded on up
/// to `threads` threads, fsynced when `sync`. Returns the file size.
fn write_parquet(
    tmp: &Path,
    path: &Path,
    batch: &RecordBatch,
    options: ArrowWriterOptions,
    sync: bool,
    threads: usize,
) -> Result<u64, ArchiveError> {
    // Writes of up to 1 MiB, and no more buffer than a small file needs.
    let buffer = batch.get_array_memory_size().clamp(64 << 10, 1 << 20);
    let mut writer = create_parquet(tmp, path, batch.schema(), options, buffer)?;
    writer.write(batch, threads).map_err(|source| ArchiveError::Parquet { path: path.to_owned(), source })?;
    let Counted { file, bytes } = finish_parquet(writer, threads, tmp, path)?;
    if sync {
        file.sync_all().map_err(io_err(tmp))?;
    }
    Ok(bytes)
}

/// Writes a small file at `tmp`, fsynced when `sync`. Returns its size.
fn write_small(tmp: &Path, small: &SmallFile, batch: &RecordBatch, sync: bool) -> Result<u64, ArchiveError> {
    // The values and a few kilobytes of schema and metadata (the Arrow schema among them).
    let mut bytes = Vec::with_capacity(16 << 10);
    small.write(batch, &mut bytes);
    let mut file = File::create(tmp).map_err(io_err(tmp))?;
    file.write_all(&bytes).map_err(io_err(tmp))?;
    if sync {
        file.sync_all().map_err(io_err(tmp))?;
    }
    Ok(bytes.len() as u64)
}

/// Starts a Parquet file at `tmp` (called `named` in Parquet's errors), written through a buffer of
/// `buffer` bytes that counts them.
fn create_parquet(
    tmp: &Path,
    named: &Path,
    schema: SchemaRef,
    options: ArrowWriterOptions,
    buffer: usize,
) -> Result<FileEncoder<BufWriter<Counted>>, ArchiveError> {
    let file = File::create(tmp).map_err(io_err(tmp))?;
    FileEncoder::new(BufWriter::with_capacity(buffer, Counted::new(file)), schema, options)
        .map_err(|source| ArchiveError::Parquet { path: named.to_owned(), source })
}

/// Closes a file started by [`create_parquet`] (its last columns on up to `threads` threads, then the
/// footer), everything written to `tmp`: the file, and its size.
fn finish_parquet(
    writer: FileEncoder<BufWriter<Counted>>,
    threads: usize,
    tmp: &Path,
    named: &Path,
) -> Result<Counted, ArchiveError> {
    writer
        .finish(threads)
        .map_err(|source| ArchiveError::Parquet { path: named.to_owned(), source })?
        .into_inner()
        .map_err(|e| ArchiveError::Io { path: tmp.to_owned(), source: e.into_error() })
}

/// Creates `dir` and any missing parents below `root`, recording each one created in `created` (its
/// parent's entry for it must be made durable too).
///
/// Tries to make `dir` first and looks at its parent only if that is missing: one system call for a
/// directory that exists or whose parent does (nearly every file of a replay of sparse history is the
/// first of its hour).
fn create_dirs(root: &Path, dir: &Path, created: &mut Vec<PathBuf>) -> Result<(), ArchiveError> {
    let made = match fs::create_dir(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => match dir.parent() {
            Some(parent) if parent != root => {
                create_dirs(root, parent, created)?;
                fs::create_dir(dir)
            }
            _ => Err(e),
        },
        made => made,
    };
    match made {
        Ok(()) => {
            if let Some(parent) = dir.parent() {
                created.push(parent.to_owned());
            }
            Ok(())
        }
        // Something that is not a directory in its place fails when the file is made in it.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(ArchiveError::Io { path: dir.to_owned(), source: e }),
    }
}

/// Makes everything written to the file system holding `root` durable (Linux `syncfs`).
#[cfg(target_os = "linux")]
fn sync_file_system(root: &Path) -> Result<(), ArchiveError> {
    File::open(root).and_then(|d| rustix::fs::syncfs(&d).map_err(std::io::Error::from)).map_err(io_err(root))
}

#[cfg(not(target_os = "linux"))]
fn sync_file_system(_root: &Path) -> Result<(), ArchiveError> {
    unreachable!("batched syncs are only chosen on Linux")
}

fn tmp_path(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

fn sync_dir(dir: &Path) -> Result<(), ArchiveError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err(dir))
}

fn checkpoint_path(root: &Path, source: &str, partition: i32) -> PathBuf {
    root.join(CHECKPOINT_DIR).join(format!("{source}-{partition}.json"))
}

/// Reads the checkpoint of one source partition, if there is one.
pub fn read_checkpoint(
    root: &Path,
    source: &str,
    partition: i32,
) -> Result<Option<Checkpoint>, ArchiveError> {
    let path = checkpoint_path(root, source, partition);
    match fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| ArchiveError::Checkpoint { path, source }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ArchiveError::Io { path, source: e }),
    }
}

fn write_checkpoint(root: &Path, c: &Checkpoint) -> Result<(), ArchiveError> {
    write_json(root, &checkpoint_path(root, &c.source, c.partition), c)
}

/// Writes checkpoint `c` with `state` in place of its `state` field, streamed into the file: the text
/// is what [`write_checkpoint`] writes for a checkpoint holding that state's JSON.
fn write_checkpoint_with(root: &Path, c: &Checkpoint, state: &dyn StateJson) -> Result<(), ArchiveError> {
    let path = checkpoint_path(root, &c.source, c.partition);
    // The checkpoint around the state is small: written with `null` for the state, then split there. The
    // field's key is found in the text as serde writes it; inside a string every quote is escaped, so
    // the key cannot be matched there.
    let shell = serde_json::to_vec(&Checkpoint { state: no_state(), ..c.clone() })
        .map_err(|source| ArchiveError::Checkpoint { path: path.clone(), source })?;
    const KEY: &[u8] = b"\"state\":null";
    let at = shell.windows(KEY.len()).position(|w| w == KEY).map(|i| i + KEY.len() - 4);
    let Some(at) = at else {
        let source = serde::ser::Error::custom("a checkpoint without its state field");
        return Err(ArchiveError::Checkpoint { path, source });
    };
    write_file_durably(root, &path, |w| {
        w.write_all(&shell[..at])?;
        state.write_json(w)?;
        w.write_all(&shell[at + 4..])
    })
}

/// Which source partition's checkpoint holds the detector state sources the archive has not seen yet
/// start from (see [`write_carry`]): a pointer, so the state is not written twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Carry {
    /// The source.
    pub source: String,
    /// Its partition.
    pub partition: i32,
    /// Its last event time judged, UTC ms, for the log.
    #[serde(default)]
    pub through_ms: Option<i64>,
}

fn carry_path(root: &Path) -> PathBuf {
    root.join("_vigil").join("carry.json")
}

/// Leaves `carry` for the next new source of this archive: a daily or rotated log's agents keep their
/// baselines from one file to the next (and into a later HTTP intake), rather than warming up again.
/// The last source to finish wins.
pub fn write_carry(root: &Path, carry: &Carry) -> Result<(), ArchiveError> {
    write_json(root, &carry_path(root), carry)
}

/// The source [`write_carry`] named and the state its checkpoint holds, if any.
pub fn read_carry(root: &Path) -> Result<Option<(Carry, State)>, ArchiveError> {
    let path = carry_path(root);
    let carry: Carry = match fs::read(&path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes).map_err(|source| ArchiveError::Checkpoint { path, source })?
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(ArchiveError::Io { path, source: e }),
    };
    let state = read_checkpoint(root, &carry.source, carry.partition)?.map(|c| c.state);
    Ok(state.filter(|s| !is_no_state(s)).map(|s| (carry, s)))
}

/// Writes `value` as JSON at `path`: temporary file, fsync, rename, fsync of the directory.
fn write_json(root: &Path, path: &Path, value: &impl Serialize) -> Result<(), ArchiveError> {
    write_file_durably(root, path, |w| serde_json::to_writer(w, value).map_err(io::Error::from))
}

/// Writes a file through `write` under a temporary name, syncs it, and renames it into place: a reader
/// sees the old file or the whole new one.
fn write_file_durably(
    root: &Path,
    path: &Path,
    write: impl FnOnce(&mut dyn io::Write) -> io::Result<()>,
) -> Result<(), ArchiveError> {
    let path = path.to_owned();
    let tmp = tmp_path(&path);
    {
        let f = File::create(&tmp).map_err(io_err(&tmp))?;
        let mut w = io::BufWriter::with_capacity(1 << 20, f);
        write(&mut w).map_err(io_err(&tmp))?;
        let f = w.into_inner().map_err(|e| e.into_error()).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, &path).map_err(io_err(&path))?;
    sync_dir(path.parent().unwrap_or(root))
}

/// Parses `<source>-<partition>-<first>-<last>.parquet` (the source may itself contain `-`).
pub fn parse_file_name(name: &str) -> Option<(&str, i32, u64, u64)> {
    let stem = name.strip_suffix(".parquet")?;
    let mut parts = stem.rsplitn(4, '-');
    let last = parts.next()?.parse().ok()?;
    let first = parts.next()?.parse().ok()?;
    let partition = parts.next()?.parse().ok()?;
    let source = parts.next()?;
    Some((source, partition, first, last))
}

/// Every file (final or temporary) under the archive's tables, with the table it is in.
pub fn archive_files(root: &Path) -> Result<Vec<PathBuf>, ArchiveError> {
    let mut out = Vec::new();
    for table in TABLES {
        walk(&root.join(table), &mut out)?;
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ArchiveError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(ArchiveError::Io { path: dir.to_owned(), source: e }),
    };
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        if entry.file_type().map_err(io_err(&path))?.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// The final (not temporary) files of one source partition, in every table.
fn final_files(root: &Path, source: &str, partition: i32) -> Result<Vec<PathBuf>, ArchiveError> {
    let mut out: Vec<PathBuf> = archive_files(root)?
        .into_iter()
        .filter(|path| {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            matches!(parse_file_name(&name), Some((s, p, _, _)) if s == source && p == partition)
        })
        .collect();
    out.sort();
    Ok(out)
}

/// Removes this source partition's temporary files and the files of flushes past `committed`.
fn remove_uncommitted(
    root: &Path,
    source: &str,
    partition: i32,
    committed: u64,
    base: u64,
) -> Result<(), ArchiveError> {
    let ours =
        |name: &str| matches!(parse_file_name(name), Some((s, p, _, _)) if s == source && p == partition);
    for path in archive_files(root)? {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // A temporary file is `.<final name>.tmp`; its final name says whose it is (a prefix match would
        // take source `a-0`'s temporary files for source `a`'s).
        let orphan = match name.strip_prefix('.').and_then(|n| n.strip_suffix(".tmp")) {
            Some(final_name) => ours(final_name),
            None => {
                matches!(parse_file_name(&name), Some((s, p, first, _)) if s == source && p == partition && first + base > committed)
            }
        };
        if orphan {
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// Takes the source partition's lock, and writes who holds it into the lock file for the next one to
/// read; refuses, saying who holds it, when another open file (another process, or another lane of this
/// one) has it.
fn lock_source(root: &Path, source: &str, partition: i32) -> Result<File, ArchiveError> {
    let dir = root.join("_vigil/locks");
    fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    let path = dir.join(format!("{source}-{partition}.lock"));
    crate::lockfile::take(&path).map_err(io_err(&path))?.map_err(|holder| ArchiveError::Busy {
        root: root.to_owned(),
        source_name: source.to_owned(),
        partition,
        holder: if holder.is_empty() { "by another vigil".into() } else { holder },
    })
}

//! `[archive]` in vigil.toml.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Archive settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveConfig {
    /// Root directory of the archive (`events/`, `findings/`, `control/`, `dead-letters/` beneath it).
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// Flush (write files and commit) once this many rows are buffered, all tables together.
    #[serde(default = "default_flush_rows")]
    pub flush_rows: usize,
    /// Flush once the buffered rows would make this many files (one per table and event-time directory
    /// touched). A live stream's flush touches a few; a replay of history spread thin touches an hour
    /// or a day every few events, and without this bound it would hold every hour of a long replay in
    /// memory and write them all at its end, with nothing else to overlap the writing.
    #[serde(default = "default_flush_files")]
    pub flush_files: usize,
    /// Rows of one table and directory that go to the writer thread as soon as they are buffered, to be
    /// encoded into that directory's file while the input is still read; the file is finished (and
    /// named, and made durable) at the flush as before. Such a file is packed (`compress_min_rows`,
    /// `zstd_min_rows`) by the rows of its first part. 0 hands everything over at the flush.
    #[serde(default = "default_part_rows")]
    pub part_rows: usize,
    /// Flush at least this often, in seconds, while input keeps arriving (so a slow stream is archived
    /// promptly).
    #[serde(default = "default_flush_seconds")]
    pub flush_seconds: f64,
    /// zstd level for Parquet pages (1–22); 3 is zstd's own default balance of speed and size.
    #[serde(default = "default_zstd_level")]
    pub zstd_level: i32,
    /// zstd level for the columns of random identifiers, `trace_id` and `span_id` (W3C trace context
    /// makes both random hex). zstd's match finder, most of the work at higher levels, finds nothing
    /// to match in random bytes; their gain is entropy coding, which level 1 does as well as any. On a
    /// simulated fleet of a million events those two columns were 5-7% smaller at level 1 than at 3
    /// and the whole run took 7% less CPU. Set it to `zstd_level` to compress them like the rest.
    #[serde(default = "default_random_id_zstd_level")]
    pub random_id_zstd_level: i32,
    /// A file with fewer rows than this is written without compression: zstd's per-column setup costs
    /// more than it saves on a handful of rows (a replay of sparse history writes many such files), and
    /// readers do not care. Such files are written straight from the Arrow arrays (`small.rs`: the bytes
    /// Parquet's writer would write, for a tenth of its CPU). 0 compresses every file.
    #[serde(default = "default_compress_min_rows")]
    pub compress_min_rows: usize,
    /// A compressed file with fewer rows than this is compressed with Snappy rather than zstd: zstd's
    /// setup (two contexts per column) is over a millisecond per file, more than a few hundred rows'
    /// worth of its gain over Snappy, which costs nothing to set up. 0 uses zstd for every compressed
    /// file. Every Parquet reader reads both.
    #[serde(default = "default_zstd_min_rows")]
    pub zstd_min_rows: usize,
    /// A flush writing more files than this makes them durable with two file-system syncs (`syncfs`:
    /// before the renames and after) instead of one fsync per file and directory, so the cost of
    /// durability follows flushes, not files. Linux only; elsewhere every file is fsynced.
    #[serde(default = "default_sync_files_each_up_to")]
    pub sync_files_each_up_to: usize,
    /// Threads writing a flush's files: many files (a replay of sparse history: thousands of a few rows,
    /// each mostly the file system's cost of making a file) are shared out to them, and a few big ones have their columns
    /// encoded on them (the last flush of an input, with the lane idle). 1 writes everything in order on
    /// the writer thread.
    #[serde(default = "default_write_threads")]
    pub write_threads: usize,
    /// How event time splits the archive into directories: `hour` (`dt=…/hour=…/`, the default, for
    /// live streams queried by the hour) or `day` (`dt=…/`, for replays of history spread thin over
    /// months, which would otherwise write a file of a few rows per hour touched). Keep one setting per
    /// archive: readers that infer hive partitions want one layout.
    #[serde(default)]
    pub partition: Partitioning,
    /// Text columns whose min/max statistics are written, in every table that has them. A reader skips
    /// a file or row group by its statistics only where a column's values cluster there: event ids
    /// (usually issued in order), agent ids (a source, e.g. a Kafka partition keyed by agent, often
    /// carries a subset of agents), finding and transition ids. The other text columns (actions,
    /// resources, intents, trace ids...) span their whole range in every row group, so their statistics
    /// let no reader skip anything, and computing them costs Parquet's writer a comparison of every
    /// value: 5.8% of a run's instructions for the text columns left out by default. Numbers and times
    /// always have statistics, and so does every column of a file under `compress_min_rows` (written
    /// straight, where they cost nothing to speak of). Add a column to have its statistics written
    /// (e.g. `session_id` where session ids are issued in order).
    #[serde(default = "default_text_statistics")]
    pub text_statistics: Vec<String>,
}

/// The directory granularity of the archive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Partitioning {
    /// `dt=YYYY-MM-DD/hour=HH/`.
    #[default]
    Hour,
    /// `dt=YYYY-MM-DD/`.
    Day,
}

impl Partitioning {
    /// The span of one directory, in milliseconds.
    pub const fn span_ms(self) -> i64 {
        match self {
            Partitioning::Hour => 3_600_000,
            Partitioning::Day => 86_400_000,
        }
    }
}

fn default_dir() -> PathBuf {
    PathBuf::from("vigil-archive")
}
/// 250k rows make files of a few tens of MB: large enough for scan speed, small enough to flush often.
pub const fn default_flush_rows() -> usize {
    250_000
}
/// About a second of a replay's file writing on two threads: a flush's files are written while the
/// next ones are read and judged, and the rows held meanwhile stay a small share of memory.
pub const fn default_flush_files() -> usize {
    1_000
}
/// A few tens of MB of Arrow: the writer starts on a flush's largest files a quarter of the way into
/// it, and the flush waits only for the rows after the last part.
pub const fn default_part_rows() -> usize {
    65_536
}
/// Ten seconds bounds how stale the archive can be behind a trickle of events.
pub const fn default_flush_seconds() -> f64 {
    10.0
}
/// zstd's own default level.
pub const fn default_zstd_level() -> i32 {
    3
}

/// See [`ArchiveConfig::random_id_zstd_level`].
pub const fn default_random_id_zstd_level() -> i32 {
    1
}

/// Measured on a two-year replay: files of a few rows cost over a millisecond of CPU each in zstd
/// context setup (a compressor and decompressor per column), several times their encoding.
pub const fn default_compress_min_rows() -> usize {
    64
}
/// Measured on the same replay (a file a day, about 270 rows each): Snappy instead of zstd took the
/// replay from 2.0 to 1.1 s for 1.4 times the bytes.
pub const fn default_zstd_min_rows() -> usize {
    1_000
}
/// The usual flush of a live stream touches a few hours of a few tables: fsync each, disturbing nothing
/// else on the file system; a history replay touching hundreds syncs the file system twice instead.
pub const fn default_sync_files_each_up_to() -> usize {
    16
}

/// The ids whose values cluster by file or row group: see [`ArchiveConfig::text_statistics`].
pub fn default_text_statistics() -> Vec<String> {
    ["event_id", "agent_id", "finding_id", "transition_id"].map(str::to_owned).to_vec()
}

/// Both cores of a small machine: the pipeline is waiting for the flush anyway.
pub const fn default_write_threads() -> usize {
    2
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        ArchiveConfig {
            dir: default_dir(),
            flush_rows: default_flush_rows(),
            flush_files: default_flush_files(),
            part_rows: default_part_rows(),
            flush_seconds: default_flush_seconds(),
            zstd_level: default_zstd_level(),
            random_id_zstd_level: default_random_id_zstd_level(),
            compress_min_rows: default_compress_min_rows(),
            zstd_min_rows: default_zstd_min_rows(),
            sync_files_each_up_to: default_sync_files_each_up_to(),
            write_threads: default_write_threads(),
            partition: Partitioning::Hour,
            text_statistics: default_text_statistics(),
        }
    }
}

/// An archive setting out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ArchiveConfigError {
    /// `flush_rows` is zero.
    #[error("archive.flush_rows must be at least 1")]
    FlushRows,
    /// `flush_files` is zero.
    #[error("archive.flush_files must be at least 1")]
    FlushFiles,
    /// `flush_seconds` is not a positive number.
    #[error("archive.flush_seconds must be a positive number of seconds, got {0}")]
    FlushSeconds(f64),
    /// `write_threads` is zero.
    #[error("archive.write_threads must be at least 1")]
    WriteThreads,
    /// A name in `text_statistics` that is no text column of any table.
    #[error("archive.text_statistics: {got:?} is not a text column of the archive (text columns: {known})")]
    TextStatistics {
        /// The name given.
        got: String,
        /// The text columns, comma-separated.
        known: String,
    },
    /// A zstd level (`zstd_level`, `random_id_zstd_level`, named) outside 1–22.
    #[error("archive.{key} must be between 1 and 22, got {got}")]
    ZstdLevel {
        /// The setting.
        key: &'static str,
        /// Its value.
        got: i32,
    },
}

impl ArchiveConfig {
    /// Checks every value.
    pub fn validate(&self) -> Result<(), ArchiveConfigError> {
        if self.flush_rows == 0 {
            return Err(ArchiveConfigError::FlushRows);
        }
        if self.flush_files == 0 {
            return Err(ArchiveConfigError::FlushFiles);
        }
        if !(self.flush_seconds.is_finite() && self.flush_seconds > 0.0) {
            return Err(ArchiveConfigError::FlushSeconds(self.flush_seconds));
        }
        if self.write_threads == 0 {
            return Err(ArchiveConfigError::WriteThreads);
        }
        for (key, got) in
            [("zstd_level", self.zstd_level), ("random_id_zstd_level", self.random_id_zstd_level)]
        {
            if !(1..=22).contains(&got) {
                return Err(ArchiveConfigError::ZstdLevel { key, got });
            }
        }
        let known = super::text_columns();
        if let Some(got) = self.text_statistics.iter().find(|c| !known.contains(c)) {
            return Err(ArchiveConfigError::TextStatistics { got: got.clone(), known: known.join(", ") });
        }
        Ok(())
    }
}

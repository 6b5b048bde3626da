//! Reading the archive back: the `events/` table's files, projected to the columns a caller needs. Used
//! by `vigil audit` and by pipelines remembering recent event_ids on restart; analysts use DuckDB or
//! pyarrow on the same files.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::{Array, RecordBatch, StringArray, UInt64Array};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{ArchiveError, archive_files, parse_file_name};

/// Final (not temporary) Parquet files of one table, in path order.
pub fn table_files(root: &Path, table: &str) -> Result<Vec<PathBuf>, ArchiveError> {
    let mut files: Vec<PathBuf> = archive_files(root)?
        .into_iter()
        .filter(|p| p.strip_prefix(root).is_ok_and(|rel| rel.starts_with(table)))
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort();
    Ok(files)
}

/// Calls `each` with every record batch of `table`, holding only `columns`, and `read(done, total)` after
/// each file (for a progress display). Returns the files read.
pub fn scan_table(
    root: &Path,
    table: &str,
    columns: &[&str],
    mut each: impl FnMut(&RecordBatch),
    mut read: impl FnMut(usize, usize),
) -> Result<usize, ArchiveError> {
    let files = table_files(root, table)?;
    for (i, path) in files.iter().enumerate() {
        read_columns(path, open_file(path)?, columns, |batch| {
            each(batch);
            Ok(())
        })?;
        read(i + 1, files.len());
    }
    Ok(files.len())
}

/// One archive file, its footer read (row counts, schema), ready to read.
fn open_file(path: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>, ArchiveError> {
    let file = File::open(path).map_err(|source| ArchiveError::Io { path: path.to_owned(), source })?;
    ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|source| ArchiveError::Read { path: path.to_owned(), source })
}

/// Calls `each` with every record batch of an opened file, holding only `columns`.
fn read_columns(
    path: &Path,
    file: ParquetRecordBatchReaderBuilder<File>,
    columns: &[&str],
    mut each: impl FnMut(&RecordBatch) -> Result<(), ArchiveError>,
) -> Result<(), ArchiveError> {
    let read_err = |source| ArchiveError::Read { path: path.to_owned(), source };
    let mask = ProjectionMask::columns(file.parquet_schema(), columns.iter().copied());
    let reader = file.with_projection(mask).with_batch_size(64 * 1024).build().map_err(read_err)?;
    for batch in reader {
        each(&batch.map_err(|e| read_err(e.into()))?)?;
    }
    Ok(())
}

/// Feeds `each` the agent_id, event_id and position (as the source numbers it: the archive's `_position` plus
/// `base`) of at least the last `want` events archived from one source partition, oldest file first.
/// Only the newest files are read: their footers' row counts say how many are needed. This is how a
/// restarted pipeline remembers what it already took, so a resend across the restart is refused as it
/// would be in one uninterrupted run. Returns the rows fed.
pub fn recent_event_ids(
    root: &Path,
    source: &str,
    partition: i32,
    base: u64,
    want: usize,
    mut each: impl FnMut(&str, &str, u64),
) -> Result<usize, ArchiveError> {
    if want == 0 {
        return Ok(0);
    }
    let mut files: Vec<(u64, u64, PathBuf)> = table_files(root, "events")?
        .into_iter()
        .filter_map(|p| {
            let (s, part, first, last) = parse_file_name(p.file_name()?.to_str()?)?;
            (s == source && part == partition).then_some((last, first, p))
        })
        .collect();
    files.sort();
    // Newest first, until their rows cover `want`.
    let mut chosen = Vec::new();
    let mut rows = 0usize;
    for (_, _, path) in files.iter().rev() {
        let file = open_file(path)?;
        rows += file.metadata().file_metadata().num_rows() as usize;
        chosen.push((path, file));
        if rows >= want {
            break;
        }
    }
    let mut fed = 0;
    for (path, file) in chosen.into_iter().rev() {
        read_columns(path, file, &["agent_id", "event_id", "_position"], |batch| {
            let text =
                |name| batch.column_by_name(name).and_then(|c| c.as_any().downcast_ref::<StringArray>());
            let positions =
                batch.column_by_name("_position").and_then(|c| c.as_any().downcast_ref::<UInt64Array>());
            let (Some(agents), Some(ids), Some(positions)) = (text("agent_id"), text("event_id"), positions)
            else {
                return Err(ArchiveError::Io {
                    path: path.clone(),
                    source: std::io::Error::other(
                        "no agent_id, event_id or _position column of the archive's types",
                    ),
                });
            };
            for i in 0..batch.num_rows() {
                each(agents.value(i), ids.value(i), positions.value(i) + base);
            }
            fed += batch.num_rows();
            Ok(())
        })?;
    }
    Ok(fed)
}

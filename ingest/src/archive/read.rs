//! Reading the archive back: the `events/` table's files, projected to the columns a caller needs. Used
//! by `vigil audit`; analysts use DuckDB or pyarrow on the same files.

use std::fs::File;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::{ArchiveError, archive_files};

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

/// Calls `each` with every record batch of `table`, holding only `columns`. Returns the files read.
pub fn scan_table(
    root: &Path,
    table: &str,
    columns: &[&str],
    mut each: impl FnMut(&RecordBatch),
) -> Result<usize, ArchiveError> {
    let files = table_files(root, table)?;
    for path in &files {
        let read_err = |source| ArchiveError::Read { path: path.clone(), source };
        let file = File::open(path).map_err(|source| ArchiveError::Io { path: path.clone(), source })?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(read_err)?;
        let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
        let reader = builder.with_projection(mask).with_batch_size(64 * 1024).build().map_err(read_err)?;
        for batch in reader {
            let batch = batch.map_err(|e| read_err(e.into()))?;
            each(&batch);
        }
    }
    Ok(files.len())
}

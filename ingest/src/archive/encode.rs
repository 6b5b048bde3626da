//! One Parquet file whose columns are encoded on several threads.
//!
//! `ArrowWriter` encodes a file's columns one after another on the calling thread. A flush's last big
//! file (the rows of the hour the input ended in) was then the only work left, on one core, with the
//! other idle: the tail of every `vigil run`, and the wait before a Kafka member commits. The columns of
//! a row group are independent until they are spliced into the file in order, so [`FileEncoder`] hands
//! them out to threads and splices them as `ArrowWriter` does: the file is the same, byte for byte,
//! whatever the thread count (`a_file_encoded_on_threads_is_what_arrow_writer_writes`).

use std::io::Write;

use arrow_array::RecordBatch;
use arrow_schema::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_writer::{
    ArrowColumnWriter, ArrowLeafColumn, ArrowRowGroupWriterFactory, ArrowWriterOptions, compute_leaves,
};
use parquet::errors::Result;
use parquet::file::writer::SerializedFileWriter;

/// Batches of fewer rows are encoded on the calling thread: a thread costs tens of microseconds to
/// start, about what a few thousand rows take to encode.
const PARALLEL_MIN_ROWS: usize = 4_096;

/// A Parquet file being written: `ArrowWriter`'s row groups (cut at the properties'
/// `max_row_group_row_count`), each call saying on how many threads its columns are encoded or closed.
/// Content-defined chunking and a row group byte limit are not supported (the archive sets neither).
pub(super) struct FileEncoder<W: Write + Send> {
    file: SerializedFileWriter<W>,
    factory: ArrowRowGroupWriterFactory,
    schema: SchemaRef,
    /// The open row group's column writers, made when its first rows come.
    columns: Vec<ArrowColumnWriter>,
    /// Rows in the open row group.
    rows: usize,
    max_rows: usize,
}

impl<W: Write + Send> std::fmt::Debug for FileEncoder<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileEncoder").field("rows", &self.rows).finish_non_exhaustive()
    }
}

impl<W: Write + Send> FileEncoder<W> {
    /// Starts a file on `sink` with `ArrowWriter`'s handling of `options` (its schema, prepared or
    /// worked out, and its metadata).
    pub(super) fn new(sink: W, schema: SchemaRef, options: ArrowWriterOptions) -> Result<Self> {
        let (file, factory) =
            ArrowWriter::try_new_with_options(sink, schema.clone(), options)?.into_serialized_writer()?;
        let max_rows = file.properties().max_row_group_row_count().unwrap_or(usize::MAX).max(1);
        Ok(FileEncoder { file, factory, schema, columns: Vec::new(), rows: 0, max_rows })
    }

    /// Encodes a batch's rows into the open row group on up to `threads` threads, closing the group
    /// (and opening the next) each time it reaches the row limit.
    pub(super) fn write(&mut self, batch: &RecordBatch, threads: usize) -> Result<()> {
        let mut at = 0;
        while at < batch.num_rows() {
            if self.columns.is_empty() {
                self.columns = self.factory.create_column_writers(self.file.flushed_row_groups().len())?;
            }
            let take = (self.max_rows - self.rows).min(batch.num_rows() - at);
            let rows = batch.slice(at, take);
            // Each leaf with about how much work it is to encode: the bytes of its column's values.
            let mut leaves = Vec::with_capacity(self.columns.len());
            for (field, column) in self.schema.fields().iter().zip(rows.columns()) {
                let of_column = compute_leaves(field, column)?;
                let weight = column.get_array_memory_size() / of_column.len().max(1);
                leaves.extend(of_column.into_iter().map(|leaf| (leaf, weight)));
            }
            let on = if take < PARALLEL_MIN_ROWS { 1 } else { threads };
            let work: Vec<_> = self
                .columns
                .iter_mut()
                .zip(&leaves)
                .map(|(writer, (leaf, weight))| ((writer, leaf), *weight))
                .collect();
            spread(work, on, |(writer, leaf): (&mut ArrowColumnWriter, &ArrowLeafColumn)| writer.write(leaf))
                .into_iter()
                .collect::<Result<()>>()?;
            self.rows += take;
            at += take;
            if self.rows == self.max_rows {
                self.close_row_group(threads)?;
            }
        }
        Ok(())
    }

    /// Closes the open row group's columns (on threads, for a big one) and splices them into the file in
    /// column order.
    fn close_row_group(&mut self, threads: usize) -> Result<()> {
        if self.columns.is_empty() {
            return Ok(());
        }
        let threads = if self.rows < PARALLEL_MIN_ROWS { 1 } else { threads };
        let work: Vec<_> = std::mem::take(&mut self.columns)
            .into_iter()
            .map(|writer| {
                let weight = writer.get_estimated_total_bytes();
                (writer, weight)
            })
            .collect();
        let chunks = spread(work, threads, ArrowColumnWriter::close);
        let mut group = self.file.next_row_group()?;
        for chunk in chunks {
            chunk?.append_to_row_group(&mut group)?;
        }
        group.close()?;
        self.rows = 0;
        Ok(())
    }

    /// Closes the last row group on up to `threads` threads, writes the footer and hands back the sink.
    pub(super) fn finish(mut self, threads: usize) -> Result<W> {
        self.close_row_group(threads)?;
        self.file.into_inner()
    }
}

/// Runs `f` on every item on up to `threads` threads (the calling one among them), handing the items out
/// heaviest first to the least loaded thread; the results come back in the items' order, so what is
/// made of them does not depend on the thread count.
pub(super) fn spread<T: Send, R: Send>(
    items: Vec<(T, usize)>,
    threads: usize,
    f: impl Fn(T) -> R + Sync,
) -> Vec<R> {
    let threads = threads.clamp(1, items.len().max(1));
    if threads == 1 {
        return items.into_iter().map(|(item, _)| f(item)).collect();
    }
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(items[i].1));
    let mut load = vec![0usize; threads];
    let mut share_of = vec![0usize; items.len()];
    for i in order {
        let least = (0..threads).min_by_key(|&t| load[t]).unwrap_or(0);
        load[least] += items[i].1.max(1);
        share_of[i] = least;
    }
    let mut shares: Vec<Vec<(usize, T)>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, (item, _)) in items.into_iter().enumerate() {
        shares[share_of[i]].push((i, item));
    }
    let f = &f;
    let run =
        move |share: Vec<(usize, T)>| share.into_iter().map(|(i, item)| (i, f(item))).collect::<Vec<_>>();
    let mut done: Vec<(usize, R)> = std::thread::scope(|s| {
        let mine = shares.pop().unwrap_or_default();
        let handles: Vec<_> = shares.into_iter().map(|share| s.spawn(move || run(share))).collect();
        let mut done = run(mine);
        for h in handles {
            done.extend(h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
        }
        done
    });
    done.sort_unstable_by_key(|&(i, _)| i);
    done.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use parquet::basic::{Compression, ZstdLevel};
    use parquet::file::properties::WriterProperties;

    use super::*;
    use crate::archive::{EventColumns, Origin, Table};

    /// `rows` events of a few agents, actions and resources, some fields left out.
    fn events(rows: usize, first: u64) -> RecordBatch {
        let mut t = EventColumns::default();
        let origin = Origin { source: "enc", partition: 0, ingested_at: 7 };
        for i in first..first + rows as u64 {
            let bytes = if i % 3 == 0 { format!(r#","bytes_read":{}"#, i * 31) } else { String::new() };
            let line = format!(
                r#"{{"event_id":"e-{i}","ts":{},"agent_id":"agent-{}","action":"act.{}","resource":"db://t/{}"{bytes}}}"#,
                1_700_000_000_000 + i as i64 * 17,
                i % 37,
                i % 5,
                i % 101
            );
            t.push(&vigil_schemas::decode(line.as_bytes(), 1024).unwrap(), origin, i);
        }
        t.finish()
    }

    /// The row groups of a file written column by column on threads are ArrowWriter's, byte for byte:
    /// batches that cross the row group limit are cut where ArrowWriter cuts them, and every column is
    /// spliced in its place whatever thread encoded it.
    #[test]
    fn a_file_encoded_on_threads_is_what_arrow_writer_writes() {
        let batches = [events(4_500, 0), events(7_000, 4_500), events(10, 11_500)];
        let schema = batches[0].schema();
        for compression in [Compression::UNCOMPRESSED, Compression::ZSTD(ZstdLevel::default())] {
            let props = WriterProperties::builder()
                .set_compression(compression)
                .set_max_row_group_row_count(Some(5_000))
                .build();
            let options = || ArrowWriterOptions::new().with_properties(props.clone());
            let mut arrow = ArrowWriter::try_new_with_options(Vec::new(), schema.clone(), options()).unwrap();
            for b in &batches {
                arrow.write(b).unwrap();
            }
            let want = arrow.into_inner().unwrap();
            let file = tempfile::tempfile().unwrap();
            (&file).write_all(&want).unwrap();
            let reader = parquet::file::reader::SerializedFileReader::new(file).unwrap();
            let groups = parquet::file::reader::FileReader::metadata(&reader).num_row_groups();
            assert_eq!(groups, 3, "11,510 rows in groups of up to 5,000");
            for threads in [1, 2, 3] {
                let mut enc = FileEncoder::new(Vec::new(), schema.clone(), options()).unwrap();
                for b in &batches {
                    enc.write(b, threads).unwrap();
                }
                let got = enc.finish(threads).unwrap();
                assert!(
                    got == want,
                    "{compression:?} on {threads} threads: {} bytes, want {}",
                    got.len(),
                    want.len()
                );
            }
        }
    }

    /// Work handed out to threads comes back in the items' order, each item done once, whatever the
    /// thread count and the weights.
    #[test]
    fn spread_gives_back_every_result_in_order() {
        for threads in 1..=4 {
            for n in [0, 1, 2, 7, 30] {
                let items: Vec<(usize, usize)> = (0..n).map(|i| (i, (i * 7919) % 13)).collect();
                let done = spread(items, threads, |i| {
                    std::thread::yield_now();
                    i * 10
                });
                assert_eq!(
                    done,
                    (0..n).map(|i| i * 10).collect::<Vec<_>>(),
                    "{n} items on {threads} threads"
                );
            }
        }
        // The work really is shared: two items of equal weight run on two threads at once.
        let barrier = std::sync::Barrier::new(2);
        let done = spread(vec![(0, 1), (1, 1)], 2, |i| {
            barrier.wait();
            i
        });
        assert_eq!(done, [0, 1]);
    }
}

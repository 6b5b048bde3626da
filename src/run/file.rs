//! The file driver (`vigil run` on a file or stdin): reads chunks of whole lines and hands each to the
//! source's lane until the input ends.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use vigil_ingest::source::{Chunk, LineReader, Lingering, open_input};
use vigil_schemas::Invalid;

use crate::config::VigilConfig;
use crate::control::Control;
use crate::pipeline::{
    Decoded, Decoder, FindingsFile, Item, Lane, Origin, PipelineError, RunOptions, Spare, Summary, now_ms,
};
use crate::progress::Progress;
use crate::telemetry::{Stage, Telemetry};

/// Runs the whole pipeline over the configured input until it ends.
pub fn run(cfg: &VigilConfig, opts: &RunOptions) -> Result<Summary, PipelineError> {
    let telemetry = Arc::new(Telemetry::new());
    let control = Control::open(cfg, telemetry.clone())?;
    run_with(cfg, opts, telemetry, control)
}

/// [`run`], counting into `telemetry` (which a server beside the run may expose).
pub fn run_with(
    cfg: &VigilConfig,
    opts: &RunOptions,
    telemetry: Arc<Telemetry>,
    control: Arc<Control>,
) -> Result<Summary, PipelineError> {
    let started = Instant::now();
    let path = cfg.input.path.clone().ok_or(PipelineError::NoInput)?;
    let mut input = open_input(&path)?;
    // A pipe may trickle: hand over what came after `batch_timeout_ms` rather than wait for a full batch,
    // and say when it is quiet, so that what was taken is flushed on time (`flush_seconds`) rather than
    // with the next line, which may come hours later.
    let lingering = path == Path::new("-") && cfg.input.batch_timeout_ms > 0;
    if lingering {
        let linger = std::time::Duration::from_millis(cfg.input.batch_timeout_ms);
        let idle = std::time::Duration::from_secs_f64(cfg.archive.flush_seconds.clamp(0.05, 1.0));
        let reader = std::mem::replace(&mut input.reader, Box::new(std::io::empty()));
        input.reader = Box::new(
            Lingering::new(reader, linger, idle)
                .map_err(|source| PipelineError::Read { path: path.clone(), source })?,
        );
    }
    let source = match (&cfg.input.source_name, path == Path::new("-")) {
        (Some(name), _) => name.clone(),
        (None, true) => format!("stdin-{}", now_ms()),
        (None, false) => input.name.clone(),
    };
    let outputs = FindingsFile::open(cfg.output.findings.as_deref())?;
    let mut lane =
        Lane::open(cfg, Origin::Named(source.clone()), outputs, telemetry.clone(), control.clone())?;
    lane.counting("line");
    let reader =
        LineReader::new(input.reader, cfg.input.max_event_bytes, cfg.input.dead_letter_payload_bytes);
    let mut progress = Progress::new(opts.progress, "ingest", input.size);
    let (mut read, mut lines) = (0, 0);
    // A damaged input (a truncated .gz) is archived up to the damage and its tail dead-lettered; the run
    // then fails, so a script notices, and a rerun archives nothing twice.
    let mut unreadable = None;
    let ahead = ReadAhead::spawn(reader, lane.decoder(), cfg.input.batch_bytes, lingering)?;
    lane.decoded_ahead();
    for read_ahead in ahead.batches.iter() {
        let batch = match read_ahead {
            Ahead::Batch(batch) => batch,
            // A quiet pipe: what is due is flushed, and the wait goes on.
            Ahead::Quiet => {
                if lane.due() {
                    lane.flush(None)?;
                }
                continue;
            }
            Ahead::Failed { source, offset } => {
                let reason = Invalid::Unreadable { offset, detail: source.to_string() };
                lane.dead_letter_unreadable(lines + 1, reason);
                unreadable = Some(PipelineError::Read { path: path.clone(), source });
                break;
            }
        };
        let Batch { mut chunk, bytes_read, decode_seconds } = batch;
        if lines == 0
            && let Some(first) = chunk.borrow_owner().lines.first()
        {
            lane.check_input(chunk.borrow_owner().bytes(first))?;
        }
        telemetry.stage(Stage::Classify, decode_seconds);
        lines += chunk.with_dependent_mut(|_, (items, decoded)| {
            lane.take_decoded(items, decoded, now_ms()).map(|taken| taken.len() as u64)
        })?;
        telemetry.add_input_bytes(bytes_read - read);
        read = bytes_read;
        let spare = chunk.with_dependent_mut(|_, (_, decoded)| decoded.spare());
        ahead.recycle(chunk.into_owner(), spare);
        if lane.due() {
            lane.flush(None)?;
        }
        progress.update(input.consumed.load(std::sync::atomic::Ordering::Relaxed), lines, started.elapsed());
    }
    if unreadable.is_none() {
        lane.finish()?;
    }
    // The webhooks this run decided go out before it exits (within the grace); what is left stays owed
    // in the control log for the next start. Their outcomes are archived by the last flush.
    control.close(Duration::from_secs_f64(cfg.control.delivery_grace_seconds))?;
    lane.close()?;
    if let Some(e) = unreadable {
        return Err(e);
    }
    progress.finish();
    let mut summary = telemetry.summary(&source);
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// The items of a chunk of lines (a file has no senders: every claim is open).
fn items_of(chunk: &Chunk) -> Vec<Item<'_>> {
    chunk
        .lines
        .iter()
        .map(|line| Item {
            bytes: chunk.bytes(line),
            size: line.oversize.unwrap_or((line.end - line.start) as u64),
            position: line.position,
            refused_before: None,
            claim: Default::default(),
        })
        .collect()
}

/// A chunk's items and what decoding made of them, both borrowing the chunk's bytes.
type ItemsDecoded<'a> = (Vec<Item<'a>>, Decoded<'a>);

self_cell::self_cell!(
    /// A chunk of whole lines with its items and their decoding.
    struct DecodedChunk {
        owner: Chunk,
        #[covariant]
        dependent: ItemsDecoded,
    }
);

/// A chunk read and decoded ahead.
struct Batch {
    chunk: DecodedChunk,
    /// The reader's position in the decompressed stream after this chunk.
    bytes_read: u64,
    decode_seconds: f64,
}

/// What the reading thread hands over.
enum Ahead {
    Batch(Batch),
    /// A lingering pipe paused before a whole line arrived.
    Quiet,
    /// Reading failed at `offset` of the decompressed stream; nothing more follows.
    Failed {
        source: std::io::Error,
        offset: u64,
    },
}

/// The reading thread: reads the next chunk of lines and decodes it (the pure part of classification)
/// while the lane judges and archives the last, so both cores work on a file. One chunk waits in the
/// channel besides the one being decoded, which bounds memory to three chunks; the lane gives chunks
/// back for reuse. The thread ends at the end of the input, at a read error, or when the lane stops
/// listening (an error on the lane's side), after the read in progress returns.
struct ReadAhead {
    batches: Receiver<Ahead>,
    recycled: Sender<(Chunk, Spare)>,
}

impl ReadAhead {
    fn spawn<R: Read + Send + 'static>(
        mut reader: LineReader<R>,
        decoder: Decoder,
        batch_bytes: usize,
        lingering: bool,
    ) -> Result<ReadAhead, PipelineError> {
        let (batches_tx, batches) = mpsc::sync_channel(1);
        let (recycled, spares) = mpsc::channel::<(Chunk, Spare)>();
        let read = move || {
            loop {
                let (mut chunk, spare) = spares.try_recv().unwrap_or_default();
                let next = match reader.next_chunk(&mut chunk, batch_bytes) {
                    Ok(false) => break,
                    Ok(true) => {
                        let started = Instant::now();
                        let chunk = DecodedChunk::new(chunk, |c| {
                            let items = items_of(c);
                            let decoded = decoder.decode_into(&items, spare);
                            (items, decoded)
                        });
                        let decode_seconds = started.elapsed().as_secs_f64();
                        Ahead::Batch(Batch { chunk, bytes_read: reader.bytes_read(), decode_seconds })
                    }
                    Err(e) if lingering && e.kind() == std::io::ErrorKind::TimedOut => Ahead::Quiet,
                    Err(source) => {
                        let _ = batches_tx.send(Ahead::Failed { source, offset: reader.bytes_read() });
                        break;
                    }
                };
                if batches_tx.send(next).is_err() {
                    break;
                }
            }
        };
        std::thread::Builder::new()
            .name("vigil-read".into())
            .spawn(read)
            .map_err(|source| PipelineError::Read { path: "(reading thread)".into(), source })?;
        Ok(ReadAhead { batches, recycled })
    }

    /// Gives a chunk's buffers, and those its decoding filled, back to the reading thread.
    fn recycle(&self, chunk: Chunk, spare: Spare) {
        // The thread may have ended (the input did): they are then dropped.
        let _ = self.recycled.send((chunk, spare));
    }
}

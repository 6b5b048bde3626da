//! The file driver (`vigil run` on a file or stdin): reads chunks of whole lines and hands each to the
//! source's lane until the input ends.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vigil_ingest::source::{Chunk, LineReader, Lingering, open_input};
use vigil_schemas::Invalid;

use crate::config::VigilConfig;
use crate::control::Control;
use crate::pipeline::{FindingsFile, Item, Lane, Origin, PipelineError, RunOptions, Summary, now_ms};
use crate::progress::Progress;
use crate::telemetry::Telemetry;

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
    let mut reader =
        LineReader::new(input.reader, cfg.input.max_event_bytes, cfg.input.dead_letter_payload_bytes);
    let mut progress = Progress::new(opts.progress, "ingest", input.size);
    let mut chunk = Chunk::default();
    let (mut read, mut lines) = (0, 0);
    // A damaged input (a truncated .gz) is archived up to the damage and its tail dead-lettered; the run
    // then fails, so a script notices, and a rerun archives nothing twice.
    let mut unreadable = None;
    loop {
        let more = match reader.next_chunk(&mut chunk, cfg.input.batch_bytes) {
            Ok(more) => more,
            // A quiet pipe: what is due is flushed, and the wait goes on.
            Err(e) if lingering && e.kind() == std::io::ErrorKind::TimedOut => {
                if lane.due() {
                    lane.flush(None)?;
                }
                continue;
            }
            Err(source) => {
                let reason = Invalid::Unreadable { offset: reader.bytes_read(), detail: source.to_string() };
                lane.dead_letter_unreadable(lines + 1, reason);
                unreadable = Some(PipelineError::Read { path: path.clone(), source });
                false
            }
        };
        if !more {
            break;
        }
        if lines == 0
            && let Some(first) = chunk.lines.first()
        {
            lane.check_input(chunk.bytes(first))?;
        }
        let items: Vec<Item<'_>> = chunk
            .lines
            .iter()
            .map(|line| Item {
                bytes: chunk.bytes(line),
                size: line.oversize.unwrap_or((line.end - line.start) as u64),
                position: line.position,
                refused_before: None,
                claim: Default::default(),
            })
            .collect();
        lane.take(&items, now_ms())?;
        lines += items.len() as u64;
        telemetry.add_input_bytes(reader.bytes_read() - read);
        read = reader.bytes_read();
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

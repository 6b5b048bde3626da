//! The lane: everything one source partition needs between its bytes and a durable archive.
//!
//! A lane owns, for one source partition (a file, stdin, `http`, one Kafka topic-partition, a replay),
//! the dedup window, the detection engine, the archive with its writer thread, and the fan-out of
//! findings and decisions. Drivers only hand it items and decide when to stop; the lane decides
//! everything else the same way for every source:
//!
//! - **open**: archive (recovered), checkpoint, detector state (the checkpoint's or, under Kafka, the
//!   state topic's when newer), dedup window seeded from the newest archive files;
//! - **take**: classify (decode, future bound, dedup) → judge → archive rows → fan out findings and
//!   decisions, counting per batch into the run's [`Telemetry`];
//! - **flush**: due on rows (`archive.flush_rows`) or seconds (`archive.flush_seconds`); the files and
//!   the checkpoint (with the detector state) are written by the lane's writer thread, one job in flight,
//!   in order, so checkpoints only move forward. A driver that must act after durability (a Kafka
//!   commit) waits on the same writer.
//!
//! Only the lane calls `Engine::process`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use vigil_detect::{DetectConfig, Engine, Output};
use vigil_ingest::archive::{
    Archive, ArchiveConfig, ArchiveError, DeadLetter, FlushJob, FlushReport, FlushWriter, Part,
};
use vigil_ingest::source::Line;
use vigil_ingest::source::kafka::StateRecord;
use vigil_schemas::rows::{Finding, Transition};
use vigil_schemas::{Event, Invalid};

use crate::control::{Control, Mark};

use super::classify::{Claim, DedupWindow, Horizon, admit_keyed, decode_line, within_cap};
use super::{PipelineError, checkpoint_of, restored_engine};
use crate::config::{InputConfig, VigilConfig};
use crate::telemetry::{BatchCounts, Outcome, Stage, Telemetry};

/// One item offered to a lane.
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    /// What the source holds of it: all of it, or the prefix kept of an item over the size cap.
    pub bytes: &'a [u8],
    /// Its full size in bytes.
    pub size: u64,
    /// Its source position (line number, offset + 1, intake number).
    pub position: u64,
    /// Read back from an intake journal that recorded it as refused (with the first position of the
    /// duplicate it was, 0 for other reasons): a refusal once answered stays a refusal, even when the
    /// dedup window no longer holds what it duplicated.
    pub refused_before: Option<u64>,
    /// Who sent it, for what it may claim.
    pub claim: Claim<'a>,
}

/// What a lane did with one item.
#[derive(Debug, Clone, PartialEq)]
pub enum Taken {
    /// At or before the checkpoint: an earlier run archived it.
    Skipped,
    /// Whitespace only: nothing to keep.
    Blank,
    /// A valid event: judged and buffered for the archive.
    Accepted,
    /// Refused by the contract and dead-lettered in the archive, for this reason (boxed: refusals are
    /// rare, and a batch's verdicts, written for every item, stay 16 bytes each instead of 80).
    Refused(Box<Invalid>),
}

/// Where findings and transitions go besides the archive (NDJSON, Kafka topics): one arm per output,
/// called once per batch in the order the engine and the board produced them. (Webhooks are not an
/// arm: the control plane queues them from its durable log.)
pub trait Fanout: Send {
    /// Takes one batch's findings and breaker transitions (already counted and in the archive's
    /// buffers).
    fn emit(&mut self, findings: &[Finding], transitions: &[Transition]) -> Result<(), PipelineError>;
    /// Called before each archive flush (and at the end): make what was emitted visible.
    fn flush(&mut self) -> Result<(), PipelineError> {
        Ok(())
    }
}

/// Which source partition a lane is for.
#[derive(Debug)]
pub enum Origin {
    /// A named source numbered from 1 (a file, stdin, `http`): partition 0.
    Named(String),
    /// A Kafka topic partition (positions are offset + 1), with what the state topic holds for it.
    Kafka {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The newest state record on the state topic, and where it was read (for messages).
        remote: Option<(StateRecord, String)>,
    },
}

/// A flush made durable: what a driver needs to act on it.
#[derive(Debug)]
pub struct Durable {
    /// Every position up to this one is in the archive and the checkpoint.
    pub position: u64,
    /// The detector state the checkpoint holds, when asked for (the Kafka state topic).
    pub state: Option<vigil_ingest::archive::State>,
}

/// A flush handed to a lane's writer thread, not yet waited for ([`Lane::begin_flush`]).
#[derive(Debug)]
#[must_use = "a flush begun is waited for with Lane::finish_flush"]
pub struct Flushing {
    state: Option<StateCopy>,
    sent: bool,
}

/// Where the writer thread leaves the JSON of the detector state it wrote into a flush's checkpoint, for
/// a driver that asked for it ([`Lane::begin_flush`] with `with_state`).
#[derive(Debug, Clone, Default)]
struct StateCopy(Arc<Mutex<Option<vigil_ingest::archive::State>>>);

impl StateCopy {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<vigil_ingest::archive::State>> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A flush's copy of the engine's state, written by the writer thread into the checkpoint as it is
/// serialised; when the driver asked for the text too, made whole first and kept in `copy`.
#[derive(Debug)]
struct FrozenState {
    frozen: vigil_detect::Frozen,
    copy: Option<StateCopy>,
}

impl vigil_ingest::archive::StateJson for FrozenState {
    fn write_json(&self, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        let Some(copy) = &self.copy else { return self.frozen.write_json(out).map_err(std::io::Error::from) };
        let json = self.frozen.to_json();
        out.write_all(json.get().as_bytes())?;
        *copy.slot() = Some(json);
        Ok(())
    }
}

/// The limits `take` applies, from `[input]`.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_event_bytes: usize,
    keep: usize,
    skew_s: u64,
    /// `parallel_batch_items`.
    parallel: usize,
    /// Whether a large batch's archive rows are built on a second thread while the engine judges it
    /// (see [`Lane::decoded_ahead`]).
    rows_beside: bool,
}

/// An item after the pure part of classification (its event, if any, is in [`Decoded::events`]).
enum DecodedItem {
    /// At or before the checkpoint: not decoded at all.
    Skipped,
    Blank,
    /// A well-formed event (the next in `events`; its event_id's dedup key the next in `keys`).
    Event,
    /// Boxed, as [`Taken::Refused`]: the batch's items stay small where nearly all are events.
    Invalid(Box<Invalid>),
}

/// A batch of items after the pure part of classification (decoding), ready for [`Lane::take_decoded`].
/// The events are kept apart, in item order, so that the engine and the archive read them where
/// decoding put them: an event is about 500 bytes, and moving each once more per stage showed in
/// profiles.
pub struct Decoded<'a> {
    items: Vec<DecodedItem>,
    events: Vec<Event<'a>>,
    /// The events' dedup keys, in the same order: the lane looks up the next few ahead of checking them.
    keys: Vec<u64>,
}

impl std::fmt::Debug for Decoded<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoded")
            .field("items", &self.items.len())
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

/// The emptied vectors of a judged batch, kept to decode another batch into ([`Decoder::decode_into`]):
/// a batch's events are megabytes, and a new vector for each batch was fresh memory, faulted in page
/// by page and handed back to the system after it.
#[derive(Default)]
pub struct Spare {
    items: Vec<DecodedItem>,
    events: Vec<Event<'static>>,
    keys: Vec<u64>,
}

impl std::fmt::Debug for Spare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spare").field("events", &self.events.capacity()).finish_non_exhaustive()
    }
}

/// An emptied vector of events, its buffer kept for events that borrow from other bytes: the collect
/// is done in place (the element type is the same but for its lifetime, and there is no element).
fn emptied<'b>(mut events: Vec<Event<'_>>) -> Vec<Event<'b>> {
    events.clear();
    events.into_iter().map(|_| unreachable!("the vector is empty")).collect()
}

impl<'a> Decoded<'a> {
    /// Takes the batch's vectors, emptied, to decode another batch into.
    pub fn spare(&mut self) -> Spare {
        let mut items = std::mem::take(&mut self.items);
        let mut keys = std::mem::take(&mut self.keys);
        items.clear();
        keys.clear();
        Spare { items, events: emptied(std::mem::take(&mut self.events)), keys }
    }

    fn append(&mut self, mut other: Decoded<'a>) {
        self.items.append(&mut other.items);
        self.events.append(&mut other.events);
        self.keys.append(&mut other.keys);
    }
}

/// What decoding needs of a lane: its checkpoint's position (items at or before it are skipped, not
/// decoded) and the size cap. A copy, so that a driver can decode the next batch on another thread
/// while the lane judges this one; the lane's checkpoint only moves over items it has taken, so a copy
/// made at any time decides every later item as the lane would.
#[derive(Debug, Clone, Copy)]
pub struct Decoder {
    committed: u64,
    max: usize,
}

impl Decoder {
    /// Decodes items (pure; any thread).
    pub fn decode<'a>(&self, items: &[Item<'a>]) -> Decoded<'a> {
        self.decode_into(items, Spare::default())
    }

    /// [`Decoder::decode`] into the vectors of a batch judged before.
    pub fn decode_into<'a>(&self, items: &[Item<'a>], spare: Spare) -> Decoded<'a> {
        let Decoder { committed, max } = *self;
        let Spare { items: mut decoded_items, events, mut keys } = spare;
        let mut events = emptied(events);
        decoded_items.reserve(items.len());
        events.reserve(items.len());
        keys.reserve(items.len());
        let mut out = Decoded { items: decoded_items, events, keys };
        for it in items {
            let item = if it.position <= committed {
                DecodedItem::Skipped
            } else {
                let oversize = (it.size > max as u64).then_some(it.size);
                let line = Line { start: 0, end: it.bytes.len(), position: it.position, oversize };
                match decode_line(within_cap(it.bytes, &line, max), &line, max) {
                    None => DecodedItem::Blank,
                    Some(Ok(ev)) => {
                        out.keys.push(DedupWindow::key(&ev.agent_id, &ev.event_id));
                        out.events.push(ev);
                        DecodedItem::Event
                    }
                    Some(Err(reason)) => DecodedItem::Invalid(Box::new(reason)),
                }
            };
            out.items.push(item);
        }
        out
    }
}

/// Buffers a batch's events as archive rows; returns the seconds it took.
fn push_events(archive: &mut Archive, events: &[Event<'_>], positions: &[u64]) -> f64 {
    let started = Instant::now();
    for (ev, &pos) in events.iter().zip(positions) {
        archive.push_event(ev, pos);
    }
    started.elapsed().as_secs_f64()
}

/// See the module documentation.
pub struct Lane {
    name: String,
    archive: Option<Archive>,
    /// Shared with the control plane, which reads an agent's baseline for the API between batches.
    engine: Arc<Mutex<Engine>>,
    dedup: DedupWindow,
    limits: Limits,
    outputs: Vec<Box<dyn Fanout>>,
    telemetry: Arc<Telemetry>,
    writer: Option<Writer>,
    flush_every: Duration,
    last_flush: Instant,
    out: Output,
    transitions: Vec<Transition>,
    taken: Vec<Taken>,
    /// The breakers, shared by every lane of the process (none for a detached lane).
    control: Option<Arc<Control>>,
    /// This lane's batches taken and durable, for commands that wait on the archive.
    mark: Option<Arc<Mark>>,
    /// What this lane last added to the tracked-agents gauge.
    agents: i64,
    /// What this lane last added to the state-bytes gauge (measured when a flush snapshots the state).
    state_bytes: i64,
    /// The earliest and latest event time taken.
    span: Option<(i64, i64)>,
    /// The archive root a named source leaves its detector state in when it closes, for the next new
    /// source (`vigil_ingest::archive::write_carry`).
    carry_to: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lane").field("name", &self.name).field("agents", &self.agents).finish_non_exhaustive()
    }
}

impl Lane {
    /// Opens the lane of one source partition: its archive (recovered from an interrupted run), its
    /// detector state and its dedup window; starts its writer thread.
    pub fn open(
        cfg: &VigilConfig,
        origin: Origin,
        outputs: Vec<Box<dyn Fanout>>,
        telemetry: Arc<Telemetry>,
        control: Arc<Control>,
    ) -> Result<Lane, PipelineError> {
        let name = match &origin {
            Origin::Named(n) => n,
            Origin::Kafka { topic, .. } => topic,
        };
        if vigil_ingest::source::is_reserved(name) {
            return Err(PipelineError::Reserved);
        }
        // A named source hands its baselines on when it closes; a Kafka partition keeps its own.
        let carry_to = matches!(origin, Origin::Named(_)).then(|| cfg.archive.dir.clone());
        let (name, mut archive, checkpoint, remote) = match origin {
            Origin::Named(name) => {
                let (archive, checkpoint) = Archive::open(&cfg.archive, &name, 0)?;
                (name, archive, checkpoint, None)
            }
            Origin::Kafka { topic, partition, remote } => {
                let (archive, checkpoint) = Archive::open_kafka(&cfg.archive, &topic, partition)?;
                (format!("{topic}/{partition}"), archive, checkpoint, remote)
            }
        };
        let local = checkpoint.as_ref().map_or(0, |c| c.committed_position);
        let fresh = checkpoint.as_ref().is_none_or(|c| vigil_ingest::archive::is_no_state(&c.state));
        // A named source (a file, stdin, the HTTP intake) new to the archive starts from the baselines
        // the last one left, so a daily or rotated log does not warm up again with every file.
        let carried = match (&remote, fresh) {
            (None, true) => vigil_ingest::archive::read_carry(&cfg.archive.dir)?,
            _ => None,
        };
        let engine = match (remote, carried) {
            // The state topic is ahead: another member (another archive root) archived the records in
            // between, and this archive moves past them.
            (Some((r, from)), _) if r.position > local => {
                archive.skip_to(r.position);
                restored_engine(&cfg.detect, Some(r.state), &from)?
            }
            (_, Some((carry, state))) => {
                let from = format!("the state {} left in {}", carry.source, cfg.archive.dir.display());
                let engine = restored_engine(&cfg.detect, Some(state), &from)?;
                tracing::info!(
                    source = %name,
                    from = %carry.source,
                    agents = engine.agents(),
                    "{name} starts from the baselines {} left ({} agents)",
                    carry.source,
                    engine.agents()
                );
                engine
            }
            _ => restored_engine(&cfg.detect, checkpoint.map(|c| c.state), &checkpoint_of(&cfg.archive.dir))?,
        };
        let mut dedup = DedupWindow::new(cfg.input.dedup_window);
        dedup.seed_from(&archive)?;
        let writer = Writer::spawn(archive.writer(), telemetry.clone(), &name)?;
        let mut lane = Lane::new(name, &cfg.input, &cfg.archive, engine, dedup, outputs, telemetry);
        lane.archive = Some(archive);
        lane.writer = Some(writer);
        lane.carry_to = carry_to;
        let mark = control.register(&lane.engine);
        if let Some(w) = lane.writer.as_mut() {
            w.mark = Some(mark.clone());
        }
        lane.mark = Some(mark);
        lane.control = Some(control);
        lane.count_agents();
        Ok(lane)
    }

    /// A lane that keeps nothing: no archive, no checkpoint, no future bound (a replay scoring a
    /// simulated fleet, `vigil eval`). Findings still fan out.
    pub fn detached(
        name: &str,
        detect: &DetectConfig,
        input: &InputConfig,
        outputs: Vec<Box<dyn Fanout>>,
        telemetry: Arc<Telemetry>,
    ) -> Result<Lane, PipelineError> {
        let engine = Engine::new(detect)?;
        let dedup = DedupWindow::new(input.dedup_window);
        let input = InputConfig { max_future_seconds: 0, ..input.clone() };
        Ok(Lane::new(name.to_owned(), &input, &ArchiveConfig::default(), engine, dedup, outputs, telemetry))
    }

    fn new(
        name: String,
        input: &InputConfig,
        archive: &ArchiveConfig,
        engine: Engine,
        dedup: DedupWindow,
        outputs: Vec<Box<dyn Fanout>>,
        telemetry: Arc<Telemetry>,
    ) -> Lane {
        Lane {
            name,
            archive: None,
            engine: Arc::new(Mutex::new(engine)),
            dedup,
            limits: Limits {
                max_event_bytes: input.max_event_bytes,
                keep: input.dead_letter_payload_bytes,
                skew_s: input.max_future_seconds,
                parallel: input.parallel_batch_items,
                rows_beside: true,
            },
            outputs,
            telemetry,
            writer: None,
            flush_every: Duration::from_secs_f64(archive.flush_seconds),
            last_flush: Instant::now(),
            out: Output::default(),
            transitions: Vec::new(),
            taken: Vec::new(),
            control: None,
            mark: None,
            agents: 0,
            state_bytes: 0,
            span: None,
            carry_to: None,
        }
    }

    /// The source partition's name (`source` or `topic/partition`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Checks that the input is the one this source partition archived before (by the fingerprint of its
    /// first line) and records it for the next checkpoints. A different input under the same source name
    /// (`a/events.ndjson`, then `b/events.ndjson`) would otherwise have its first lines skipped as
    /// "already archived".
    pub fn check_input(&mut self, first_line: &[u8]) -> Result<(), PipelineError> {
        let Some(a) = self.archive.as_mut() else { return Ok(()) };
        let digest = Sha256::digest(first_line);
        let fingerprint = vigil_schemas::rows::hex(&digest[..16]);
        match a.fingerprint() {
            Some(seen) if seen != fingerprint && a.committed_position() > 0 => {
                Err(PipelineError::OtherInput {
                    source_name: self.name.clone(),
                    committed: a.committed_position(),
                })
            }
            _ => {
                a.set_fingerprint(fingerprint);
                Ok(())
            }
        }
    }

    /// Dead-letters what a source could not read at all (a damaged compressed tail) at `position`, the
    /// line it would have been; nothing when an earlier run already archived that position.
    pub fn dead_letter_unreadable(&mut self, position: u64, reason: Invalid) {
        let Some(a) = self.archive.as_mut() else { return };
        if position <= a.committed_position() {
            return;
        }
        let mut counts = BatchCounts::default();
        counts.dead_letter(&reason);
        self.telemetry.add_batch(&counts);
        a.push_dead_letter(&DeadLetter::new(reason, position, 0, b"", 0));
    }

    /// Every position up to this one is durable (0 for a detached lane).
    pub fn committed_position(&self) -> u64 {
        self.archive.as_ref().map_or(0, Archive::committed_position)
    }

    /// The earliest and latest event time this lane took (since it opened).
    pub fn event_span(&self) -> Option<(i64, i64)> {
        self.span
    }

    fn engine(&self) -> std::sync::MutexGuard<'_, Engine> {
        crate::control::lock(&self.engine)
    }

    /// Names what this source's positions count (`line`, `item`), for the messages that cite them.
    pub fn counting(&mut self, unit: &'static str) {
        self.dedup.counting(unit);
    }

    /// Says that this lane's batches are decoded ahead on a thread of the driver's own (the file
    /// driver's reading thread). With the lane's thread and its writer's that makes three busy threads,
    /// so a batch's archive rows are built beside the engine only on a machine with more cores than
    /// that: on two, the scoped thread per batch gained no wall time and cost 1.5-2% of a run's CPU
    /// (docs/PERFORMANCE.md, stop 42). What is archived and found is the same either way.
    pub fn decoded_ahead(&mut self) {
        self.limits.rows_beside = std::thread::available_parallelism().is_ok_and(|n| n.get() > 3);
    }

    /// Agents the engine holds state for.
    pub fn agents(&self) -> usize {
        self.engine().agents()
    }

    /// What decoding needs of this lane, for a driver that decodes batches ahead on another thread.
    pub fn decoder(&self) -> Decoder {
        Decoder { committed: self.committed_position(), max: self.limits.max_event_bytes }
    }

    /// Takes one batch of items received together at `received_ms` (UTC; also the clock the future
    /// bound is checked against): classifies each, judges the valid ones, buffers every row for the
    /// archive and fans out what the engine found. Returns what became of each item, in order.
    pub fn take(&mut self, items: &[Item<'_>], received_ms: i64) -> Result<&[Taken], PipelineError> {
        let decoder = self.decoder();
        // Decoding is pure: a large batch is decoded in two halves at once.
        let mut decoded = if self.two_threads(items.len()) {
            let (a, b) = items.split_at(items.len() / 2);
            std::thread::scope(|s| {
                let second = s.spawn(|| decoder.decode(b));
                let mut first = decoder.decode(a);
                first.append(second.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
                first
            })
        } else {
            decoder.decode(items)
        };
        self.take_decoded(items, &mut decoded, received_ms)
    }

    /// Whether a batch of `items` is large enough to be worked on two threads (`parallel_batch_items`).
    fn two_threads(&self, items: usize) -> bool {
        self.limits.parallel > 0 && items >= self.limits.parallel
    }

    /// [`take`](Lane::take) with the items already decoded by this lane's [`Decoder`] (`decoded` is
    /// `items`, in order; the events are moved out of it).
    pub fn take_decoded(
        &mut self,
        items: &[Item<'_>],
        decoded: &mut Decoded<'_>,
        received_ms: i64,
    ) -> Result<&[Taken], PipelineError> {
        assert_eq!(items.len(), decoded.items.len(), "a decoded batch is its items, in order");
        let started = Instant::now();
        let Limits { max_event_bytes: max, keep, skew_s, .. } = self.limits;
        let horizon = (skew_s > 0).then_some(Horizon { now_ms: received_ms, skew_s });
        let two_threads = self.two_threads(items.len()) && self.limits.rows_beside;
        // What depends on the order of items (the dedup window) runs in order.
        if let Some(a) = self.archive.as_mut() {
            a.set_ingested_at(received_ms);
        }
        let mut counts = BatchCounts::default();
        let mut events = std::mem::take(&mut decoded.events);
        let mut positions = Vec::with_capacity(events.len());
        // The events refused here, by their index in `events`; taken out before judging.
        let mut refused = Vec::new();
        let mut next = 0;
        let mut keys = std::mem::take(&mut decoded.keys);
        self.taken.clear();
        for (it, d) in items.iter().zip(decoded.items.drain(..)) {
            let decided = match d {
                DecodedItem::Skipped => {
                    counts.count(Outcome::Skipped);
                    self.taken.push(Taken::Skipped);
                    continue;
                }
                DecodedItem::Blank => {
                    counts.count(Outcome::Blank);
                    if let Some(a) = self.archive.as_mut() {
                        a.consumed(it.position);
                    }
                    self.taken.push(Taken::Blank);
                    continue;
                }
                DecodedItem::Invalid(reason) => Err(*reason),
                DecodedItem::Event => {
                    let key = keys[next];
                    if next % DEDUP_AHEAD == 0 {
                        let ahead = &keys[next..keys.len().min(next + DEDUP_AHEAD)];
                        std::hint::black_box(self.dedup.warm(ahead));
                    }
                    let ev = &events[next];
                    next += 1;
                    // A sender's event it may not claim is refused before it can enter the dedup window.
                    let admitted = it
                        .claim
                        .check(ev)
                        .and_then(|()| admit_keyed(ev, key, it.position, horizon, &mut self.dedup))
                        .and_then(|()| match it.refused_before {
                            // Refused when first taken, valid now: a duplicate of an event from before a
                            // restart.
                            Some(first_position) => Err(Invalid::DuplicateEventId {
                                event_id: ev.event_id.to_string(),
                                first_position,
                                unit: self.dedup.unit(),
                            }),
                            None => Ok(ev),
                        });
                    if admitted.is_err() {
                        refused.push(next - 1);
                    }
                    admitted
                }
            };
            let taken = match decided {
                Ok(ev) => {
                    counts.count(Outcome::Accepted);
                    let (first, last) = self.span.get_or_insert((ev.ts_ms, ev.ts_ms));
                    (*first, *last) = ((*first).min(ev.ts_ms), (*last).max(ev.ts_ms));
                    positions.push(it.position);
                    Taken::Accepted
                }
                Err(reason) => {
                    counts.dead_letter(&reason);
                    if let Some(a) = self.archive.as_mut() {
                        let bytes = &it.bytes[..it.bytes.len().min(max)];
                        a.push_dead_letter(&DeadLetter::new(
                            reason.clone(),
                            it.position,
                            it.size,
                            bytes,
                            keep,
                        ));
                    }
                    Taken::Refused(Box::new(reason))
                }
            };
            self.taken.push(taken);
        }
        if !refused.is_empty() {
            let mut at = 0;
            let mut refused = refused.into_iter().peekable();
            events.retain(|_| {
                let keep = refused.next_if_eq(&at).is_none();
                at += 1;
                keep
            });
        }
        let classified = Instant::now();
        self.out.clear();
        let mut engine = crate::control::lock(&self.engine);
        let before = engine.stats();
        // The engine and the archive's row builders read the same events: on two threads for a large
        // batch.
        let (out, archive) = (&mut self.out, self.archive.as_mut());
        let archive_seconds = match archive {
            Some(a) if two_threads => std::thread::scope(|s| {
                let rows = s.spawn(|| push_events(a, &events, &positions));
                engine.process(&events, out);
                rows.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
            }),
            Some(a) => {
                engine.process(&events, out);
                push_events(a, &events, &positions)
            }
            None => {
                engine.process(&events, out);
                0.0
            }
        };
        let after = engine.stats();
        counts.late = after.late - before.late;
        counts.overflow = after.overflow - before.overflow;
        counts.forgotten = after.forgotten - before.forgotten;
        drop(engine);
        self.transitions.clear();
        if let Some(c) = &self.control {
            c.judge(&events, &mut self.out.findings, &mut self.transitions)?;
        }
        // Emptied, the vectors go back into the batch: a driver that recycles batches decodes the next
        // into them (`Decoded::spare`).
        events.clear();
        decoded.events = events;
        keys.clear();
        decoded.keys = keys;
        let judged = Instant::now();
        self.fan_out()?;
        self.send_parts()?;
        let t = &self.telemetry;
        t.add_batch(&counts);
        t.stage(Stage::Classify, (classified - started).as_secs_f64());
        t.stage(
            Stage::Detect,
            (judged - classified).as_secs_f64() - if two_threads { 0.0 } else { archive_seconds },
        );
        t.stage(Stage::Archive, archive_seconds + judged.elapsed().as_secs_f64());
        self.count_agents();
        if let Some(m) = &self.mark {
            let seq = m.took();
            if !self.has_uncommitted() {
                m.durable_to(seq);
            }
        }
        Ok(&self.taken)
    }

    /// Hands the writer thread the rows of every directory that reached `part_rows`, to be encoded into
    /// their files while the next batches are judged.
    fn send_parts(&mut self) -> Result<(), PipelineError> {
        let (Some(a), Some(w)) = (self.archive.as_mut(), self.writer.as_mut()) else { return Ok(()) };
        for part in a.take_parts() {
            w.send_part(part)?;
        }
        Ok(())
    }

    /// Counts one batch of findings, buffers them for the archive and hands them and the transitions to
    /// every output (transitions were counted, logged and archived by the control plane).
    fn fan_out(&mut self) -> Result<(), PipelineError> {
        for a in &self.out.uncovered {
            self.telemetry.uncovered(a);
        }
        for f in &self.out.findings {
            self.telemetry.finding(f.kind, f.severity, &f.finding_id, &f.agent_id);
            if let Some(a) = self.archive.as_mut() {
                a.push_finding(f);
            }
        }
        for o in &mut self.outputs {
            o.emit(&self.out.findings, &self.transitions)?;
        }
        Ok(())
    }

    /// The findings of the last `take` or `finish` (the engine's and the board's).
    pub fn output(&self) -> &Output {
        &self.out
    }

    /// The input ended: closes the windows still open, so their last minutes are judged too.
    pub fn finish(&mut self) -> Result<(), PipelineError> {
        self.out.clear();
        crate::control::lock(&self.engine).finish(&mut self.out);
        self.transitions.clear();
        if let Some(c) = &self.control {
            c.judge(&[], &mut self.out.findings, &mut self.transitions)?;
        }
        self.fan_out()?;
        self.count_agents();
        Ok(())
    }

    fn count_agents(&mut self) {
        let now = self.engine().agents() as i64;
        self.telemetry.agents_changed(now - self.agents);
        self.agents = now;
    }

    /// Whether rows are buffered that no checkpoint covers yet.
    pub fn has_uncommitted(&self) -> bool {
        self.archive.as_ref().is_some_and(Archive::has_uncommitted)
    }

    /// Whether a flush is due: `flush_rows` rows buffered, or something buffered for `flush_seconds`,
    /// or an operator's command waits for what this lane took to be durable.
    pub fn due(&self) -> bool {
        let hurried = self.control.as_deref().is_some_and(Control::hurry);
        let timed = self.last_flush.elapsed() >= self.flush_every;
        self.archive.as_ref().is_some_and(|a| a.should_flush() || (a.has_uncommitted() && (timed || hurried)))
    }

    /// How long until a flush falls due by time (for a driver waiting on input).
    pub fn until_due(&self) -> Duration {
        if self.control.as_deref().is_some_and(Control::hurry) {
            return Duration::ZERO;
        }
        if self.has_uncommitted() {
            self.flush_every.saturating_sub(self.last_flush.elapsed())
        } else {
            self.flush_every
        }
    }

    /// Fails with the writer's error if a flush failed since the last call.
    pub fn check(&mut self) -> Result<(), PipelineError> {
        match self.writer.as_mut() {
            Some(w) => w.reap(false).map(drop),
            None => Ok(()),
        }
    }

    /// Hands what is buffered to the writer thread and returns at once (the previous flush may still be
    /// in flight: then it waits for room). `then_remove` is deleted once the flush is durable (an intake
    /// journal segment it makes redundant), even when nothing was buffered.
    pub fn flush(&mut self, then_remove: Option<PathBuf>) -> Result<(), PipelineError> {
        let job = self.prepare_flush(false)?;
        let Some(w) = self.writer.as_mut() else { return Ok(()) };
        let seq = self.mark.as_ref().map_or(0, |m| m.taken());
        let hurried = self.control.as_deref().is_some_and(Control::hurry);
        if job.is_none() && then_remove.is_none() {
            // Nothing buffered: what was taken is durable once earlier flushes are.
            w.reap(hurried)?;
            if w.in_flight == 0
                && let Some(m) = &self.mark
            {
                m.durable_to(seq);
            }
            return Ok(());
        }
        w.send(Job { flush: job.map(|(j, _)| j), then_remove, seq })?;
        if hurried {
            w.reap(true)?;
        }
        Ok(())
    }

    /// Flushes and waits until the archive files and the checkpoint are durable, with a copy of the
    /// detector state the checkpoint holds when `with_state`. `None` when nothing was buffered.
    pub fn flush_and_wait(&mut self, with_state: bool) -> Result<Option<Durable>, PipelineError> {
        let flushing = self.begin_flush(with_state)?;
        self.finish_flush(flushing)
    }

    /// The first half of [`Lane::flush_and_wait`]: hands the flush to the writer thread and returns at
    /// once, so that a driver with several lanes (a Kafka member's partitions) has their writers work at
    /// the same time and waits for each with [`Lane::finish_flush`].
    pub fn begin_flush(&mut self, with_state: bool) -> Result<Flushing, PipelineError> {
        let Some((job, state)) = self.prepare_flush(with_state)? else {
            return Ok(Flushing { state: None, sent: false });
        };
        let seq = self.mark.as_ref().map_or(0, |m| m.taken());
        let w = self.writer.as_mut().ok_or(PipelineError::WriterStopped)?;
        w.send(Job { flush: Some(job), then_remove: None, seq })?;
        Ok(Flushing { state, sent: true })
    }

    /// Waits until the flush [`Lane::begin_flush`] started, and every one before it, is durable.
    /// `None` when nothing was buffered.
    pub fn finish_flush(&mut self, flushing: Flushing) -> Result<Option<Durable>, PipelineError> {
        let w = self.writer.as_mut();
        if !flushing.sent {
            // Earlier flushes must be durable too before the driver acts.
            if let Some(w) = w {
                w.reap(true)?;
            }
            return Ok(None);
        }
        let report =
            w.ok_or(PipelineError::WriterStopped)?.reap(true)?.ok_or(PipelineError::WriterStopped)?;
        // The writer is done with the job, so the copy is there when one was asked for.
        let state = flushing.state.and_then(|c| c.slot().take());
        Ok(Some(Durable { position: report.committed_position, state }))
    }

    fn prepare_flush(
        &mut self,
        with_state: bool,
    ) -> Result<Option<(FlushJob, Option<StateCopy>)>, PipelineError> {
        self.last_flush = Instant::now();
        for o in &mut self.outputs {
            o.flush()?;
        }
        let Some(a) = self.archive.as_mut() else { return Ok(None) };
        if !a.has_uncommitted() {
            return Ok(None);
        }
        // The engine's state is copied here and written as JSON by the writer thread, after the flush's
        // files: the copy costs this thread (and the engine's lock) a fraction of the writing.
        let (frozen, bytes) = {
            let engine = crate::control::lock(&self.engine);
            (engine.freeze(), engine.state_bytes() as i64)
        };
        self.telemetry.state_bytes_changed(bytes - self.state_bytes);
        self.state_bytes = bytes;
        // A driver that wants the state too (the Kafka state topic) gets the writer's text once the
        // flush is durable.
        let copy = with_state.then(StateCopy::default);
        let state = FrozenState { frozen, copy: copy.clone() };
        Ok(a.take_flush(state, super::now_ms()).map(|job| (job, copy)))
    }

    /// Takes this lane's agents off the tracked-agents gauge: the partition was handed to another member.
    pub fn hand_over(mut self) {
        self.telemetry.agents_changed(-self.agents);
        self.telemetry.state_bytes_changed(-self.state_bytes);
        self.agents = 0;
    }

    /// Stops without archiving what is buffered, after the driver told the senders of the latest items
    /// that they were not taken (what it told was taken is durable elsewhere: the intake journal, which
    /// a restart replays past the checkpoint). Waits for the flushes already handed to the writer; the
    /// checkpoint, and so the detector state, stays at the last of them.
    pub fn abandon(mut self) -> Result<(), PipelineError> {
        match self.writer.take() {
            Some(w) => w.close(),
            None => Ok(()),
        }
    }

    /// Flushes what is buffered and waits for the writer to finish every job.
    pub fn close(mut self) -> Result<(), PipelineError> {
        let flushed = self.flush(None);
        let closed = match self.writer.take() {
            Some(w) => w.close(),
            None => Ok(()),
        };
        flushed.and(closed)?;
        // Everything is archived, the state with it: point the archive's next new source at it.
        if let Some(root) = &self.carry_to {
            let carry = vigil_ingest::archive::Carry {
                source: self.name.clone(),
                partition: 0,
                through_ms: self.span.map(|(_, last)| last),
            };
            vigil_ingest::archive::write_carry(root, &carry)?;
        }
        Ok(())
    }
}

/// Messages queued for a lane's writer thread besides the one it is on.
const QUEUED: usize = 4;

/// Events whose dedup keys [`DedupWindow::warm`] looks up ahead of checking them in order.
const DEDUP_AHEAD: usize = 32;

/// What the writer thread is handed, in order.
enum Msg {
    /// Rows to encode into a file of the coming flush.
    Part(Part),
    Job(Job),
}

/// One flush on its way to the writer thread.
struct Job {
    flush: Option<FlushJob>,
    then_remove: Option<PathBuf>,
    /// The lane's batches taken when it was prepared: durable with it.
    seq: u64,
}

/// A lane's writer thread: writes each flush (Parquet encoding overlaps the next batches' judging),
/// then removes what the flush made redundant; stops at the first error.
struct Writer {
    jobs: Option<SyncSender<Msg>>,
    reports: Receiver<Result<Option<FlushReport>, ArchiveError>>,
    /// Set while the lane waits for the writer (for a report, or for room in the queue): the lane's
    /// core is then idle, so the parts the writer takes meanwhile are encoded on all its threads. The
    /// writer otherwise runs a few parts behind the lane (they queue while the lane judges the next
    /// batches), and at the end of an input those parts, on one thread, were most of the wait for the
    /// last flush.
    waiting: Arc<AtomicBool>,
    in_flight: usize,
    /// The batch counts of the jobs in flight, oldest first.
    seqs: std::collections::VecDeque<u64>,
    /// Told each job's batch count once it is durable.
    mark: Option<Arc<Mark>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    fn spawn(
        mut writer: FlushWriter,
        telemetry: Arc<Telemetry>,
        name: &str,
    ) -> Result<Writer, PipelineError> {
        // A few parts (or one flush, and parts) queued besides the one being written: the lane goes on
        // judging while a flush is made durable, and memory stays bounded (a part is `part_rows` rows).
        let (jobs, job_rx) = mpsc::sync_channel::<Msg>(QUEUED);
        let (report_tx, reports) = mpsc::channel();
        let waiting = Arc::new(AtomicBool::new(false));
        let hurried = waiting.clone();
        let thread = std::thread::Builder::new()
            .name(format!("vigil-writer-{name}"))
            .spawn(move || {
                super::lower_priority(10);
                // A part that failed fails the flush it belonged to.
                let mut failed_part = None;
                for msg in job_rx {
                    let job = match msg {
                        Msg::Part(part) => {
                            if failed_part.is_none()
                                && let Err(e) = writer.part(part, hurried.load(Ordering::Relaxed))
                            {
                                failed_part = Some(e);
                            }
                            continue;
                        }
                        Msg::Job(job) => job,
                    };
                    let started = Instant::now();
                    let mut result = match failed_part.take() {
                        Some(e) => Err(e),
                        None => job.flush.map(|j| writer.write(j)).transpose(),
                    };
                    if let Ok(Some(r)) = &result {
                        telemetry.flushed(r.files.len() as u64, r.bytes, started.elapsed().as_secs_f64());
                    }
                    if result.is_ok()
                        && let Some(path) = job.then_remove
                        && let Err(source) = std::fs::remove_file(&path)
                    {
                        result = Err(ArchiveError::Io { path, source });
                    }
                    let failed = result.is_err();
                    if report_tx.send(result).is_err() || failed {
                        break;
                    }
                }
            })
            .map_err(|_| PipelineError::WriterStopped)?;
        Ok(Writer {
            jobs: Some(jobs),
            reports,
            waiting,
            in_flight: 0,
            seqs: Default::default(),
            mark: None,
            thread: Some(thread),
        })
    }

    fn send(&mut self, job: Job) -> Result<(), PipelineError> {
        // One flush written and one waiting at most, as the rows of a flush not sent in parts are
        // held until it is written.
        self.reap_to(1)?;
        let seq = job.seq;
        if !self.queue(Msg::Job(job)) {
            // The writer stopped: it has sent the error that stopped it.
            return Err(self.stopped());
        }
        self.in_flight += 1;
        self.seqs.push_back(seq);
        Ok(())
    }

    /// Hands over a part; a failure to write it is reported with the flush it belongs to.
    fn send_part(&mut self, part: Part) -> Result<(), PipelineError> {
        self.reap(false)?;
        if self.queue(Msg::Part(part)) { Ok(()) } else { Err(self.stopped()) }
    }

    /// Queues a message, waiting for room if the queue is full; `false` if the writer stopped.
    fn queue(&self, msg: Msg) -> bool {
        let Some(jobs) = self.jobs.as_ref() else { return false };
        match jobs.try_send(msg) {
            Ok(()) => true,
            Err(mpsc::TrySendError::Disconnected(_)) => false,
            Err(mpsc::TrySendError::Full(msg)) => self.waiting_for(|| jobs.send(msg).is_ok()),
        }
    }

    /// Runs `wait` (a blocking call on the writer) with the writer told the lane is waiting.
    fn waiting_for<R>(&self, wait: impl FnOnce() -> R) -> R {
        self.waiting.store(true, Ordering::Relaxed);
        let r = wait();
        self.waiting.store(false, Ordering::Relaxed);
        r
    }

    /// Collects the reports of finished jobs (all of them when `wait`), failing on the first error.
    /// Returns the last report.
    fn reap(&mut self, wait: bool) -> Result<Option<FlushReport>, PipelineError> {
        self.reap_to(if wait { 0 } else { usize::MAX })
    }

    /// Collects the reports of finished jobs, waiting until at most `most` are in flight.
    fn reap_to(&mut self, most: usize) -> Result<Option<FlushReport>, PipelineError> {
        let mut last = None;
        while self.in_flight > 0 {
            let report = if self.in_flight > most {
                self.waiting_for(|| self.reports.recv()).map_err(|_| PipelineError::WriterStopped)?
            } else {
                match self.reports.try_recv() {
                    Ok(r) => r,
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => return Err(PipelineError::WriterStopped),
                }
            };
            self.in_flight -= 1;
            let seq = self.seqs.pop_front();
            let report = report?;
            if let (Some(m), Some(seq)) = (&self.mark, seq) {
                m.durable_to(seq);
            }
            if let Some(r) = report {
                last = Some(r);
            }
        }
        Ok(last)
    }

    fn stopped(&mut self) -> PipelineError {
        match self.reports.recv() {
            Ok(Err(e)) => e.into(),
            _ => PipelineError::WriterStopped,
        }
    }

    /// Waits for every job and stops the thread.
    fn close(mut self) -> Result<(), PipelineError> {
        let reaped = self.reap(true).map(drop);
        self.jobs = None;
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            return Err(PipelineError::WriterStopped);
        }
        reaped
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emptied_vector_of_events_keeps_its_buffer_for_the_next_batch() {
        let line =
            br#"{"event_id":"e","ts":1767600000000,"agent_id":"a","action":"x","resource":"r"}"#.to_vec();
        let mut events = vec![vigil_schemas::decode(&line, 1 << 20).unwrap()];
        events.reserve(100);
        let (capacity, buffer) = (events.capacity(), events.as_ptr() as usize);
        let spare: Vec<Event<'static>> = emptied(events);
        assert_eq!((spare.len(), spare.capacity(), spare.as_ptr() as usize), (0, capacity, buffer));
        // And through a batch: decoded into, spared, decoded into again.
        let decoder = Decoder { committed: 0, max: 1 << 20 };
        let item = Item {
            bytes: &line,
            size: line.len() as u64,
            position: 1,
            refused_before: None,
            claim: Default::default(),
        };
        let items = [item];
        let mut first = decoder.decode(&items);
        assert_eq!(first.events.len(), 1);
        let buffer = first.events.as_ptr() as usize;
        let second = decoder.decode_into(&items, first.spare());
        assert_eq!((second.events.len(), second.events.as_ptr() as usize), (1, buffer));
    }
}

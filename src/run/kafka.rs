//! The Kafka pipeline: a consumer group member that judges and archives the partitions it is assigned.
//!
//! Per assigned partition there is one archive writer (files `<topic>-<partition>-<first>-<last>.parquet`,
//! checkpoint `_vigil/checkpoints/<topic>-<partition>.json`) and one detection engine, restored from that
//! checkpoint. Producers key events by agent_id, so one partition owns an agent and its state.
//!
//! Delivery: a partition's offset is committed only after (1) every dead letter, finding and decision
//! produced for it is acknowledged, (2) its archive files and checkpoint are durable, and (3) its
//! detector state is acknowledged on the compacted state topic (`vigil.state`), from which a member on
//! another machine restores it. A crash replays
//! from the committed offset; the archive recovery removes files past its checkpoint, and messages at or
//! below the checkpoint are skipped, so the archive holds each record exactly once. On a revoke the
//! partition is flushed and committed inside the rebalance callback, before another member can take it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::client::Client;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use vigil_ingest::Archive;
use vigil_ingest::source::kafka::{
    AckContext, KafkaConfig, Lag, StateMessages, StateRecord, StoredState, wait_delivered,
};

use vigil_schemas::rows::{Finding, Transition};

use crate::config::VigilConfig;
use crate::control::Control;
use crate::pipeline::{Fanout, Item, Lane, Origin, PipelineError, StatusLine, Summary, Taken, now_ms};
use crate::telemetry::Telemetry;

/// With an idle exit: how long past it a member may wait for its first partition before giving up.
const UNASSIGNED_LIMIT: Duration = Duration::from_secs(90);

/// The control topic reader's fetch wait, in milliseconds (see [`ControlBus::start`]).
const CONTROL_FETCH_WAIT_MS: &str = "100";
/// Tries per offset commit before the run stops with an error.
const COMMIT_ATTEMPTS: u32 = 8;
/// How often a member asks again for a partition archive's lock that another process holds.
const LOCK_RETRY: Duration = Duration::from_millis(200);

/// Options of one Kafka run beyond the config file.
#[derive(Debug, Clone, Default)]
pub struct KafkaRunOptions {
    /// Stop once no message has arrived for this long while partitions are assigned and every assigned
    /// partition is read to its log end (batch jobs and tests); `None` runs until `stop`.
    pub idle_exit: Option<Duration>,
}

/// One assigned partition: its lane.
struct PartState {
    lane: Lane,
    /// The rebalance epoch it was assigned in: messages polled before that belong to an earlier
    /// ownership of the partition, whose position was committed without them.
    assigned_at: u64,
    /// Where its state goes on the state topic when it needs pieces (see `StateRecord::to_messages`).
    next_generation: usize,
    /// The position of its last durable flush: the offset its last commit named.
    durable_at: Option<u64>,
    /// Since when that position's commit is not known to be taken: it was not sent yet, or sent ahead
    /// and not awaited, which may have been refused with nothing to say so (librdkafka reports an
    /// asynchronous commit's result to no one here). A partition that then goes quiet has it sent
    /// again, awaited, a flush period later. `None` once an awaited commit of it succeeded.
    unconfirmed_since: Option<Instant>,
}

impl PartState {
    /// Whether its last durable position is not known to be committed.
    fn unconfirmed(&self) -> bool {
        self.unconfirmed_since.is_some()
    }
}

/// How a flush commits its offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
    /// Sent and not awaited: the member goes on consuming (the periodic flush of busy partitions).
    Ahead,
    /// Awaited once; a refusal is said and the commit is sent again a flush period later (partitions
    /// gone quiet after a commit sent ahead, which may have been refused).
    Confirm,
    /// Awaited and retried with backoff; a refusal is an error (partitions given up, the end of a run).
    Final,
}

/// What the consumer thread and the rebalance callback share.
struct Shared {
    /// The whole config: each partition's lane opens from it.
    cfg: VigilConfig,
    kafka: KafkaConfig,
    producer: Arc<ThreadedProducer<AckContext>>,
    parts: Mutex<HashMap<(String, i32), PartState>>,
    /// Bumped on every assignment and revocation; each polled message is tagged with it.
    epoch: AtomicU64,
    /// The first error met inside a rebalance callback (which cannot return one).
    failed: Mutex<Option<String>>,
    telemetry: Arc<Telemetry>,
    control: Arc<Control>,
    lag: Lag,
    /// Partitions of the state topic (0: no state topic).
    state_partitions: i32,
}

impl Shared {
    fn parts(&self) -> MutexGuard<'_, HashMap<(String, i32), PartState>> {
        self.parts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn fail(&self, msg: String) {
        let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        f.get_or_insert(msg);
    }

    /// Opens a newly assigned partition's lane: its archive (recovered), and its detector state from
    /// whichever is newer, the local checkpoint or the state topic.
    fn open(&self, topic: &str, partition: i32, stored: StoredState) -> Result<PartState, PipelineError> {
        let remote = stored.record.map(|r| {
            let from = format!("{} key {}", self.kafka.state_topic, self.kafka.state_key(topic, partition));
            (r, from)
        });
        // The member the group took the partition from may still hold it (see `lock_wait_ms`). A reserved
        // name is left for `Lane::open` to refuse.
        if !vigil_ingest::source::is_reserved(topic) {
            let started = Instant::now();
            let limits = (Duration::from_millis(self.kafka.lock_wait_ms), LOCK_RETRY);
            let waited = Archive::wait_for_source(&self.cfg.archive, topic, partition, limits, |holder| {
                tracing::warn!(
                    topic,
                    partition,
                    holder,
                    wait_ms = self.kafka.lock_wait_ms,
                    "the partition's archive is still held by another process; waiting for it"
                )
            })?;
            if waited {
                let waited_ms = started.elapsed().as_millis() as u64;
                tracing::info!(
                    topic,
                    partition,
                    waited_ms,
                    "took the partition's archive once it was let go"
                );
            }
        }
        let origin = Origin::Kafka { topic: topic.to_owned(), partition, remote };
        let topics: Box<dyn Fanout> =
            Box::new(Topics { producer: self.producer.clone(), findings: self.kafka.findings_topic.clone() });
        let lane = Lane::open(&self.cfg, origin, vec![topics], self.telemetry.clone(), self.control.clone())?;
        Ok(PartState {
            lane,
            assigned_at: self.epoch.load(Ordering::SeqCst),
            next_generation: stored.next_generation,
            durable_at: None,
            unconfirmed_since: None,
        })
    }

    /// Makes partitions durable and commits their offsets, all of them together: acknowledgements
    /// first, then the archive's files and checkpoints (the lanes' writer threads at work at once), then
    /// the detector states to the state topic, acknowledged, then one commit of every offset. Waiting
    /// once for all of them instead of once per partition is what keeps a member's flush, and the end
    /// of a batch run, from growing with its partition count. A partition with nothing new is
    /// committed again when its last commit was not awaited (see [`Commit`]).
    fn flush(
        &self,
        consumer: &BaseConsumer<Ctx>,
        parts: Vec<(&(String, i32), &mut PartState)>,
        commit: Commit,
    ) -> Result<(), PipelineError> {
        let mut parts: Vec<_> =
            parts.into_iter().filter(|(_, st)| st.lane.has_uncommitted() || st.unconfirmed()).collect();
        if parts.is_empty() {
            return Ok(());
        }
        self.acknowledged("dead letters and findings")?;
        let now = now_ms();
        // The state is copied only when it also goes to the state topic.
        let with_state = self.state_partitions > 0;
        let mut flushing = Vec::with_capacity(parts.len());
        for (_, st) in parts.iter_mut() {
            flushing.push(st.lane.begin_flush(with_state)?);
        }
        let mut tpl = TopicPartitionList::new();
        let (mut committing, mut pieced) = (Vec::new(), Vec::new());
        for (i, ((key, st), f)) in parts.iter_mut().zip(flushing).enumerate() {
            let (topic, partition) = (key.0.as_str(), key.1);
            let position = match st.lane.finish_flush(f)? {
                Some(durable) => {
                    // The state travels with the commit: produced and acknowledged before the offset
                    // moves, so the committed offset never runs ahead of the state a new owner restores.
                    if let Some(state) = durable.state
                        && self.produce_state(topic, partition, st, durable.position, state, now)?
                    {
                        pieced.push(i);
                    }
                    st.durable_at = Some(durable.position);
                    st.unconfirmed_since = Some(Instant::now());
                    durable.position
                }
                // Nothing new: the last position again, its commit not awaited yet.
                None => match st.durable_at {
                    Some(at) if st.unconfirmed() => at,
                    _ => continue,
                },
            };
            // The archive's committed position is offset + 1 of the last durable record: the next
            // offset to read, which is what Kafka commits.
            tpl.add_partition_offset(topic, partition, Offset::Offset(position as i64))
                .map_err(|e| PipelineError::Kafka(e.to_string()))?;
            committing.push(i);
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        self.acknowledged("the detector state")?;
        for &i in &pieced {
            let generation = &mut parts[i].1.next_generation;
            *generation = 1 - *generation;
        }
        let sent = Instant::now();
        for &i in &committing {
            parts[i].1.unconfirmed_since = Some(sent);
        }
        let mode = if commit == Commit::Ahead { CommitMode::Async } else { CommitMode::Sync };
        // A commit that fails is retried (a confirming one a flush period later): the archive is already
        // durable, so the worst a lost commit does is make a restart skip (by the checkpoint) what Kafka
        // redelivers.
        let mut attempt = 0;
        while let Err(e) = consumer.commit(&tpl, mode) {
            let which = || {
                tpl.elements().iter().map(|e| format!("{}/{}", e.topic(), e.partition())).collect::<Vec<_>>()
            };
            if commit == Commit::Confirm {
                tracing::warn!(partitions = ?which(), error = %e, "an offset commit was refused; sent again a flush period later");
                return Ok(());
            }
            attempt += 1;
            if attempt >= COMMIT_ATTEMPTS {
                return Err(PipelineError::Kafka(format!("committing {}: {e}", which().join(", "))));
            }
            std::thread::sleep(Duration::from_millis(100 << attempt.min(4)));
        }
        if commit != Commit::Ahead {
            for &i in &committing {
                parts[i].1.unconfirmed_since = None;
            }
        }
        Ok(())
    }

    /// Produces one partition's detector state to the state topic (whole, or in pieces under the
    /// partition's next generation, each piece acknowledged on its own: the topic's `max.message.bytes`
    /// bounds a whole batch, not a record). Whether it went in pieces: the generation then moves on
    /// once the last piece is acknowledged.
    fn produce_state(
        &self,
        topic: &str,
        partition: i32,
        st: &PartState,
        position: u64,
        state: vigil_ingest::archive::State,
        now: i64,
    ) -> Result<bool, PipelineError> {
        let StateMessages { records, pieced } = StateRecord {
            version: 1,
            group: self.kafka.group.clone(),
            topic: topic.to_owned(),
            partition,
            position,
            committed_at: now,
            state,
        }
        .to_messages(&self.kafka.state_key(topic, partition), self.kafka.state_max_bytes, st.next_generation)
        .map_err(|e| PipelineError::Kafka(format!("compressing the state of {topic}/{partition}: {e}")))?;
        for (key, value) in &records {
            send(
                &self.producer,
                BaseRecord::to(&self.kafka.state_topic)
                    .partition(partition.rem_euclid(self.state_partitions))
                    .key(key)
                    .payload(value),
            )?;
            if pieced {
                self.acknowledged("a piece of the detector state")?;
            }
        }
        Ok(pieced)
    }

    /// Waits until everything produced so far is acknowledged; any delivery that failed is an error.
    fn acknowledged(&self, what: &str) -> Result<(), PipelineError> {
        wait_delivered(&self.producer, Duration::from_millis(self.kafka.ack_timeout_ms))
            .map_err(|e| PipelineError::Kafka(format!("waiting for {what} to be acknowledged: {e}")))?;
        if let (n, Some(e)) = self.producer.context().failures()
            && n > 0
        {
            return Err(PipelineError::Kafka(format!("{n} records could not be produced, the last: {e}")));
        }
        Ok(())
    }
}

/// The consumer's context: hands rebalances to the shared state.
struct Ctx {
    shared: Arc<Shared>,
}

impl ClientContext for Ctx {
    fn stats_raw(&self, statistics: &[u8]) {
        self.shared.lag.record_json(statistics);
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.shared.epoch.fetch_add(1, Ordering::SeqCst);
            let mut parts = self.shared.parts();
            let mut revoked: Vec<((String, i32), PartState)> = tpl
                .elements()
                .iter()
                .filter_map(|e| parts.remove_entry(&(e.topic().to_owned(), e.partition())))
                .collect();
            let names: Vec<String> = revoked.iter().map(|((t, p), _)| format!("{t}/{p}")).collect();
            tracing::info!(revoked = ?names, kept = parts.len(), "partitions revoked (flushed and committed first)");
            let flushing = revoked.iter_mut().map(|(key, st)| (&*key, st)).collect();
            if let Err(err) = self.shared.flush(consumer, flushing, Commit::Final) {
                self.shared.fail(format!("flushing on revoke: {err}"))
            }
            for (_, st) in revoked {
                st.lane.hand_over();
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                self.shared.epoch.fetch_add(1, Ordering::SeqCst);
                let mut parts = self.shared.parts();
                let new: Vec<(String, i32)> = tpl
                    .elements()
                    .iter()
                    .map(|e| (e.topic().to_owned(), e.partition()))
                    .filter(|k| !parts.contains_key(k))
                    .collect();
                let names: Vec<String> = new.iter().map(|(t, p)| format!("{t}/{p}")).collect();
                let held = tpl.count();
                tracing::info!(assigned = ?names, held, "partitions assigned");
                // Their states from the state topic, read once for all of them, before any is judged.
                let timeout = Duration::from_millis(self.shared.kafka.ack_timeout_ms);
                let mut remote =
                    match self.shared.kafka.read_states(&new, self.shared.state_partitions, timeout) {
                        Ok(r) => r,
                        Err(e) => {
                            self.shared.fail(format!("restoring detector state: {e}"));
                            return;
                        }
                    };
                for key in new {
                    let stored = remote.remove(&key).unwrap_or_default();
                    match self.shared.open(&key.0, key.1, stored) {
                        Ok(st) => {
                            parts.insert(key, st);
                        }
                        Err(err) => self.shared.fail(format!("opening {}/{}: {err}", key.0, key.1)),
                    }
                }
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => self.shared.fail(format!("rebalance failed: {e}")),
        }
    }
}

/// Consumes until `stop` is set (or the input stays idle for `idle_exit`), then flushes and commits
/// every partition it still owns.
pub fn run(
    cfg: &VigilConfig,
    opts: &KafkaRunOptions,
    stop: &AtomicBool,
) -> Result<(Summary, Lag), PipelineError> {
    let telemetry = Arc::new(Telemetry::new());
    let control = Control::open(cfg, telemetry.clone())?;
    run_with(cfg, opts, stop, telemetry, control)
}

/// [`run`], counting into `telemetry` (which a server beside the member may expose).
pub fn run_with(
    cfg: &VigilConfig,
    opts: &KafkaRunOptions,
    stop: &AtomicBool,
    telemetry: Arc<Telemetry>,
    control: Arc<Control>,
) -> Result<(Summary, Lag), PipelineError> {
    let kafka = cfg.kafka.clone().ok_or(PipelineError::NoInput)?;
    let started = Instant::now();
    if kafka.create_topics {
        kafka.ensure_output_topics(kafka.setup_timeout())?;
    }
    let state_partitions = match (kafka.state_topic.is_empty(), kafka.create_topics) {
        (true, _) => 0,
        (false, true) => kafka.ensure_state_topic(kafka.setup_timeout())?,
        (false, false) => match kafka.partitions(&kafka.state_topic, kafka.setup_timeout()) {
            Ok(0) => {
                return Err(PipelineError::Kafka(format!(
                    "the state topic {} does not exist: create it (compacted), or set kafka.state_topic = \"\"",
                    kafka.state_topic
                )));
            }
            other => other?,
        },
    };
    let producer =
        Arc::new(kafka.producer().map_err(|e| PipelineError::Kafka(format!("creating the producer: {e}")))?);
    // Every member's halts are in force here before the first event is judged, and this member's are
    // published to the others (the control topic; "" keeps the member's breakers to itself).
    let _bus = if kafka.control_topic.is_empty() || control.has_publisher() {
        None
    } else {
        Some(ControlBus::start(&kafka, producer.clone(), control.clone(), kafka.setup_timeout())?)
    };
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        kafka: kafka.clone(),
        producer,
        parts: Mutex::new(HashMap::new()),
        epoch: AtomicU64::new(0),
        failed: Mutex::new(None),
        telemetry: telemetry.clone(),
        control,
        lag: Lag::default(),
        state_partitions,
    });
    let consumer: BaseConsumer<Ctx> = kafka
        .consumer_config()
        .create_with_context(Ctx { shared: shared.clone() })
        .map_err(|e| PipelineError::Kafka(format!("creating the consumer: {e}")))?;
    let topics: Vec<&str> = kafka.topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topics)
        .map_err(|e| PipelineError::Kafka(format!("subscribing to {topics:?}: {e}")))?;
    let poll = Duration::from_millis(kafka.poll_ms);
    let mut last_message = Instant::now();
    let mut last_assigned = Instant::now();
    let mut status = StatusLine::new("run --kafka", cfg.output.status_seconds);
    let mut last_lag = Instant::now();
    let mut batch: Vec<(BorrowedMessage<'_>, u64)> = Vec::with_capacity(kafka.batch_messages);
    let result = loop {
        if let Some(e) = shared.failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            break Err(PipelineError::Kafka(e));
        }
        if stop.load(Ordering::Relaxed) {
            break Ok(());
        }
        if opts.idle_exit.is_some_and(|d| last_message.elapsed() >= d) {
            // Quiet is not done: a first fetch slower than the idle time (a loaded broker) or a backlog
            // not yet fetched keeps the member, and the clock starts again.
            let assigned: Vec<(String, i32)> = shared.parts().keys().cloned().collect();
            match read_to_end(&consumer, shared.producer.client(), &assigned, kafka.setup_timeout()) {
                Ok(true) => break Ok(()),
                Ok(false) => last_message = Instant::now(),
                Err(e) => {
                    tracing::warn!(error = %e, "idle exit without knowing the partitions were read to their end");
                    break Ok(());
                }
            }
        }
        // A batch run (idle exit) that the group never gives a partition is stuck, not idle: say so
        // rather than wait forever.
        if let Some(d) = opts.idle_exit
            && last_assigned.elapsed() >= d + UNASSIGNED_LIMIT
        {
            break Err(PipelineError::Kafka(format!(
                "no partition was assigned for {}s: is the consumer group stuck?",
                last_assigned.elapsed().as_secs()
            )));
        }
        batch.clear();
        let deadline = Instant::now() + poll;
        while batch.len() < kafka.batch_messages {
            let left = deadline.saturating_duration_since(Instant::now());
            match consumer.poll(left) {
                // Tagged after poll returns: a rebalance inside this poll happened before this message.
                Some(Ok(m)) => batch.push((m, shared.epoch.load(Ordering::SeqCst))),
                Some(Err(e)) => {
                    // Transport errors are retried by librdkafka; they are reported, not fatal.
                    tracing::warn!(error = %e, "kafka");
                    break;
                }
                None => break,
            }
            if left.is_zero() {
                break;
            }
        }
        // Idle means assigned and nothing arriving: while the group is still forming (a crashed member's
        // session has to expire first), the clock does not run.
        let unassigned = shared.parts().is_empty();
        if !unassigned {
            last_assigned = Instant::now();
        }
        if !batch.is_empty() || unassigned {
            last_message = Instant::now();
        }
        if let Err(e) = process(&shared, &consumer, &batch) {
            break Err(e);
        }
        status.tick(&shared.telemetry, || lag_text(&shared.lag.snapshot()));
        if last_lag.elapsed() >= Duration::from_secs(1) {
            shared.telemetry.consumer_lag(&shared.lag.snapshot());
            last_lag = Instant::now();
        }
    };
    drop(batch);
    // Whatever ended the loop, what was judged is made durable and committed.
    let mut parts = shared.parts();
    // Webhooks decided before the stop go out first (within the grace), then the control log's records
    // are archived. What is left undelivered stays owed in the control log.
    let controlled = shared.control.close(Duration::from_secs_f64(shared.cfg.control.delivery_grace_seconds));
    let closing = shared.flush(&consumer, parts.iter_mut().collect(), Commit::Final);
    drop(parts);
    result?;
    closing?;
    controlled?;
    let mut summary = telemetry.summary(&kafka.topics.join(","));
    summary.elapsed = started.elapsed();
    summary.lag = shared.lag.snapshot().into_iter().map(|((t, p), l)| (format!("{t}/{p}"), l)).collect();
    Ok((summary, shared.lag.clone()))
}

/// Whether this member has read each of `assigned` up to its log end as the broker reports it now. A
/// partition nothing was read from since it was assigned counts from the group's committed offset, or
/// from its log start without one.
///
/// The log ends are asked on `ends`, another client's connection (the producer's): on the consumer's
/// own, each request queues behind the fetch the broker is holding open (up to `fetch.wait.max.ms`,
/// 500 ms by default) while the partitions are quiet, which is exactly when this runs, so reading eight
/// partitions' ends took four seconds there and takes milliseconds here.
fn read_to_end<C: ClientContext>(
    consumer: &BaseConsumer<Ctx>,
    ends: &Client<C>,
    assigned: &[(String, i32)],
    timeout: Duration,
) -> Result<bool, rdkafka::error::KafkaError> {
    if assigned.is_empty() {
        return Ok(true);
    }
    let mut list = TopicPartitionList::new();
    for (topic, partition) in assigned {
        list.add_partition(topic, *partition);
    }
    let position = consumer.position()?;
    let committed = consumer.committed_offsets(list, timeout)?;
    let at = |l: &TopicPartitionList, t: &str, p: i32| match l.find_partition(t, p).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    };
    for (topic, partition) in assigned {
        let (low, high) = ends.fetch_watermarks(topic, *partition, timeout)?;
        let next =
            at(&position, topic, *partition).or_else(|| at(&committed, topic, *partition)).unwrap_or(low);
        if next.max(low) < high {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Consumer lag for a status line: the total over the assigned partitions and the one furthest behind.
fn lag_text(lag: &BTreeMap<(String, i32), i64>) -> String {
    match lag.iter().max_by_key(|(_, l)| **l) {
        Some(((topic, partition), most)) => format!(
            "; lag {} over {} partitions (most: {topic}/{partition} at {most})",
            lag.values().sum::<i64>(),
            lag.len()
        ),
        None => "; no lag reported yet".into(),
    }
}

/// Judges and archives one batch, partition by partition in arrival order; flushes partitions that are
/// due.
fn process(
    shared: &Shared,
    consumer: &BaseConsumer<Ctx>,
    batch: &[(BorrowedMessage<'_>, u64)],
) -> Result<(), PipelineError> {
    let mut parts = shared.parts();
    let now = now_ms();
    let mut by_part: BTreeMap<(&str, i32), Vec<(&BorrowedMessage<'_>, u64)>> = BTreeMap::new();
    for (m, epoch) in batch {
        by_part.entry((m.topic(), m.partition())).or_default().push((m, *epoch));
    }
    for ((topic, partition), mut msgs) in by_part {
        // A partition revoked while this batch was being polled belongs to another member now; it
        // re-reads these from the committed offset.
        let Some(st) = parts.get_mut(&(topic.to_owned(), partition)) else { continue };
        // Polled under an earlier ownership of this partition, which committed without them; the
        // current one fetches them again from the committed offset.
        msgs.retain(|&(_, epoch)| epoch >= st.assigned_at);
        let items: Vec<Item<'_>> = msgs
            .iter()
            .map(|(m, _)| {
                let payload = m.payload().unwrap_or_default();
                Item {
                    bytes: payload,
                    size: payload.len() as u64,
                    position: m.offset() as u64 + 1,
                    refused_before: None,
                    claim: Default::default(),
                }
            })
            .collect();
        let taken = st.lane.take(&items, now)?;
        for ((m, _), t) in msgs.iter().zip(taken) {
            if let Taken::Refused(reason) = t {
                dead_letter(shared, m, reason)?;
            }
        }
    }
    // Every partition that is due, together; those with nothing new too, so a quiet partition's tail
    // is committed on time. Then those gone quiet since their last commit, which was not awaited.
    let due = parts.iter_mut().filter(|(_, st)| st.lane.due()).collect();
    shared.flush(consumer, due, Commit::Ahead)?;
    let every = Duration::from_secs_f64(shared.cfg.archive.flush_seconds);
    let quiet = parts
        .iter_mut()
        .filter(|(_, st)| st.unconfirmed_since.is_some_and(|t| t.elapsed() >= every))
        .collect();
    shared.flush(consumer, quiet, Commit::Confirm)
}

/// Produces a refused message to its topic's dead-letter topic, as it came, with why in headers.
fn dead_letter(
    shared: &Shared,
    m: &BorrowedMessage<'_>,
    reason: &vigil_schemas::Invalid,
) -> Result<(), PipelineError> {
    let dlq = shared.kafka.dlq_for(m.topic());
    let offset = m.offset().to_string();
    let part = m.partition().to_string();
    let detail = reason.to_string();
    let headers = OwnedHeaders::new()
        .insert(Header { key: "vigil.reason", value: Some(reason.code()) })
        .insert(Header { key: "vigil.stage", value: Some("decode") })
        .insert(Header { key: "vigil.detail", value: Some(&detail) })
        .insert(Header { key: "vigil.topic", value: Some(m.topic()) })
        .insert(Header { key: "vigil.partition", value: Some(&part) })
        .insert(Header { key: "vigil.offset", value: Some(&offset) });
    let mut record = BaseRecord::to(&dlq).payload(m.payload().unwrap_or_default()).headers(headers);
    if let Some(k) = m.key() {
        record = record.key(k);
    }
    send(&shared.producer, record)
}

/// The findings topic, as a lane's fan-out arm: findings keyed by agent_id, published for other systems,
/// acknowledged before the partition's offset moves. (Transitions go to the control topic through the
/// control plane's publisher, [`ControlBus`], commands included.)
struct Topics {
    producer: Arc<ThreadedProducer<AckContext>>,
    findings: String,
}

impl Fanout for Topics {
    fn emit(&mut self, findings: &[Finding], _: &[Transition]) -> Result<(), PipelineError> {
        for f in findings {
            publish(&self.producer, &self.findings, &f.agent_id, f)?;
        }
        Ok(())
    }
}

/// The compacted control topic as the members' shared breakers: every transition a member makes (a
/// rule's or an operator's) is produced keyed by its breaker (`agent:ID`, `cohort:F=V`, `fleet`) with
/// the member's id in a `vigil.member` header; every member reads the topic from the beginning before it
/// judges anything, then follows it, applying the others' transitions. So a halt decided on one
/// partition, or an operator's fleet halt through any member's API, is in force on every member.
#[derive(Debug)]
pub struct ControlBus {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const MEMBER_HEADER: &str = "vigil.member";

impl ControlBus {
    /// Reads the control topic to its end (applying every transition), then follows it on a thread;
    /// sets the control plane's publisher to produce to it.
    pub fn start(
        kafka: &KafkaConfig,
        producer: Arc<ThreadedProducer<AckContext>>,
        control: Arc<Control>,
        timeout: Duration,
    ) -> Result<ControlBus, PipelineError> {
        let topic = kafka.control_topic.clone();
        let member = format!("{:016x}", fastrand::u64(..));
        let mut c = kafka.consumer_config();
        c.set("group.id", format!("{}.control-{member}", kafka.group))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            // Read to the end before the first event is judged, then followed: a halt decided on
            // another member is in force here within a fetch wait, and the start does not wait 500 ms
            // per empty fetch.
            .set("fetch.wait.max.ms", CONTROL_FETCH_WAIT_MS);
        let consumer: BaseConsumer =
            c.create().map_err(|e| PipelineError::Kafka(format!("the control topic reader: {e}")))?;
        // The topic's partitions and leaders from the reader itself: a partition assigned before its
        // leader is known waits for librdkafka's offset query timer (half a second) before its first
        // fetch. A topic that does not exist has none.
        let meta = consumer
            .fetch_metadata(Some(&topic), timeout)
            .map_err(|e| PipelineError::Kafka(format!("reading {topic}: {e}")))?;
        let partitions =
            meta.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len() as i32);
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(&topic, p, Offset::Beginning)
                .map_err(|e| PipelineError::Kafka(format!("reading {topic}: {e}")))?;
        }
        consumer.assign(&tpl).map_err(|e| PipelineError::Kafka(format!("reading {topic}: {e}")))?;
        let apply = {
            let member = member.clone();
            let control = control.clone();
            move |m: &BorrowedMessage<'_>| {
                let mine = m.headers().is_some_and(|h| {
                    h.iter().any(|x| x.key == MEMBER_HEADER && x.value == Some(member.as_bytes()))
                });
                if mine {
                    return;
                }
                match m.payload().map(serde_json::from_slice::<Transition>) {
                    Some(Ok(t)) => {
                        control.apply_remote(&t);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(topic = m.topic(), offset = m.offset(), error = %e, "not a transition; skipped")
                    }
                    None => {}
                }
            }
        };
        // Every halt any member made is in force before this member judges its first event.
        let mut pending: std::collections::BTreeSet<i32> = (0..partitions).collect();
        let deadline = Instant::now() + timeout;
        while !pending.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PipelineError::Kafka(format!(
                    "the control topic {topic} was not read to its end within {}s (partitions {pending:?} left)",
                    timeout.as_secs()
                )));
            }
            match consumer.poll(left.min(Duration::from_millis(200))) {
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    pending.remove(&p);
                }
                Some(Ok(m)) => apply(&m),
                _ => {}
            }
        }
        let publish_topic = topic.clone();
        let publish_member = member.clone();
        control.set_publisher(Box::new(move |t: &Transition| {
            let body = serde_json::to_vec(t).unwrap_or_default();
            let key = t.key();
            let headers = OwnedHeaders::new()
                .insert(Header { key: MEMBER_HEADER, value: Some(publish_member.as_str()) });
            let record = BaseRecord::to(&publish_topic).key(&key).payload(&body).headers(headers);
            if let Err(e) = send(&producer, record) {
                // The transition is in force here and in the log; the other members miss it until the
                // next one for the same breaker. Said, not fatal.
                tracing::warn!(topic = %publish_topic, error = %e, "publishing a transition failed");
            }
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("vigil-control-bus".into())
            .spawn(move || {
                while !stopped.load(Ordering::Relaxed) {
                    if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                        apply(&m);
                    }
                }
            })
            .map_err(|e| PipelineError::Kafka(format!("starting the control topic reader: {e}")))?;
        Ok(ControlBus { stop, thread: Some(thread) })
    }
}

impl Drop for ControlBus {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Produces `value` as JSON to `topic` keyed by `agent_id`, for other systems to subscribe to; an
/// empty topic name turns that output off.
fn publish(
    producer: &ThreadedProducer<AckContext>,
    topic: &str,
    agent_id: &str,
    value: &impl serde::Serialize,
) -> Result<(), PipelineError> {
    if topic.is_empty() {
        return Ok(());
    }
    let body =
        serde_json::to_vec(value).map_err(|e| PipelineError::Kafka(format!("encoding for {topic}: {e}")))?;
    send(producer, BaseRecord::to(topic).key(agent_id).payload(&body))
}

/// Produces one record, waiting while the producer's queue is full.
fn send<K, P>(
    producer: &ThreadedProducer<AckContext>,
    mut record: BaseRecord<'_, K, P>,
) -> Result<(), PipelineError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((
                rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                r,
            )) => {
                record = r;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(PipelineError::Kafka(format!("producing: {e}"))),
        }
    }
}

/// The load generator: the simulated fleet produced to `topic`, keyed by agent_id, at `rate` messages
/// per second of wall time (0: as fast as the broker acknowledges). Creates the topic when missing.
/// Returns the number of events produced (every one acknowledged).
pub fn produce_simulated(
    sim: &crate::simulate::SimConfig,
    brokers: &str,
    topic: &str,
    partitions: i32,
    rate: f64,
    labels: Option<&std::path::Path>,
) -> Result<u64, PipelineError> {
    let kafka = KafkaConfig::new(brokers, vec![topic.to_owned()]);
    kafka.ensure_topics(&[topic], partitions, kafka.setup_timeout())?;
    let producer =
        kafka.producer().map_err(|e| PipelineError::Kafka(format!("creating the producer: {e}")))?;
    let started = Instant::now();
    let n = std::cell::Cell::new(0u64);
    let mut progress = crate::progress::Progress::new(true, "produce", Some(sim.duration_ms as u64));
    let found = crate::simulate::simulate(
        sim,
        |line| {
            let key = agent_key(line).unwrap_or("");
            if rate > 0.0 {
                // Pace against the schedule, not the previous message, so the rate holds on average.
                let due = Duration::from_secs_f64(n.get() as f64 / rate);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            send(&producer, BaseRecord::to(topic).key(key).payload(line))
                .map_err(|e| std::io::Error::other(e.to_string()))?;
            n.set(n.get() + 1);
            Ok(())
        },
        |t| progress.update((t - sim.start_ms) as u64, n.get(), started.elapsed()),
    )
    .map_err(|e| PipelineError::Kafka(e.to_string()))?;
    wait_delivered(&producer, Duration::from_secs(60))
        .map_err(|e| PipelineError::Kafka(format!("waiting for acknowledgements: {e}")))?;
    progress.finish();
    let n = n.get();
    if let (failed, Some(e)) = producer.context().failures()
        && failed > 0
    {
        return Err(PipelineError::Kafka(format!(
            "{failed} of {n} events were not acknowledged; the last error: {e}"
        )));
    }
    if let Some(path) = labels {
        let mut w = std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| PipelineError::Kafka(format!("{}: {e}", path.display())))?,
        );
        crate::simulate::write_labels(&found, &mut w)
            .and_then(|_| std::io::Write::flush(&mut w))
            .map_err(|e| PipelineError::Kafka(format!("{}: {e}", path.display())))?;
    }
    Ok(n)
}

/// The agent_id of a simulated line, without parsing the whole event.
fn agent_key(line: &str) -> Option<&str> {
    let start = line.find("\"agent_id\":\"")? + "\"agent_id\":\"".len();
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

//! The HTTP driver: what `vigil serve` does with the items of a `POST /v1/events` body once the server
//! has read, decompressed and split it.
//!
//! - **journaled** (no `[kafka]`): items go to one pipeline thread that owns the `http` source's lane
//!   (positions numbered across requests and restarts) and its intake journal. A request is answered once
//!   its items and their verdicts are synced to the journal, so a 200 survives a crash: the next start
//!   archives what the journal holds past the checkpoint before it serves. The lane flushes on its own
//!   rule. Refused items are dead-lettered in the archive too.
//! - **Kafka**: items are produced to the first `[kafka]` topic keyed by agent_id, refused items to its
//!   dead-letter topic; a request is answered once the broker acknowledged every record. The Kafka
//!   members' lanes judge and archive them.
//!
//! Nothing waits for room: the pipeline's queue holds `queue_batches` requests (full: refused as busy),
//! and a request that would overfill the producer queue is refused whole.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, ProducerContext, ThreadedProducer};
use tokio::sync::oneshot;
use vigil_ingest::archive::DeadLetter;
use vigil_ingest::journal::{self, Journal};
use vigil_ingest::source::Line;
use vigil_ingest::source::kafka::{KafkaConfig, wait_delivered};
use vigil_schemas::Invalid;

use crate::config::{HttpConfig, InputConfig, VigilConfig};
use crate::control::Control;
use crate::pipeline::{
    Claim, DedupWindow, FindingsFile, Horizon, Item, Lane, Origin, PipelineError, Sender, StatusLine,
    Summary, Taken, classify, now_ms, within_cap,
};
use crate::telemetry::{BatchCounts, Outcome, Telemetry};

/// Source name of HTTP events in the archive (file names and checkpoint).
pub const HTTP_SOURCE: &str = "http";

/// What keeps the HTTP intake from starting or finishing.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The journaled lane failed (the archive could not be written…).
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// Kafka refused something the intake cannot do without.
    #[error("kafka: {0}")]
    Kafka(String),
    /// The Kafka side could not be set up (topics, the producer's config).
    #[error("kafka: {0}")]
    KafkaSetup(#[from] vigil_ingest::source::kafka::KafkaSetupError),
    /// The pipeline thread could not start.
    #[error("starting the pipeline thread: {0}")]
    Thread(std::io::Error),
}

/// What became of one item of a request.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Taken: synced to the intake journal, or acknowledged by the broker.
    Accepted,
    /// An empty line: nothing to keep.
    Blank,
    /// Refused by the contract (the client's to fix); dead-lettered.
    Rejected {
        /// The dead-letter reason code.
        code: &'static str,
        /// What is wrong, for a person.
        detail: String,
    },
    /// Not taken for a reason on this side (saturated, broker error); safe to send again.
    Failed {
        /// `saturated` or `produce_failed`.
        code: &'static str,
        /// What happened, for a person.
        detail: String,
    },
}

/// Why a request's items were not taken at all; nothing of them was kept.
#[derive(Debug, Clone, PartialEq)]
pub enum Refusal {
    /// Saturated: the pipeline's queue or the producer's is full. Send again after a while (429).
    Busy(String),
    /// The pipeline stopped (503).
    Stopped(String),
    /// Failed on this side while taking them (500).
    Failed(String),
}

/// Where accepted items go.
enum Sink {
    Journaled { tx: SyncSender<Msg>, thread: Mutex<Option<JoinHandle<Result<Summary, PipelineError>>>> },
    Kafka(KafkaFront),
}

/// The HTTP intake: takes the items of one request and says what became of each.
pub struct HttpIntake {
    sink: Sink,
    input: InputConfig,
    telemetry: Arc<Telemetry>,
    /// Set when the journaled lane stops by itself (the archive could not be written): the server
    /// then stops too, and the error is the command's, rather than answering 503 forever.
    ended: Arc<AtomicBool>,
}

impl std::fmt::Debug for HttpIntake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = match self.sink {
            Sink::Journaled { .. } => "journaled",
            Sink::Kafka(_) => "kafka",
        };
        f.debug_struct("HttpIntake").field("mode", &mode).finish_non_exhaustive()
    }
}

impl HttpIntake {
    /// Opens the intake: under Kafka, the producer (creating topics when configured); else the `http`
    /// lane and its journal, recovered (what an interrupted run answered is archived first), and the
    /// pipeline thread.
    pub fn open(
        cfg: &VigilConfig,
        telemetry: Arc<Telemetry>,
        control: Arc<Control>,
    ) -> Result<HttpIntake, IntakeError> {
        let ended = Arc::new(AtomicBool::new(false));
        let sink = match &cfg.kafka {
            Some(k) => Sink::Kafka(KafkaFront::new(k, &cfg.http)?),
            None => {
                let journaled = JournaledLane::open(cfg, telemetry.clone(), control)?;
                let (tx, rx) = mpsc::sync_channel(cfg.http.queue_batches);
                let flag = ended.clone();
                let thread = std::thread::Builder::new()
                    .name("vigil-pipeline".into())
                    .spawn(move || {
                        crate::pipeline::lower_priority(10);
                        let result = journaled.run(rx);
                        flag.store(true, Ordering::SeqCst);
                        result
                    })
                    .map_err(IntakeError::Thread)?;
                Sink::Journaled { tx, thread: Mutex::new(Some(thread)) }
            }
        };
        Ok(HttpIntake { sink, input: cfg.input.clone(), telemetry, ended })
    }

    /// Whether the journaled lane stopped by itself.
    pub fn ended(&self) -> &AtomicBool {
        &self.ended
    }

    /// Whether items are produced to Kafka (and the members' lanes count them).
    pub fn is_kafka(&self) -> bool {
        matches!(self.sink, Sink::Kafka(_))
    }

    /// Takes one request's items (lines of `body`); answers once they are durable (journaled, or
    /// acknowledged by the broker).
    /// `sender` is the authenticated sender, when `[[http.sender]]` declares any: its items are refused
    /// (`not_permitted`) where they claim an agent or source it is not granted.
    pub async fn take(
        &self,
        body: Vec<u8>,
        items: Vec<Line>,
        remote: SocketAddr,
        sender: Option<Arc<Sender>>,
    ) -> Result<Vec<Verdict>, Refusal> {
        match &self.sink {
            Sink::Journaled { tx, .. } => {
                let (reply, answer) = oneshot::channel();
                if let Some(refusal) = enqueue(tx, Batch { body, items, sender, reply }) {
                    return Err(refusal);
                }
                match answer.await {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(e)) => Err(Refusal::Failed(e)),
                    Err(_) => {
                        Err(Refusal::Failed("the pipeline stopped before archiving this request".into()))
                    }
                }
            }
            Sink::Kafka(front) => {
                let Some(_reservation) = front.reserve(items.len()) else {
                    return Err(Refusal::Busy(
                        "the producer queue is full; nothing in this request was taken".into(),
                    ));
                };
                Ok(front.produce(&self.input, &self.telemetry, body, items, remote, sender.as_deref()).await)
            }
        }
    }

    /// Stops taking items and makes everything taken durable: the journaled lane flushes and its
    /// thread ends; the producer waits for its last acknowledgements. Returns the pipeline's counts.
    pub fn close(&self) -> Result<Summary, IntakeError> {
        match &self.sink {
            Sink::Journaled { tx, thread } => {
                let _ = tx.send(Msg::Stop);
                match thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    Some(t) => Ok(t.join().map_err(|_| PipelineError::WriterStopped)??),
                    None => Ok(self.telemetry.summary(HTTP_SOURCE)),
                }
            }
            Sink::Kafka(front) => {
                wait_delivered(&front.producer, Duration::from_secs(30))
                    .map_err(|e| IntakeError::Kafka(format!("waiting for the last acknowledgements: {e}")))?;
                Ok(self.telemetry.summary(HTTP_SOURCE))
            }
        }
    }
}

/// Where the pipeline thread answers a request: the verdicts once journaled, or why they were not taken.
type Answer = oneshot::Sender<Result<Vec<Verdict>, String>>;

/// A request's items on their way to the journaled lane thread.
struct Batch {
    body: Vec<u8>,
    items: Vec<Line>,
    sender: Option<Arc<Sender>>,
    reply: Answer,
}

enum Msg {
    Batch(Batch),
    Stop,
}

/// Hands a batch to the pipeline thread. A full queue (the pipeline is behind) or a stopped pipeline is
/// refused at once; the request never waits for room.
fn enqueue(tx: &SyncSender<Msg>, batch: Batch) -> Option<Refusal> {
    tx.try_send(Msg::Batch(batch)).err().map(|e| match e {
        TrySendError::Full(_) => {
            Refusal::Busy("the pipeline is saturated; nothing in this request was taken".into())
        }
        TrySendError::Disconnected(_) => Refusal::Stopped("the pipeline stopped".into()),
    })
}

fn rejected(reason: &Invalid) -> Verdict {
    Verdict::Rejected { code: reason.code(), detail: reason.to_string() }
}

// ---- journaled: one pipeline thread owns the `http` lane and the intake journal ----

/// One item on its way into the journaled lane: from a request, or read back from the journal.
struct Intake<'a> {
    /// The item as held: all of it, or (read back) the prefix journaled for a `too_large` one.
    bytes: &'a [u8],
    /// Its full size.
    size: u64,
    position: u64,
    received_ms: i64,
    /// What it was told when first taken; `None` for a new item, which is journaled.
    journaled: Option<journal::Verdict>,
    /// Who sent a new item.
    claim: Claim<'a>,
}

/// The pipeline thread's state: the `http` source's lane and its intake journal.
struct JournaledLane {
    lane: Lane,
    /// Every item is appended here and synced before its request is answered (`None` only while the
    /// previous run's journal is being recovered, when nothing is appended).
    journal: Option<Journal>,
    /// `[input] dead_letter_payload_bytes`: what the journal keeps of a refused item.
    keep: usize,
    /// The last position handed out: items are numbered across requests and restarts.
    position: u64,
    source: String,
    telemetry: Arc<Telemetry>,
    status: StatusLine,
}

impl JournaledLane {
    /// Opens the lane and the journal, and archives what an interrupted run took into its journal but
    /// had not archived (judged again, as a file is replayed from its checkpoint), before serving.
    fn open(
        cfg: &VigilConfig,
        telemetry: Arc<Telemetry>,
        control: Arc<Control>,
    ) -> Result<JournaledLane, PipelineError> {
        let source = cfg.input.source_name.clone().unwrap_or_else(|| HTTP_SOURCE.into());
        let outputs = FindingsFile::open(cfg.output.findings.as_deref())?;
        let mut lane = Lane::open(cfg, Origin::Named(source.clone()), outputs, telemetry.clone(), control)?;
        lane.counting("item");
        let committed = lane.committed_position();
        let dir = cfg.archive.dir.join(JOURNAL_DIR).join(&source);
        let journal_err = |source| PipelineError::Journal { path: dir.clone(), source };
        let mut replay = Journal::open(&dir).map_err(journal_err)?;
        let mut e = JournaledLane {
            position: committed,
            lane,
            journal: None,
            keep: cfg.input.dead_letter_payload_bytes,
            source,
            telemetry,
            status: StatusLine::new("serve", cfg.output.status_seconds),
        };
        // Items past the checkpoint are judged again, one request (one receipt time) at a time, as they
        // were taken.
        let mut recovered = 0;
        let mut request: Vec<journal::Entry> = Vec::new();
        loop {
            let next = replay.next().transpose().map_err(journal_err)?;
            if let Some(x) = &next {
                e.position = e.position.max(x.position);
                if x.position <= committed {
                    continue;
                }
            }
            if request.first().is_some_and(|r| next.as_ref().is_none_or(|x| x.received_ms != r.received_ms)) {
                e.recover(&request)?;
                recovered += request.len() as u64;
                request.clear();
            }
            match next {
                Some(x) => request.push(x),
                None => break,
            }
        }
        e.lane.flush_and_wait(false)?;
        if recovered > 0 {
            e.telemetry.add_recovered(recovered);
            tracing::info!(
                recovered,
                archive = %dir.display(),
                "archived {recovered} items an interrupted run had taken into {} (answered, not yet archived)",
                dir.display()
            );
        }
        let journal = replay.into_journal(e.position + 1).map_err(journal_err)?;
        journal.retire_before_current().map_err(journal_err)?;
        e.journal = Some(journal);
        Ok(e)
    }

    /// Judges again one request's items read back from the journal.
    fn recover(&mut self, request: &[journal::Entry]) -> Result<(), PipelineError> {
        let intake: Vec<Intake<'_>> = request
            .iter()
            .map(|x| Intake {
                bytes: &x.item,
                size: match x.verdict {
                    journal::Verdict::TooLarge { size } => size,
                    _ => x.item.len() as u64,
                },
                position: x.position,
                received_ms: x.received_ms,
                journaled: Some(x.verdict),
                claim: Claim::Open,
            })
            .collect();
        self.judge(&intake)?;
        Ok(())
    }

    /// Judges batches as they come, answering each once its items are synced to the journal (batches
    /// that queued meanwhile share one sync). The lane flushes on its own rule (`flush_rows`,
    /// `flush_seconds`): a due flush goes to the lane's writer thread (Parquet encoding overlaps judging,
    /// as in `vigil run`), which then removes the journal segment it covers.
    fn run(mut self, rx: Receiver<Msg>) -> Result<Summary, PipelineError> {
        let judged = self.judge_until_stopped(&rx);
        // Whatever stopped it, the flushes handed over are finished (the writer's error says more than
        // "it stopped").
        let closed = match &judged {
            Ok(()) => self.lane.close(),
            // What was answered 200 is synced to the journal, and a restart replays it; the rest was
            // answered "not taken", so none of it may reach the archive or stay in the journal.
            Err(_) => {
                if let Some(j) = self.journal.as_mut()
                    && let Err(e) = j.discard_unsynced()
                {
                    tracing::error!(
                        journal = %j.dir().display(),
                        error = %e,
                        "could not take back from the journal the items answered \"not taken\": a restart may \
                         archive some of them"
                    );
                }
                self.lane.abandon()
            }
        };
        judged?;
        closed?;
        Ok(self.telemetry.summary(&self.source))
    }

    fn judge_until_stopped(&mut self, rx: &Receiver<Msg>) -> Result<(), PipelineError> {
        loop {
            // A writer that stopped ends the pipeline; what was answered is safe in the journal.
            self.lane.check()?;
            let wait = self.lane.until_due().min(Duration::from_secs(1));
            let mut stop = false;
            let mut answered = Vec::new();
            let mut next = rx.recv_timeout(wait).map_err(|e| e == RecvTimeoutError::Disconnected);
            // Group commit: every batch already queued joins this one sync. The loop ends: a request's
            // client waits for its answer, so at most `max_inflight_requests` batches can arrive first.
            loop {
                match next {
                    Ok(Msg::Batch(b)) => match self.take(&b.body, &b.items, b.sender.as_deref()) {
                        Ok(verdicts) => answered.push((b.reply, verdicts)),
                        Err(e) => {
                            let _ = b.reply.send(Err(format!("not taken: {e}")));
                            return Err(refuse(answered, e));
                        }
                    },
                    Ok(Msg::Stop) | Err(true) => {
                        stop = true;
                        break;
                    }
                    Err(false) => break,
                }
                next = rx.try_recv().map_err(|e| e == mpsc::TryRecvError::Disconnected);
            }
            if !answered.is_empty() {
                if let Err(e) = journal_io(&mut self.journal, Journal::sync) {
                    return Err(refuse(answered, e));
                }
                for (reply, verdicts) in answered {
                    let _ = reply.send(Ok(verdicts));
                }
            }
            self.status.tick(&self.telemetry, String::new);
            if stop || self.lane.due() {
                let next = self.position + 1;
                let retire = journal_io(&mut self.journal, |j| j.rotate(next))?;
                self.lane.flush(retire)?;
            }
            if stop {
                return Ok(());
            }
        }
    }

    /// Numbers, judges and journals one request's items; positions continue from the last one taken.
    fn take(
        &mut self,
        body: &[u8],
        items: &[Line],
        sender: Option<&Sender>,
    ) -> Result<Vec<Verdict>, PipelineError> {
        let received_ms = now_ms();
        let claim = sender.map_or(Claim::Open, Claim::By);
        let intake: Vec<Intake<'_>> = items
            .iter()
            .map(|item| {
                self.position += 1;
                Intake {
                    bytes: &body[item.start..item.end],
                    size: (item.end - item.start) as u64,
                    position: self.position,
                    received_ms,
                    journaled: None,
                    claim,
                }
            })
            .collect();
        self.judge(&intake)
    }

    /// Has the lane take items received together, and journals each new one with its verdict. One read
    /// back from the journal is judged against the clock it was received by and keeps the verdict it was
    /// given (a duplicate of an event archived before the restart is still refused).
    fn judge(&mut self, intake: &[Intake<'_>]) -> Result<Vec<Verdict>, PipelineError> {
        let Some(received_ms) = intake.first().map(|x| x.received_ms) else { return Ok(Vec::new()) };
        let items: Vec<Item<'_>> = intake
            .iter()
            .map(|x| Item {
                bytes: x.bytes,
                size: x.size,
                position: x.position,
                refused_before: match x.journaled {
                    Some(journal::Verdict::Refused { first_seen }) => Some(first_seen),
                    _ => None,
                },
                claim: match x.journaled {
                    Some(journal::Verdict::NotPermitted) => Claim::Refused,
                    _ => x.claim,
                },
            })
            .collect();
        self.telemetry.add_input_bytes(intake.iter().map(|x| x.size).sum());
        let taken = self.lane.take(&items, received_ms)?;
        let mut verdicts = Vec::with_capacity(intake.len());
        for (x, t) in intake.iter().zip(taken) {
            let (verdict, journaled, held) = match t {
                // Positions are handed out past the checkpoint, so nothing taken here was archived
                // before; were it, it would have been accepted then.
                Taken::Skipped | Taken::Accepted => (Verdict::Accepted, journal::Verdict::Accepted, x.bytes),
                Taken::Blank => (Verdict::Blank, journal::Verdict::Blank, x.bytes),
                Taken::Refused(reason) => {
                    let journaled = match &**reason {
                        Invalid::TooLarge { .. } => journal::Verdict::TooLarge { size: x.size },
                        Invalid::NotPermitted { .. } => journal::Verdict::NotPermitted,
                        Invalid::DuplicateEventId { first_position, .. } => {
                            journal::Verdict::Refused { first_seen: *first_position }
                        }
                        _ => journal::Verdict::Refused { first_seen: 0 },
                    };
                    (rejected(reason), journaled, DeadLetter::kept(reason, x.bytes, self.keep))
                }
            };
            if x.journaled.is_none() {
                journal_io(&mut self.journal, |j| j.append(x.position, received_ms, journaled, held))?;
            }
            verdicts.push(verdict);
        }
        Ok(verdicts)
    }
}

/// Runs `f` on the journal, naming it in an error.
fn journal_io<T>(
    journal: &mut Option<Journal>,
    f: impl FnOnce(&mut Journal) -> std::io::Result<T>,
) -> Result<T, PipelineError> {
    let journal = journal.as_mut().expect("the journal is open once recovery is done");
    f(journal).map_err(|source| PipelineError::Journal { path: journal.dir().to_owned(), source })
}

/// Where the journal of each source lives, under the archive root.
const JOURNAL_DIR: &str = "_vigil/journal";

/// Answers requests whose items were not journaled with why, and hands the reason on.
fn refuse(replies: Vec<(Answer, Vec<Verdict>)>, e: PipelineError) -> PipelineError {
    for (reply, _) in replies {
        let _ = reply.send(Err(format!("not taken: {e}")));
    }
    e
}

// ---- Kafka: produce, answer on acknowledgement ----

/// A producer context that hands each delivery's outcome back to the request that sent the record.
struct ReplyContext;

/// Where a delivery's outcome goes.
struct Reply(Mutex<Option<oneshot::Sender<Result<(), String>>>>);

impl ClientContext for ReplyContext {}

impl ProducerContext for ReplyContext {
    type DeliveryOpaque = Box<Reply>;

    fn delivery(&self, result: &rdkafka::message::DeliveryResult<'_>, reply: Box<Reply>) {
        let outcome = result.as_ref().map(|_| ()).map_err(|(e, _)| e.to_string());
        if let Some(tx) = reply.0.lock().ok().and_then(|mut t| t.take()) {
            let _ = tx.send(outcome);
        }
    }
}

struct KafkaFront {
    producer: ThreadedProducer<ReplyContext>,
    topic: String,
    dlq: String,
    /// Records that requests in flight may still produce, against `budget` (librdkafka's queue size):
    /// a request that would not fit is refused whole, before anything of it is produced.
    reserved: AtomicUsize,
    budget: usize,
}

/// Room in the producer queue, held by one request until its acknowledgements are in.
struct Reservation<'a> {
    front: &'a KafkaFront,
    n: usize,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.front.reserved.fetch_sub(self.n, Ordering::SeqCst);
    }
}

impl KafkaFront {
    fn new(k: &KafkaConfig, http: &HttpConfig) -> Result<KafkaFront, IntakeError> {
        let topic =
            k.topics.first().cloned().ok_or_else(|| IntakeError::Kafka("kafka.topics is empty".into()))?;
        let dlq = k.dlq_for(&topic);
        if k.create_topics {
            let timeout = k.setup_timeout();
            k.ensure_topics(&[&topic], DEFAULT_PARTITIONS, timeout)?;
            k.ensure_output_topics(timeout)?;
        }
        let mut config = k.producer_config();
        // A request waits for its acknowledgements: a broker that is down fails them within the request
        // timeout (librdkafka's own default is five minutes), unless the options say otherwise.
        if !k.options.contains_key("message.timeout.ms") {
            config.set("message.timeout.ms", (http.request_timeout_seconds * 1000).to_string());
        }
        let producer = config
            .create_with_context(ReplyContext)
            .map_err(|e| IntakeError::Kafka(format!("creating the producer: {e}")))?;
        // librdkafka's default queue holds 100,000 messages.
        let budget =
            k.options.get("queue.buffering.max.messages").and_then(|v| v.parse().ok()).unwrap_or(100_000);
        Ok(KafkaFront { producer, topic, dlq, reserved: AtomicUsize::new(0), budget })
    }

    /// Room for `n` records, or `None` when requests in flight already hold the queue. A request alone
    /// always gets its chance (one larger than the whole queue meets `saturated` item by item).
    fn reserve(&self, n: usize) -> Option<Reservation<'_>> {
        let before = self.reserved.fetch_add(n, Ordering::SeqCst);
        let reservation = Reservation { front: self, n };
        (before == 0 || before + n <= self.budget).then_some(reservation)
    }

    /// Produces the valid items (keyed by agent_id) and dead-letters the refused ones; waits for every
    /// acknowledgement. Items the full producer queue did not take come back `saturated`.
    async fn produce(
        &self,
        input: &InputConfig,
        telemetry: &Telemetry,
        body: Vec<u8>,
        items: Vec<Line>,
        remote: SocketAddr,
        sender: Option<&Sender>,
    ) -> Vec<Verdict> {
        let max = input.max_event_bytes;
        let keep = input.dead_letter_payload_bytes;
        let remote = remote.to_string();
        let mut verdicts = Vec::with_capacity(items.len());
        let mut acks = Vec::with_capacity(items.len());
        let mut dlq_acks = Vec::new();
        let mut dedup = DedupWindow::new(0);
        let horizon = Horizon::now(input.max_future_seconds);
        let mut saturated = false;
        let mut counts = BatchCounts::default();
        let claim = sender.map_or(Claim::Open, Claim::By);
        for item in &items {
            let bytes = within_cap(&body, item, max);
            let classified = classify(bytes, item, max, horizon, &mut dedup)
                .map(|r| r.and_then(|ev| claim.check(&ev).map(|()| ev)));
            let (record_to, key, payload, reason) = match classified {
                None => {
                    counts.count(Outcome::Blank);
                    verdicts.push(Verdict::Blank);
                    continue;
                }
                Some(Ok(ev)) => (&self.topic, ev.agent_id.to_string(), bytes, None),
                Some(Err(reason)) => {
                    (&self.dlq, String::new(), DeadLetter::kept(&reason, bytes, keep), Some(reason))
                }
            };
            if saturated {
                verdicts
                    .push(Verdict::Failed { code: "saturated", detail: "the producer queue is full".into() });
                continue;
            }
            let (tx, rx) = oneshot::channel();
            let opaque = Box::new(Reply(Mutex::new(Some(tx))));
            let mut record = BaseRecord::with_opaque_to(record_to, opaque).payload(payload);
            let item_no = item.position.to_string();
            let size = (item.end - item.start).to_string();
            let detail = reason.as_ref().map(|r| r.to_string()).unwrap_or_default();
            if let Some(r) = &reason {
                record = record.headers(
                    OwnedHeaders::new()
                        .insert(Header { key: "vigil.reason", value: Some(r.code()) })
                        .insert(Header { key: "vigil.stage", value: Some("http") })
                        .insert(Header { key: "vigil.detail", value: Some(&detail) })
                        .insert(Header { key: "vigil.item", value: Some(&item_no) })
                        .insert(Header { key: "vigil.remote", value: Some(&remote) })
                        .insert(Header { key: "vigil.size", value: Some(&size) }),
                );
            } else {
                record = record.key(&key);
            }
            match self.producer.send(record) {
                Ok(()) => match reason {
                    None => {
                        acks.push((verdicts.len(), rx));
                        verdicts.push(Verdict::Accepted);
                    }
                    Some(r) => {
                        counts.dead_letter(&r);
                        dlq_acks.push(rx);
                        verdicts.push(rejected(&r));
                    }
                },
                Err((e, _)) => {
                    let queue_full = matches!(
                        e,
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull
                        )
                    );
                    saturated |= queue_full;
                    let code = if queue_full { "saturated" } else { "produce_failed" };
                    verdicts.push(Verdict::Failed { code, detail: e.to_string() });
                }
            }
        }
        for (i, rx) in acks {
            match rx.await {
                Ok(Ok(())) => counts.count(Outcome::Accepted),
                Ok(Err(e)) => verdicts[i] = Verdict::Failed { code: "produce_failed", detail: e },
                Err(_) => {
                    verdicts[i] = Verdict::Failed {
                        code: "produce_failed",
                        detail: "the producer dropped the record".into(),
                    }
                }
            }
        }
        for rx in dlq_acks {
            if let Ok(Err(e)) = rx.await {
                tracing::warn!(topic = %self.dlq, error = %e, "dead letter not produced");
            }
        }
        // Items not taken (saturated, broker errors) are the client's to send again: not counted as read.
        telemetry.add_batch(&counts);
        verdicts
    }
}

/// Partitions of the event topic when `vigil serve` has to create it.
const DEFAULT_PARTITIONS: i32 = 8;

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Batch {
        Batch { body: Vec::new(), items: Vec::new(), sender: None, reply: oneshot::channel().0 }
    }

    #[test]
    fn a_full_pipeline_queue_is_busy_and_a_stopped_pipeline_stopped() {
        let (tx, rx) = mpsc::sync_channel(1);
        assert!(enqueue(&tx, batch()).is_none());
        assert!(matches!(enqueue(&tx, batch()), Some(Refusal::Busy(_))));
        drop(rx);
        assert!(matches!(enqueue(&tx, batch()), Some(Refusal::Stopped(_))));
    }

    #[test]
    fn a_request_that_would_overfill_the_producer_queue_is_refused_whole() {
        // Creating a producer does not connect: nothing listens on port 1, and nothing is sent.
        let producer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .create_with_context(ReplyContext)
            .unwrap();
        let front = KafkaFront {
            producer,
            topic: "t".into(),
            dlq: "t.dlq".into(),
            reserved: AtomicUsize::new(0),
            budget: 100,
        };
        let big = front.reserve(150).expect("alone, a request always goes");
        assert!(front.reserve(1).is_none());
        drop(big);
        let a = front.reserve(60).unwrap();
        assert!(front.reserve(41).is_none());
        let b = front.reserve(40).unwrap();
        assert_eq!(front.reserved.load(Ordering::SeqCst), 100);
        drop((a, b));
        assert_eq!(front.reserved.load(Ordering::SeqCst), 0);
    }
}

//! `vigil serve`: events over HTTP, `POST /v1/events`.
//!
//! A body is NDJSON or a JSON array (gzip or zstd accepted), capped as sent and once decompressed. Each
//! item is checked against the event contract; the answer lists the refused ones by line (or array
//! index) with the reason, and the good ones go on:
//! - **embedded** (no `[kafka]`): to one pipeline thread that owns the detection engine and the archive
//!   (source `http`, positions numbered across requests and restarts). A request is answered once its
//!   items and their verdicts are synced to the intake journal, so a 200 survives a crash: the next
//!   start archives what the journal holds past the checkpoint before it serves. The archive flushes on
//!   its own schedule. Refused items are dead-lettered in the archive too.
//! - **Kafka**: produced to the first `[kafka]` topic keyed by agent_id, refused items to its dead-letter
//!   topic; a request is answered once the broker acknowledged every record.
//!
//! Nothing buffers without bound: at most `max_inflight_requests` requests are read at once (one more
//! gets 429 before its body is read), the pipeline's queue holds `queue_batches` requests (full: 429),
//! and a full producer queue answers 429 for the items it could not take. 429s carry `Retry-After`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rdkafka::ClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use tokio::sync::{Semaphore, oneshot};
use vigil_ingest::archive::DeadLetter;
use vigil_ingest::journal::{self, Journal};
use vigil_ingest::source::Line;
use vigil_ingest::source::http::{BodyError, Framing, decode_body, framing_for, split};
use vigil_ingest::source::kafka::KafkaConfig;
use vigil_schemas::Invalid;

use crate::config::{HttpConfig, InputConfig, VigilConfig};
use crate::pipeline::{
    DedupWindow, FindingsFile, Horizon, Item, Lane, Origin, PipelineError, StatusLine, Summary, Taken,
    classify, kept, now_ms,
};
use crate::telemetry::{BatchCounts, Outcome, Telemetry};

/// Source name of HTTP events in the archive (file names and checkpoint).
pub const HTTP_SOURCE: &str = "http";

/// What stopped `vigil serve`.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The async runtime could not start.
    #[error("starting the HTTP runtime: {0}")]
    Runtime(std::io::Error),
    /// The embedded pipeline failed (the archive could not be written…).
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// Kafka refused something the server cannot do without.
    #[error("kafka: {0}")]
    Kafka(String),
}

/// What became of one item of a request.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    /// Taken: synced to the intake journal, or acknowledged by the broker.
    Accepted,
    /// An empty line: nothing to keep.
    Blank,
    /// Refused by the contract (the client's to fix); dead-lettered.
    Rejected { code: &'static str, detail: String },
    /// Not taken for a reason on this side (saturated, broker error); safe to send again.
    Failed { code: &'static str, detail: String },
}

/// Where the pipeline thread answers a request: the verdicts once journaled, or why they were not taken.
type Answer = oneshot::Sender<Result<Vec<Verdict>, String>>;

/// A request's items on their way to the embedded pipeline thread.
struct Batch {
    body: Vec<u8>,
    items: Vec<Line>,
    reply: Answer,
}

enum Msg {
    Batch(Batch),
    Stop,
}

/// Where accepted items go.
enum Sink {
    Embedded(SyncSender<Msg>),
    Kafka(KafkaFront),
}

/// What every request handler shares.
struct State {
    http: HttpConfig,
    input: InputConfig,
    sink: Sink,
    permits: Arc<Semaphore>,
    stopping: AtomicBool,
    /// The run's counters: the embedded lane's, or in Kafka mode the handlers'.
    telemetry: Arc<Telemetry>,
}

/// Runs the server until `stop` is set, then drains requests in flight, flushes and returns the counts.
/// `ready` is called with the bound address once connections are accepted.
pub fn run(
    cfg: &VigilConfig,
    stop: &AtomicBool,
    ready: impl FnOnce(SocketAddr),
) -> Result<Summary, ServeError> {
    run_with(cfg, stop, ready, Arc::new(Telemetry::new()))
}

/// [`run`], counting into `telemetry`.
pub fn run_with(
    cfg: &VigilConfig,
    stop: &AtomicBool,
    ready: impl FnOnce(SocketAddr),
    telemetry: Arc<Telemetry>,
) -> Result<Summary, ServeError> {
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.http.workers)
        .thread_name("vigil-http")
        .enable_all()
        .build()
        .map_err(ServeError::Runtime)?;
    let addr = cfg.http.listen.clone();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(&addr))
        .map_err(|source| ServeError::Bind { addr: addr.clone(), source })?;
    let bound = listener.local_addr().map_err(|source| ServeError::Bind { addr, source })?;
    // Set when the embedded pipeline stops by itself (the archive could not be written): the server
    // then stops too, and the error is the command's, rather than answering 503 forever.
    let pipeline_ended = Arc::new(AtomicBool::new(false));
    let (sink, pipeline) = match &cfg.kafka {
        Some(k) => (Sink::Kafka(KafkaFront::new(k, &cfg.http)?), None),
        None => {
            // The archive is opened (and recovered) here, before the first request is taken.
            let embedded = Embedded::open(cfg, telemetry.clone())?;
            let (tx, rx) = mpsc::sync_channel(cfg.http.queue_batches);
            let ended = pipeline_ended.clone();
            let handle = std::thread::Builder::new()
                .name("vigil-pipeline".into())
                .spawn(move || {
                    let result = embedded.run(rx);
                    ended.store(true, Ordering::SeqCst);
                    result
                })
                .map_err(ServeError::Runtime)?;
            (Sink::Embedded(tx), Some(handle))
        }
    };
    let state = Arc::new(State {
        http: cfg.http.clone(),
        input: cfg.input.clone(),
        sink,
        permits: Arc::new(Semaphore::new(cfg.http.max_inflight_requests)),
        stopping: AtomicBool::new(false),
        telemetry: telemetry.clone(),
    });
    if let Sink::Kafka(_) = &state.sink {
        // The embedded pipeline writes its own status lines; here the counts live with the handlers.
        let (state, mut status) = (state.clone(), StatusLine::new("serve", cfg.output.status_seconds));
        rt.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                status.tick(&state.telemetry, String::new);
            }
        });
    }
    ready(bound);
    rt.block_on(serve(listener, state.clone(), &[stop, &pipeline_ended]));
    // Idle keep-alive connections are dropped with the runtime.
    rt.shutdown_timeout(Duration::from_secs(1));
    let mut summary = match (pipeline, &state.sink) {
        (Some(handle), Sink::Embedded(tx)) => {
            let _ = tx.send(Msg::Stop);
            handle.join().map_err(|_| PipelineError::WriterStopped)??
        }
        (_, Sink::Kafka(front)) => {
            front
                .producer
                .flush(Duration::from_secs(30))
                .map_err(|e| ServeError::Kafka(format!("waiting for the last acknowledgements: {e}")))?;
            telemetry.summary(HTTP_SOURCE)
        }
        (None, Sink::Embedded(_)) => Summary::default(),
    };
    summary.elapsed = started.elapsed();
    Ok(summary)
}

/// Accepts connections until one of `stops` is set, then waits (up to `drain_seconds`) for requests in
/// flight.
async fn serve(listener: tokio::net::TcpListener, state: Arc<State>, stops: &[&AtomicBool]) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let header_timeout = Duration::from_secs(state.http.request_timeout_seconds);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        eprintln!("vigil: serve: accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(state.clone(), req, remote));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(header_timeout)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
            _ = tick.tick() => {
                if stops.iter().any(|s| s.load(Ordering::Relaxed)) {
                    break;
                }
            }
        }
    }
    drop(listener);
    state.stopping.store(true, Ordering::SeqCst);
    let all = state.http.max_inflight_requests as u32;
    let drain = Duration::from_secs(state.http.drain_seconds);
    if tokio::time::timeout(drain, state.permits.acquire_many(all)).await.is_err() {
        eprintln!("vigil: serve: requests still in flight after {}s; stopping anyway", drain.as_secs());
    }
}

type Resp = Response<Full<Bytes>>;

fn json(status: StatusCode, body: &serde_json::Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, message: &str) -> Resp {
    json(status, &serde_json::json!({ "error": message }))
}

/// 429 or 503 with `Retry-After`: come back later, nothing was taken.
fn busy(status: StatusCode, retry_after: u64, message: &str) -> Resp {
    let mut r = error(status, message);
    r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after));
    r
}

async fn handle(state: Arc<State>, req: Request<Incoming>, remote: SocketAddr) -> Result<Resp, Infallible> {
    let resp = match (req.method(), req.uri().path()) {
        (&Method::POST, "/v1/events") => ingest(&state, req, remote).await,
        (_, "/v1/events") => {
            let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "POST events to /v1/events");
            r.headers_mut().insert(hyper::header::ALLOW, HeaderValue::from_static("POST"));
            r
        }
        (&Method::GET, "/healthz") if state.stopping.load(Ordering::Relaxed) => {
            busy(StatusCode::SERVICE_UNAVAILABLE, state.http.retry_after_seconds, "stopping")
        }
        (&Method::GET, "/healthz") => json(StatusCode::OK, &serde_json::json!({ "status": "ok" })),
        _ => error(StatusCode::NOT_FOUND, "no such endpoint: POST /v1/events, GET /healthz"),
    };
    Ok(resp)
}

/// A header's value as text, if it is present and readable.
fn header(req: &Request<Incoming>, name: hyper::header::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn ingest(state: &State, req: Request<Incoming>, remote: SocketAddr) -> Resp {
    let http = &state.http;
    if state.stopping.load(Ordering::Relaxed) {
        return busy(StatusCode::SERVICE_UNAVAILABLE, http.retry_after_seconds, "vigil is stopping");
    }
    let Ok(_permit) = state.permits.clone().try_acquire_owned() else {
        return busy(
            StatusCode::TOO_MANY_REQUESTS,
            http.retry_after_seconds,
            &format!("{} requests in flight already", http.max_inflight_requests),
        );
    };
    let too_large = || {
        let mut r = error(
            StatusCode::PAYLOAD_TOO_LARGE,
            &BodyError::TooLarge { limit: http.max_body_bytes, decoded: false }.to_string(),
        );
        // The rest of the body is not read: the connection cannot be reused.
        r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
        r
    };
    if header(&req, CONTENT_LENGTH)
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > http.max_body_bytes as u64)
    {
        return too_large();
    }
    let content_type = header(&req, CONTENT_TYPE).map(str::to_owned);
    let encoding = header(&req, CONTENT_ENCODING).map(str::to_owned);
    let timeout = Duration::from_secs(http.request_timeout_seconds);
    let raw =
        match tokio::time::timeout(timeout, Limited::new(req.into_body(), http.max_body_bytes).collect())
            .await
        {
            Err(_) => return error(StatusCode::REQUEST_TIMEOUT, "the body did not arrive in time"),
            Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => return too_large(),
            Ok(Err(e)) => return error(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")),
            Ok(Ok(c)) => c.to_bytes(),
        };
    // Decompressing, splitting and checking are CPU work: off the connection threads.
    let max_event = state.input.max_event_bytes;
    let max_decoded = http.max_decoded_bytes;
    let framed = tokio::task::spawn_blocking(move || -> Result<(Framing, Vec<u8>, Vec<Line>), BodyError> {
        let body = decode_body(encoding.as_deref(), &raw, max_decoded)?.into_owned();
        let framing = framing_for(content_type.as_deref(), &body)?;
        let items = split(framing, &body, max_event)?;
        Ok((framing, body, items))
    })
    .await;
    let (framing, body, items) = match framed {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
            return error(status, &e.to_string());
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("checking the body: {e}")),
    };
    let verdicts = match &state.sink {
        Sink::Embedded(tx) => {
            let (reply, answer) = oneshot::channel();
            if let Some(busy) = enqueue(tx, Batch { body, items, reply }, http.retry_after_seconds) {
                return busy;
            }
            match answer.await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, &e),
                Err(_) => {
                    return error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the pipeline stopped before archiving this request",
                    );
                }
            }
        }
        Sink::Kafka(front) => {
            let Some(_reservation) = front.reserve(items.len()) else {
                return busy(
                    StatusCode::TOO_MANY_REQUESTS,
                    http.retry_after_seconds,
                    "the producer queue is full; nothing in this request was taken",
                );
            };
            front.produce(state, body, items, remote).await
        }
    };
    respond(&verdicts, framing, http)
}

/// Hands a batch to the pipeline thread. A full queue (the pipeline is behind) or a stopped pipeline is
/// answered at once with `Retry-After` (the answer returned); the request never waits for room.
fn enqueue(tx: &SyncSender<Msg>, batch: Batch, retry_after: u64) -> Option<Resp> {
    tx.try_send(Msg::Batch(batch)).err().map(|e| match e {
        TrySendError::Full(_) => busy(
            StatusCode::TOO_MANY_REQUESTS,
            retry_after,
            "the pipeline is saturated; nothing in this request was taken",
        ),
        TrySendError::Disconnected(_) => {
            busy(StatusCode::SERVICE_UNAVAILABLE, retry_after, "the pipeline stopped")
        }
    })
}

/// The answer to a request: counts, the first `max_errors_listed` refused items, and a status that
/// says what to do: 200 (taken, maybe with refused items to fix), 400 (nothing valid), 429 or 503 (some
/// items not taken on this side: send those again after `Retry-After`).
fn respond(verdicts: &[Verdict], framing: Framing, http: &HttpConfig) -> Resp {
    let mut counts = [0u64; 4];
    let mut errors = Vec::new();
    let mut failed_code = None;
    for (i, v) in verdicts.iter().enumerate() {
        let (slot, problem) = match v {
            Verdict::Accepted => (0, None),
            Verdict::Blank => (1, None),
            Verdict::Rejected { code, detail } => (2, Some((code, detail))),
            Verdict::Failed { code, detail } => {
                failed_code.get_or_insert(*code);
                (3, Some((code, detail)))
            }
        };
        counts[slot] += 1;
        if let Some((code, detail)) = problem
            && errors.len() < http.max_errors_listed
        {
            let (key, at) = match framing {
                Framing::Ndjson => ("line", i + 1),
                Framing::Json => ("index", i),
            };
            errors.push(serde_json::json!({ key: at, "code": code, "error": detail }));
        }
    }
    let [accepted, blank, rejected, failed] = counts;
    let status = match failed_code {
        Some("saturated") => StatusCode::TOO_MANY_REQUESTS,
        Some(_) => StatusCode::SERVICE_UNAVAILABLE,
        None if accepted == 0 && rejected > 0 => StatusCode::BAD_REQUEST,
        None => StatusCode::OK,
    };
    let body = serde_json::json!({
        "accepted": accepted,
        "rejected": rejected,
        "failed": failed,
        "blank": blank,
        "errors": errors,
        "errors_omitted": (rejected + failed) as usize - errors.len(),
    });
    let mut r = json(status, &body);
    if failed > 0 {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(http.retry_after_seconds));
    }
    r
}

fn rejected(reason: &Invalid) -> Verdict {
    Verdict::Rejected { code: reason.code(), detail: reason.to_string() }
}

// ---- embedded: one pipeline thread owns the engine, the journal and the archive ----

/// One item on its way into the embedded pipeline: from a request, or read back from the journal.
struct Intake<'a> {
    /// The item as held: all of it, or (read back) the prefix journaled for a `too_large` one.
    bytes: &'a [u8],
    /// Its full size.
    size: u64,
    position: u64,
    received_ms: i64,
    /// What it was told when first taken; `None` for a new item, which is journaled.
    journaled: Option<journal::Verdict>,
}

/// The pipeline thread's state: the `http` source's lane and its intake journal.
struct Embedded {
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

impl Embedded {
    /// Opens the lane and the journal, and archives what an interrupted run took into its journal but
    /// had not archived (judged again, as a file is replayed from its checkpoint), before serving.
    fn open(cfg: &VigilConfig, telemetry: Arc<Telemetry>) -> Result<Embedded, PipelineError> {
        let source = cfg.input.source_name.clone().unwrap_or_else(|| HTTP_SOURCE.into());
        let outputs = FindingsFile::open(cfg.output.findings.as_deref())?;
        let lane = Lane::open(cfg, Origin::Named(source.clone()), outputs, telemetry.clone())?;
        let committed = lane.committed_position();
        let dir = cfg.archive.dir.join(JOURNAL_DIR).join(&source);
        let journal_err = |source| PipelineError::Journal { path: dir.clone(), source };
        let mut replay = Journal::open(&dir).map_err(journal_err)?;
        let mut e = Embedded {
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
            eprintln!(
                "vigil: archived {recovered} items an interrupted run had taken into {} (answered, not yet archived)",
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
        let closed = self.lane.close();
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
                    Ok(Msg::Batch(b)) => match self.take(&b.body, &b.items) {
                        Ok(verdicts) => answered.push((b.reply, verdicts)),
                        Err(e) => {
                            let _ = b.reply.send(Err(e.to_string()));
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
    fn take(&mut self, body: &[u8], items: &[Line]) -> Result<Vec<Verdict>, PipelineError> {
        let received_ms = now_ms();
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
                    let journaled = match reason {
                        Invalid::TooLarge { .. } => journal::Verdict::TooLarge { size: x.size },
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
    fn new(k: &KafkaConfig, http: &HttpConfig) -> Result<KafkaFront, ServeError> {
        let topic =
            k.topics.first().cloned().ok_or_else(|| ServeError::Kafka("kafka.topics is empty".into()))?;
        let dlq = k.dlq_for(&topic);
        if k.create_topics {
            let timeout = Duration::from_secs(30);
            k.ensure_topics(&[&topic], DEFAULT_PARTITIONS, timeout).map_err(ServeError::Kafka)?;
            k.ensure_output_topics(timeout).map_err(ServeError::Kafka)?;
        }
        let mut config = k.producer_config();
        // A request waits for its acknowledgements: a broker that is down fails them within the request
        // timeout (librdkafka's own default is five minutes), unless the options say otherwise.
        if !k.options.contains_key("message.timeout.ms") {
            config.set("message.timeout.ms", (http.request_timeout_seconds * 1000).to_string());
        }
        let producer = config
            .create_with_context(ReplyContext)
            .map_err(|e| ServeError::Kafka(format!("creating the producer: {e}")))?;
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
        state: &State,
        body: Vec<u8>,
        items: Vec<Line>,
        remote: SocketAddr,
    ) -> Vec<Verdict> {
        let max = state.input.max_event_bytes;
        let keep = state.input.dead_letter_payload_bytes;
        let remote = remote.to_string();
        let mut verdicts = Vec::with_capacity(items.len());
        let mut acks = Vec::with_capacity(items.len());
        let mut dlq_acks = Vec::new();
        let mut dedup = DedupWindow::new(0);
        let horizon = Horizon::now(state.input.max_future_seconds);
        let mut saturated = false;
        let mut counts = BatchCounts::default();
        for item in &items {
            let bytes = kept(&body, item, max);
            let (record_to, key, payload, reason) = match classify(bytes, item, max, horizon, &mut dedup) {
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
                eprintln!("vigil: serve: dead letter not produced to {}: {e}", self.dlq);
            }
        }
        // Items not taken (saturated, broker errors) are the client's to send again: not counted as read.
        state.telemetry.add_batch(&counts);
        verdicts
    }
}

/// Partitions of the event topic when `vigil serve` has to create it.
const DEFAULT_PARTITIONS: i32 = 8;

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Batch {
        Batch { body: Vec::new(), items: Vec::new(), reply: oneshot::channel().0 }
    }

    #[test]
    fn a_full_pipeline_queue_is_429_and_a_stopped_pipeline_503() {
        let (tx, rx) = mpsc::sync_channel(1);
        assert!(enqueue(&tx, batch(), 2).is_none());
        let full = enqueue(&tx, batch(), 2).unwrap();
        assert_eq!(full.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(full.headers().get(RETRY_AFTER).unwrap(), "2");
        drop(rx);
        let gone = enqueue(&tx, batch(), 2).unwrap();
        assert_eq!(gone.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    /// A response's status and JSON body.
    fn parts(r: Resp) -> (StatusCode, serde_json::Value) {
        let status = r.status();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let bytes = rt.block_on(r.into_body().collect()).unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[test]
    fn statuses_say_what_to_do() {
        let http = HttpConfig { max_errors_listed: 1, ..HttpConfig::default() };
        let bad = || Verdict::Rejected { code: "not_json", detail: "x".into() };
        let (status, b) =
            parts(respond(&[Verdict::Accepted, bad(), bad(), Verdict::Blank], Framing::Ndjson, &http));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (b["accepted"].as_u64(), b["rejected"].as_u64(), b["blank"].as_u64()),
            (Some(1), Some(2), Some(1))
        );
        assert_eq!((b["errors"][0]["line"].as_u64(), b["errors_omitted"].as_u64()), (Some(2), Some(1)));
        let (status, b) = parts(respond(&[bad()], Framing::Json, &http));
        assert_eq!((status, b["errors"][0]["index"].as_u64()), (StatusCode::BAD_REQUEST, Some(0)));
        let failed = Verdict::Failed { code: "saturated", detail: "full".into() };
        let r = respond(&[Verdict::Accepted, failed], Framing::Ndjson, &http);
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers().get(RETRY_AFTER).unwrap(), "1");
        let down = Verdict::Failed { code: "produce_failed", detail: "down".into() };
        assert_eq!(respond(&[down], Framing::Ndjson, &http).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(respond(&[], Framing::Ndjson, &http).status(), StatusCode::OK);
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

//! The edge around the `respond` crate: one [`Control`] per process, shared by its lanes, its server
//! and its webhook sender.
//!
//! - **Judging**: a lane hands each batch's events and findings to [`Control::judge`]; the board moves
//!   breakers; the transitions are appended and synced to the control log (the outbox) before `judge`
//!   returns, so they are durable before the checkpoint that covers the events behind them.
//! - **Commands**: operators' halts and resumes go through [`Control::command`], the same board, the
//!   same log.
//! - **Checks**: gateways read [`Control::check`], a copy of the halts in force behind a read lock, fed
//!   the same transitions, so a check never waits on the judge.
//! - **Delivery**: every transition an endpoint wants is queued to the sender once it is in the log;
//!   each ending is logged, counted, and archived in `control/` by the next lane flush.
//! - **On start** the log is read back: every halt is in force again before the first event is judged,
//!   and every delivery still owed is queued again with the same webhook-id.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant};
use vigil_ingest::Archive;

use serde::Serialize;
use vigil_detect::{Baseline, Engine};
use vigil_ingest::outbox::{Outbox, OutboxError};
use vigil_respond::{Board, Command, Halt, Response, Unchanged, View};
use vigil_schemas::Event;
use vigil_schemas::rows::{Action, BreakerState, ControlRecord, DeliveryOutcome, Finding, Transition};

use crate::config::VigilConfig;
use crate::deliver::{Endpoint, Sender};
use crate::telemetry::Telemetry;

/// Why the control plane cannot start or go on.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The control log.
    #[error(transparent)]
    Log(#[from] OutboxError),
    /// The archive's `control/` table.
    #[error(transparent)]
    Archive(#[from] vigil_ingest::ArchiveError),
    /// `[respond]`.
    #[error(transparent)]
    Config(#[from] vigil_respond::ConfigError),
    /// A `[[webhook]]` endpoint (its secret, its URL).
    #[error("{0}")]
    Webhook(String),
    /// The sender thread could not start.
    #[error("the webhook sender: {0}")]
    Sender(std::io::Error),
}

/// Locks, taking over a lock whose holder panicked (the state behind every lock here stays whole).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How far one lane has taken and made durable (counted in batches), for "answer once archived".
#[derive(Debug, Default)]
pub struct Mark {
    taken: AtomicU64,
    durable: AtomicU64,
}

impl Mark {
    /// A batch was taken; returns its number.
    pub fn took(&self) -> u64 {
        self.taken.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Every batch up to `seq` is durable.
    pub fn durable_to(&self, seq: u64) {
        self.durable.fetch_max(seq, Ordering::AcqRel);
    }

    /// The newest batch number taken.
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Acquire)
    }
}

/// Where one transition's deliveries stand.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryState {
    /// The endpoint.
    pub endpoint: String,
    /// `pending`, or how it ended.
    pub status: &'static str,
    /// When it ended (UTC ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<i64>,
    /// Why not, or how long it took.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// What an operator's command did.
#[derive(Debug, Clone, Serialize)]
pub struct Answer {
    /// The transition it made.
    pub transition: Transition,
    /// The agents it covers now (for a cohort or the fleet: every one known).
    pub agents: Vec<String>,
    /// Whether every event received before it is in the archive.
    pub archived: bool,
    /// Each endpoint's delivery so far.
    pub deliveries: Vec<DeliveryState>,
}

/// The archive source name of the control log's records (no input may take it).
pub const CONTROL_SOURCE: &str = vigil_ingest::source::RESERVED_SOURCE;

/// Deliveries remembered for the API (the log and the archive have them all).
const DELIVERIES_KEPT: usize = 100_000;
/// Findings remembered per agent for `GET /v1/agents/{id}`.
const FINDINGS_PER_AGENT: usize = 8;

#[derive(Debug, Default)]
struct Book {
    /// Transition id → its deliveries, in the order transitions were queued.
    deliveries: HashMap<String, Vec<DeliveryState>>,
    order: VecDeque<String>,
    /// Agent → its latest transitions.
    history: HashMap<String, VecDeque<Transition>>,
    /// Agent → its latest findings.
    findings: HashMap<String, VecDeque<Finding>>,
}

/// An open lane as the control plane sees it: its marks and its engine (gone when the lane is dropped).
type LaneRef = (Weak<Mark>, Weak<Mutex<Engine>>);

/// See the module docs.
pub struct Control {
    board: Mutex<Board>,
    view: RwLock<View>,
    log: Mutex<Outbox>,
    endpoints: Vec<Endpoint>,
    sender: Mutex<Option<Sender>>,
    book: Mutex<Book>,
    owed: Mutex<usize>,
    owed_changed: Condvar,
    lanes: Mutex<Vec<LaneRef>>,
    hurry: AtomicUsize,
    telemetry: Arc<Telemetry>,
    history_per_agent: usize,
    halt_wait: Duration,
    /// The control log's directory.
    pub dir: PathBuf,
    /// `control/`: every record of the log, named by log positions (source `vigil-control`), so a record is
    /// archived exactly once whatever crashed when.
    archive: Mutex<Archive>,
    last_archive_flush: Mutex<Instant>,
    /// Where this process's transitions are published for other processes (a Kafka member's control
    /// topic), if anywhere.
    publisher: RwLock<Option<Publisher>>,
}

/// Publishes one transition to the other members.
pub type Publisher = Box<dyn Fn(&Transition) + Send + Sync>;

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Control {
    /// Opens the control log, restores every breaker from it, and starts the webhook sender with every
    /// delivery still owed queued first.
    pub fn open(cfg: &VigilConfig, telemetry: Arc<Telemetry>) -> Result<Arc<Control>, ControlError> {
        let endpoints = cfg
            .webhook
            .iter()
            .map(Endpoint::resolve)
            .collect::<Result<Vec<_>, _>>()
            .map_err(ControlError::Webhook)?;
        let dir = cfg.control.dir(&cfg.archive);
        let owed_to = |t: &Transition, ended: &HashSet<&str>| {
            endpoints.iter().any(|e| e.wants(t) && !ended.contains(e.name.as_str()))
        };
        let (log, recovered, slot) = Outbox::open_free_slot(&dir, cfg.control.compact_bytes, owed_to)?;
        let mut board = Board::new(&cfg.respond)?;
        let mut book = Book::default();
        let mut ended: HashMap<String, HashSet<String>> = HashMap::new();
        // Each slot (each process sharing the archive root) archives its log as a source of its own.
        let source = if slot == 0 { CONTROL_SOURCE.to_owned() } else { format!("{CONTROL_SOURCE}.{slot}") };
        let (mut archive, checkpoint) = Archive::open(&cfg.archive, &source, 0)?;
        let archived = checkpoint.map_or(0, |c| c.committed_position);
        let mut transitions = Vec::new();
        for (seq, r) in recovered.records {
            if seq > archived {
                archive.push_control(&r, seq);
            }
            match r {
                ControlRecord::Transition(t) => {
                    board.apply(&t);
                    transitions.push(t);
                }
                ControlRecord::Delivery(d) => {
                    ended.entry(d.transition_id.clone()).or_default().insert(d.endpoint.clone());
                    let entry = book.deliveries.entry(d.transition_id.clone()).or_default();
                    entry.push(DeliveryState {
                        endpoint: d.endpoint,
                        status: d.outcome.as_str(),
                        at: Some(d.ts),
                        detail: d.detail,
                    });
                }
            }
        }
        for e in &endpoints {
            telemetry.endpoint(&e.name);
        }
        let view = board.view().clone();
        let control = Arc::new(Control {
            board: Mutex::new(board),
            view: RwLock::new(view),
            log: Mutex::new(log),
            endpoints: endpoints.clone(),
            sender: Mutex::new(None),
            book: Mutex::new(book),
            owed: Mutex::new(0),
            owed_changed: Condvar::new(),
            lanes: Mutex::new(Vec::new()),
            hurry: AtomicUsize::new(0),
            telemetry,
            history_per_agent: cfg.control.history_per_agent,
            halt_wait: Duration::from_millis(cfg.control.halt_archive_wait_ms),
            dir,
            archive: Mutex::new(archive),
            last_archive_flush: Mutex::new(Instant::now()),
            publisher: RwLock::new(None),
        });
        for t in &transitions {
            control.remember(t);
        }
        // The archive's control/ catches up on the archive's schedule (files every `flush_seconds`).
        let weak = Arc::downgrade(&control);
        let every = Duration::from_secs_f64(cfg.archive.flush_seconds.clamp(0.05, 3600.0));
        std::thread::Builder::new()
            .name("vigil-control-archive".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(every.min(Duration::from_millis(500)));
                    let Some(c) = weak.upgrade() else { break };
                    if c.last_archive_flush.lock().unwrap_or_else(|p| p.into_inner()).elapsed() < every {
                        continue;
                    }
                    if let Err(e) = c.flush_archive() {
                        tracing::warn!(error = %e, "archiving control records failed (kept in the control log; retried)");
                    }
                }
            })
            .map_err(ControlError::Sender)?;
        control.count_halts();
        if !endpoints.is_empty() {
            let weak = Arc::downgrade(&control);
            let report: crate::deliver::Report = Arc::new(move |outcome, took| {
                if let Some(c) = weak.upgrade() {
                    c.ended(outcome, took);
                }
            });
            let sender = Sender::start(endpoints, report).map_err(ControlError::Sender)?;
            *lock(&control.sender) = Some(sender);
            let empty = HashSet::new();
            for t in transitions {
                let done = ended.get(&t.transition_id).unwrap_or(&empty);
                control.queue(&t, |name| !done.contains(name));
            }
        }
        Ok(control)
    }

    /// Judges one batch: the board runs on the engine's findings and the batch's events; its own
    /// findings are appended to `findings`, its transitions to `transitions`, already durable in the
    /// log and queued for delivery.
    pub fn judge(
        &self,
        events: &[Event<'_>],
        findings: &mut Vec<Finding>,
        transitions: &mut Vec<Transition>,
    ) -> Result<(), ControlError> {
        let mut resp = Response::default();
        {
            let mut board = lock(&self.board);
            board.process(events, findings, &mut resp);
            if !resp.transitions.is_empty() {
                let records: Vec<ControlRecord> =
                    resp.transitions.iter().cloned().map(ControlRecord::Transition).collect();
                let first = lock(&self.log).append(&records)?;
                self.archive_records(first, &records);
            }
        }
        self.mirror(&resp);
        for t in &resp.transitions {
            self.remember(t);
            self.queue(t, |_| true);
            self.publish(t);
        }
        if !resp.findings.is_empty() || !findings.is_empty() {
            let mut book = lock(&self.book);
            for f in findings.iter().chain(&resp.findings) {
                let list = book.findings.entry(f.agent_id.clone()).or_default();
                list.retain(|old| old.finding_id != f.finding_id);
                list.push_back(f.clone());
                while list.len() > FINDINGS_PER_AGENT {
                    list.pop_front();
                }
            }
        }
        findings.extend(resp.findings);
        transitions.extend(resp.transitions);
        Ok(())
    }

    /// Carries out an operator's command: the board moves, the log has it, the lanes are hurried to
    /// make every event received before it durable (at most `halt_archive_wait_ms`), and the answer
    /// says where each endpoint's delivery stands.
    pub fn command(&self, cmd: &Command) -> Result<Answer, CommandError> {
        let mut resp = Response::default();
        let t = {
            let mut board = lock(&self.board);
            // The command moves a copy; the board takes it only once the log has the transition, so a
            // log that refuses (a full disk) leaves the board, the check view and webhooks as they were.
            // Commands are rare: the copy costs little.
            let mut next = board.clone();
            let t = next.command(cmd, &mut resp).map_err(CommandError::Unchanged)?;
            let record = [ControlRecord::Transition(t.clone())];
            let first = lock(&self.log).append(&record).map_err(CommandError::Log)?;
            *board = next;
            self.archive_records(first, &record);
            t
        };
        self.mirror(&resp);
        self.remember(&t);
        self.queue(&t, |_| true);
        self.publish(&t);
        let deadline = Instant::now() + self.halt_wait;
        let archived = self.wait_archived(deadline) && self.flush_archive().is_ok();
        // A moment for the deliveries too, within what is left of the wait (at most a second).
        let soon = Instant::now() + Duration::from_secs(1);
        self.wait_delivered(&t.transition_id, deadline.min(soon));
        let agents = match &cmd.target {
            vigil_respond::Target::Agent(a) => vec![a.clone()],
            vigil_respond::Target::Cohort(f, v) => self.view().members(*f, v),
            vigil_respond::Target::Fleet => Vec::new(),
        };
        Ok(Answer { deliveries: self.deliveries(&t.transition_id), transition: t, agents, archived })
    }

    /// Publishes every transition this process makes from now on (a Kafka member: the control topic).
    pub fn set_publisher(&self, p: Publisher) {
        *self.publisher.write().unwrap_or_else(|p| p.into_inner()) = Some(p);
    }

    /// Whether a publisher is set (a Kafka member's control bus already started).
    pub fn has_publisher(&self) -> bool {
        self.publisher.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    fn publish(&self, t: &Transition) {
        if let Some(p) = self.publisher.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            p(t);
        }
    }

    /// Applies a transition another process made (read from the control topic): the breaker moves and
    /// the check view follows, unless this process already has a newer move of that breaker. Not logged
    /// or delivered here: the process that made it did both. Returns whether it was applied.
    pub fn apply_remote(&self, t: &Transition) -> bool {
        if !lock(&self.board).apply(t) {
            return false;
        }
        self.view.write().unwrap_or_else(|p| p.into_inner()).apply(t);
        self.remember(t);
        self.count_halts();
        true
    }

    /// The halt that stops `agent` now, if any (a copy: the halt's details).
    pub fn check(&self, agent: &str) -> Option<Halt> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).verdict(agent).cloned()
    }

    /// A read lock on the halts in force and the agents' factors.
    pub fn view(&self) -> std::sync::RwLockReadGuard<'_, View> {
        self.view.read().unwrap_or_else(|p| p.into_inner())
    }

    /// One agent as the API shows it: breaker, halt in force, history, latest findings, factors.
    pub fn agent(&self, agent: &str) -> Option<serde_json::Value> {
        let (state, trip, counters) = {
            let board = lock(&self.board);
            (board.state(agent), board.open_trip(agent).cloned(), board.counters(agent))
        };
        let view = self.view();
        let factors = view.factors(agent).cloned();
        let halt = view.verdict(agent).cloned();
        drop(view);
        // Before the book's lock: a lane holds its engine's lock while it processes, never the book's.
        let baseline = self.baseline(agent);
        let book = lock(&self.book);
        let history: Vec<&Transition> =
            book.history.get(agent).map(|h| h.iter().collect()).unwrap_or_default();
        let findings: Vec<&Finding> =
            book.findings.get(agent).map(|f| f.iter().collect()).unwrap_or_default();
        if factors.is_none() && history.is_empty() && halt.is_none() && baseline.is_none() {
            return None;
        }
        let named = factors.map(|f| {
            vigil_schemas::rows::Factor::ALL
                .iter()
                .filter_map(|x| vigil_respond::factor_of(&f, *x).map(|v| (x.as_str(), v.to_owned())))
                .collect::<HashMap<_, _>>()
        });
        let deliveries: HashMap<&str, Vec<DeliveryState>> = history
            .iter()
            .map(|t| {
                (t.transition_id.as_str(), book.deliveries.get(&t.transition_id).cloned().unwrap_or_default())
            })
            .collect();
        Some(serde_json::json!({
            "agent_id": agent,
            "breaker": state.as_str(),
            "open": trip,
            "halted": halt,
            "factors": named,
            "history": history,
            "deliveries": deliveries,
            "findings": findings,
            "counters": counters,
            "baseline": baseline,
        }))
    }

    /// The mode of an agent's open breaker (`shadow` and `warn` breakers are open only on the record).
    pub fn open_mode(&self, agent: &str) -> Option<vigil_schemas::rows::Mode> {
        lock(&self.board).open_trip(agent).map(|t| t.mode)
    }

    /// Agents with a breaker not closed or a halt in force, sorted: (agent, breaker, halt).
    pub fn agents(&self) -> Vec<(String, BreakerState, Option<Halt>)> {
        // Every agent halt in the view moved the board too (`emit` and `apply` keep them together), so
        // the board's breakers not closed are all there is to list, already sorted.
        let not_closed: Vec<(String, BreakerState)> =
            lock(&self.board).not_closed().into_iter().map(|(a, s)| (a.to_owned(), s)).collect();
        let view = self.view();
        not_closed
            .into_iter()
            .map(|(a, s)| {
                let h = view.verdict(&a).cloned();
                (a, s, h)
            })
            .collect()
    }

    /// Every agent known (seen in events), sorted.
    pub fn known_agents(&self) -> Vec<String> {
        let mut all: Vec<String> = self.view().agent_ids().map(str::to_owned).collect();
        all.sort_unstable();
        all
    }

    /// Where one transition's deliveries stand, an entry per endpoint that wants it.
    pub fn deliveries(&self, transition_id: &str) -> Vec<DeliveryState> {
        lock(&self.book).deliveries.get(transition_id).cloned().unwrap_or_default()
    }

    /// The endpoints' names.
    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints.iter().map(|e| e.name.clone()).collect()
    }

    fn mirror(&self, resp: &Response) {
        if resp.transitions.is_empty() && resp.factors.is_empty() {
            return;
        }
        let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
        for (agent, f) in &resp.factors {
            view.set_factors(agent, f.clone());
        }
        for t in &resp.transitions {
            view.apply(t);
        }
        drop(view);
        for t in &resp.transitions {
            self.telemetry.transition(t);
        }
        if !resp.transitions.is_empty() {
            self.count_halts();
        }
    }

    fn count_halts(&self) {
        let view = self.view();
        let (a, c, f) = view.halts();
        self.telemetry.halts_in_force(a.len(), c.len(), f.is_some());
    }

    /// Keeps `t` in the history of each agent it concerns: the agents it names, and, for a cohort's
    /// resume (which names none), every agent whose history holds that cohort's halt as its latest
    /// move, so an agent's history says when a cohort halt that named it was lifted. The fleet's moves
    /// are not kept per agent: they would be in every agent's history (`/v1/halts` has them).
    fn remember(&self, t: &Transition) {
        let mut book = lock(&self.book);
        let mut agents: Vec<String> = t.agent_id.iter().chain(&t.agents).cloned().collect();
        if t.action == Action::CohortResume {
            let same_cohort = |x: &&Transition| {
                matches!(x.action, Action::CohortHalt | Action::CohortResume)
                    && (&x.factor, &x.value) == (&t.factor, &t.value)
            };
            let halted = book.history.iter().filter(|(_, h)| {
                h.iter().rev().find(same_cohort).is_some_and(|x| x.action == Action::CohortHalt)
            });
            agents.extend(halted.map(|(agent, _)| agent.clone()));
            agents.sort_unstable();
            agents.dedup();
        }
        for a in agents {
            let h = book.history.entry(a.to_owned()).or_default();
            h.push_back(t.clone());
            while h.len() > self.history_per_agent {
                h.pop_front();
            }
        }
    }

    /// Queues `t` to every endpoint that wants it and `still_owed` says is owed.
    fn queue(&self, t: &Transition, still_owed: impl Fn(&str) -> bool) {
        let sender = lock(&self.sender);
        let Some(sender) = sender.as_ref() else { return };
        let shared = Arc::new(t.clone());
        for e in &self.endpoints {
            if !e.wants(t) || !still_owed(&e.name) {
                continue;
            }
            {
                let mut book = lock(&self.book);
                let list = book.deliveries.entry(t.transition_id.clone()).or_default();
                if !list.iter().any(|d| d.endpoint == e.name) {
                    list.push(DeliveryState {
                        endpoint: e.name.clone(),
                        status: "pending",
                        at: None,
                        detail: String::new(),
                    });
                }
                if book.order.back() != Some(&t.transition_id) {
                    book.order.push_back(t.transition_id.clone());
                }
                while book.order.len() > DELIVERIES_KEPT {
                    if let Some(old) = book.order.pop_front() {
                        book.deliveries.remove(&old);
                    }
                }
            }
            // Counted before it is sent: the sender may report its end at once.
            {
                let mut owed = lock(&self.owed);
                *owed += 1;
                self.telemetry.owed(&e.name, 1);
            }
            if !sender.send(&e.name, shared.clone()) {
                let mut owed = lock(&self.owed);
                *owed = owed.saturating_sub(1);
                self.telemetry.owed(&e.name, -1);
            }
        }
    }

    /// A delivery ended: logged, counted, kept for the archive and the API.
    fn ended(&self, outcome: DeliveryOutcome, took: Duration) {
        self.telemetry.delivery(&outcome.endpoint, outcome.outcome, outcome.attempts, took.as_secs_f64());
        let record = [ControlRecord::Delivery(outcome.clone())];
        match lock(&self.log).append(&record) {
            Ok(first) => self.archive_records(first, &record),
            // The delivery happened; only its record is missing. A restart delivers it again with the
            // same webhook-id, which receivers dedupe.
            Err(e) => {
                tracing::warn!(error = %e, transition_id = %outcome.transition_id, endpoint = %outcome.endpoint, "could not log a webhook delivery outcome")
            }
        }
        {
            let mut book = lock(&self.book);
            if let Some(list) = book.deliveries.get_mut(&outcome.transition_id)
                && let Some(d) = list.iter_mut().find(|d| d.endpoint == outcome.endpoint)
            {
                d.status = outcome.outcome.as_str();
                d.at = Some(outcome.ts);
                d.detail = outcome.detail.clone();
            }
        }
        let mut owed = lock(&self.owed);
        *owed = owed.saturating_sub(1);
        self.telemetry.owed(&outcome.endpoint, -1);
        self.owed_changed.notify_all();
    }

    /// Deliveries not ended yet.
    pub fn owed(&self) -> usize {
        *lock(&self.owed)
    }

    /// Waits until every delivery has ended or `grace` passed; returns what is still owed.
    pub fn drain(&self, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        let mut owed = lock(&self.owed);
        while *owed > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            owed = self.owed_changed.wait_timeout(owed, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        *owed
    }

    fn wait_delivered(&self, transition_id: &str, deadline: Instant) {
        let mut owed = lock(&self.owed);
        loop {
            let pending = self.deliveries(transition_id).iter().any(|d| d.status == "pending");
            let left = deadline.saturating_duration_since(Instant::now());
            if !pending || left.is_zero() {
                return;
            }
            owed = self.owed_changed.wait_timeout(owed, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    /// Writes what the control archive holds to `control/` now (files, then its checkpoint).
    pub fn flush_archive(&self) -> Result<(), ControlError> {
        let mut a = lock(&self.archive);
        *lock(&self.last_archive_flush) = Instant::now();
        if a.has_uncommitted() {
            let started = Instant::now();
            let r = a.flush(vigil_ingest::archive::no_state(), crate::pipeline::now_ms())?;
            self.telemetry.flushed(r.files.len() as u64, r.bytes, started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    /// The end of a run: waits up to `grace` for the deliveries still owed, then archives everything
    /// the log has. Returns the deliveries still owed (they stay in the log for the next start).
    pub fn close(&self, grace: Duration) -> Result<usize, ControlError> {
        let owed = self.drain(grace);
        self.flush_archive()?;
        Ok(owed)
    }

    fn archive_records(&self, first: u64, records: &[ControlRecord]) {
        let mut a = lock(&self.archive);
        for (i, r) in records.iter().enumerate() {
            a.push_control(r, first + i as u64);
        }
    }

    /// A lane registers to be waited for by commands, and its engine to be asked for baselines.
    pub fn register(&self, engine: &Arc<Mutex<Engine>>) -> Arc<Mark> {
        let m = Arc::new(Mark::default());
        let mut lanes = lock(&self.lanes);
        lanes.retain(|(w, _)| w.strong_count() > 0);
        lanes.push((Arc::downgrade(&m), Arc::downgrade(engine)));
        m
    }

    /// What the open lanes' engines learned about `agent`: from the lane that has seen the most of it
    /// (an agent's events usually all go to one lane; a lane is locked only while it is read).
    pub fn baseline(&self, agent: &str) -> Option<Baseline> {
        let engines: Vec<Arc<Mutex<Engine>>> =
            lock(&self.lanes).iter().filter_map(|(_, e)| e.upgrade()).collect();
        engines.iter().filter_map(|e| lock(e).baseline(agent)).max_by_key(|b| (b.windows, b.events))
    }

    /// Whether a command waits for lanes to make what they took durable.
    pub fn hurry(&self) -> bool {
        self.hurry.load(Ordering::Acquire) > 0
    }

    /// Waits until every lane has made durable every batch it had taken when this was called.
    fn wait_archived(&self, deadline: Instant) -> bool {
        let marks: Vec<(Arc<Mark>, u64)> = lock(&self.lanes)
            .iter()
            .filter_map(|(m, _)| m.upgrade())
            .map(|m| {
                let t = m.taken();
                (m, t)
            })
            .collect();
        self.hurry.fetch_add(1, Ordering::AcqRel);
        let done = loop {
            if marks.iter().all(|(m, t)| m.durable.load(Ordering::Acquire) >= *t) {
                break true;
            }
            if Instant::now() >= deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        self.hurry.fetch_sub(1, Ordering::AcqRel);
        done
    }
}

/// Why a command did nothing.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Nothing to do, or the command was incomplete.
    #[error(transparent)]
    Unchanged(Unchanged),
    /// The control log refused the transition: nothing changed for gateways or webhooks.
    #[error(transparent)]
    Log(OutboxError),
}

impl CommandError {
    /// Whether the caller asked for something already so (or missing a field), not a fault of vigil.
    pub fn is_unchanged(&self) -> bool {
        matches!(self, CommandError::Unchanged(_))
    }
}

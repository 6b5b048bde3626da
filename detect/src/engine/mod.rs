//! The engine: per-agent state, the detectors, and the folding of findings into incidents. What a
//! finding does to an agent (breakers, modes) is the `respond` crate's business.
//!
//! Everything here is synchronous and deterministic. The only clock is event time, which arrives with the
//! events. Two kinds of check run:
//!
//! * **per event, at once**: `policy_violation`, `rate_limit`, `session_limit`, `shared_credential`.
//!   They need no baseline, so they judge every event, late ones included (a back-dated event must not
//!   slip past the allow-list).
//! * **per window, when the watermark closes it**: `volume_spike`, `data_spike`, `denied_burst`,
//!   `scope_drift`, `model_change`. Events add to commutative per-window aggregates; a window closes
//!   when the watermark passes its end, and windows close in `(end, agent_id)` order. The watermark is
//!   the event time of the `watermark_quorum`-th newest agent (never more than `max_skew_seconds`
//!   behind the newest event) minus the lateness tolerance: one agent whose clock runs ahead, or one
//!   sender stamping events in the future, cannot make the rest of the fleet late. So the same events, in any order and any batch split within the
//!   tolerance, close the same windows with the same contents in the same order, and give the same
//!   findings. Events behind the watermark are counted as late and never judged by a window twice.
//!
//! Findings fold per agent and kind into one per cooldown period, aligned on event time, so ids do not
//! depend on which event of an incident arrived first.
//!
//! This file holds the engine (intake, windows, the sweep, folding); `state.rs` what it keeps; one file
//! per detector family (`volume`, `scope`, `model`, `limits`), and `evidence.rs` how findings
//! are worded.

use std::collections::{BTreeMap, HashMap};

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use vigil_schemas::{Event, Outcome};

use crate::budget::{self, Spend};
use crate::config::{Compiled, ConfigError, DetectConfig, SpikeConfig};
use crate::finding::{Finding, FindingKind, Severity, finding_id};
use crate::keys::{KeyTable, PeerTable, generalised, stable_hash};
use crate::rhythm::{Episode, Rhythm};
use crate::stats::{round_unsigned, score};
use crate::tail::{Judgement, Tail};

mod baseline;
mod evidence;
mod limits;
mod model;
mod scope;
mod state;
mod volume;

use evidence::*;
use limits::*;
use model::*;
use scope::*;
use state::*;
use volume::*;

pub use baseline::{Baseline, Measure};

const MINUTE_MS: i64 = 60_000;
/// Sample event ids kept per window for evidence (the earliest by event time, then id).
const SAMPLES: usize = 5;
/// New models kept per window (and remembered per agent, in `Recent`).
const MAX_MODELS: usize = 4;
/// Closed window buffers kept for reuse.
const POOL: usize = 4096;
/// Events (or windows closing) whose agents' states are read ahead together (`Engine::warm`): the cache
/// misses of that many overlap.
const WARM_GROUP: usize = 16;
/// Below this many agents their states (~700 bytes each) fit in a core's L2 cache, and reading ahead
/// only costs: at 1,000 agents it made the detect bench a quarter slower, at 10,000 a third faster.
const WARM_FROM_AGENTS: usize = 2048;
/// Open incidents remembered per agent and kind (a late event may land in the previous period).
const OPEN_PER_KIND: usize = 2;

/// What one call to [`Engine::process`] produced.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Output {
    /// New findings, and updates of open ones (same `finding_id`, raised severity).
    pub findings: Vec<Finding>,
    /// Agents this engine found covered by no policy, each the first time it worked out the agent's
    /// coverage: the allow-list checks are off for them, which an operator must hear about.
    pub uncovered: Vec<String>,
}

impl Output {
    /// Empties both lists, keeping their capacity.
    pub fn clear(&mut self) {
        self.findings.clear();
        self.uncovered.clear();
    }
}

/// Counters the engine keeps about its own work.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Events judged.
    pub events: u64,
    /// Findings emitted, updates included.
    pub findings: u64,
    /// Findings folded into an open one of the same incident.
    pub suppressed: u64,
    /// Events behind the watermark: archived, judged by the per-event checks, not counted in windows.
    pub late: u64,
    /// Agent windows closed and judged.
    #[serde(default)]
    pub windows: u64,
    /// Events of agents beyond `max_agents`: archived, not judged.
    #[serde(default)]
    pub overflow: u64,
    /// Agents forgotten after `forget_idle_hours` without an event.
    #[serde(default)]
    pub forgotten: u64,
}

/// The detection engine. Feed it batches of events; it returns findings.
///
/// ```
/// use vigil_detect::{DetectConfig, Engine, Output};
/// let mut cfg = DetectConfig::default();
/// cfg.rate_limit_per_minute = 2;
/// let mut engine = Engine::new(&cfg).unwrap();
/// let line = br#"{"event_id":"e","ts":0,"agent_id":"a","action":"api.call","resource":"https://x/"}"#;
/// let ev = vigil_schemas::decode(line, 1 << 20).unwrap();
/// let mut out = Output::default();
/// engine.process(&[ev.clone(), ev.clone(), ev], &mut out);
/// assert_eq!(out.findings[0].kind.as_str(), "rate_limit");
/// ```
#[derive(Debug)]
pub struct Engine {
    cfg: Compiled,
    /// Agent id to slot. Ids of up to 24 bytes are held in the table's own entries, so a lookup
    /// compares them without a load from elsewhere in the heap; the hash is keyed per process.
    index: HashMap<CompactString, u32, ahash::RandomState>,
    ids: Vec<CompactString>,
    /// `stable_hash` of each id: windows closing together close in (hash, id) order, a deterministic
    /// order cheaper to sort than the ids themselves.
    id_hash: Vec<u64>,
    /// Window buffers of closed windows, reused so a busy fleet does not allocate per window. Boxed,
    /// as in an agent's open windows: a window goes to an agent and back by its pointer.
    #[allow(clippy::vec_box)]
    pool: Vec<Box<Window>>,
    agents: Vec<AgentState>,
    roles: Vec<(Box<str>, PeerTable)>,
    /// Per role (same index), what one of its agents does per window.
    peer_levels: Vec<PeerLevels>,
    role_index: HashMap<Box<str>, u16>,
    credentials: HashMap<u64, CredentialOwner>,
    /// (window end, agent) of every open window.
    closing: Closing,
    /// The newest event time not behind the watermark.
    max_ts: Option<i64>,
    /// The newest event time of the `watermark_quorum` newest agents, newest first (see [`Engine::watermark`]).
    front: Vec<(u32, i64)>,
    /// The watermark never goes below this: where a restored snapshot or [`Engine::finish`] left it.
    floor: Option<i64>,
    /// The watermark, worked out again whenever `max_ts`, `front` or `floor` move.
    wm: Option<i64>,
    /// Slots of forgotten agents (their id emptied), reused before the tables grow.
    free: Vec<u32>,
    /// The watermark at which idle agents are next looked for.
    next_forget: i64,
    /// The cooldown period of the last `agent_overflow` finding.
    overflow_said: Option<u64>,
    stats: Stats,
    scratch: String,
    due: Vec<(i64, u32)>,
    found: Vec<(Finding, u64)>,
    counts: Vec<(u64, u32)>,
    /// Spend per (agent, budget index) in the current period, for `budget_limit`.
    spend: HashMap<(u32, u16), Spend>,
    /// From how many agents on their states are read ahead (`WARM_FROM_AGENTS`; tests change it).
    pub(crate) warm_from: usize,
}

/// A serialisable copy of the engine's state, taken with the source positions it reflects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    agents: BTreeMap<String, AgentState>,
    #[serde(default)]
    roles: Vec<(String, PeerTable)>,
    /// Per role, what one of its agents does per window (absent in snapshots of older versions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    peer_levels: Vec<(String, PeerLevels)>,
    /// (credential hash, owner agent, first use).
    #[serde(default)]
    credentials: Vec<(u64, String, i64)>,
    #[serde(default)]
    max_ts: Option<i64>,
    /// (agent, newest event time) of the newest agents, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    front: Vec<(String, i64)>,
    /// The watermark when the snapshot was taken (absent in snapshots of older versions).
    #[serde(default)]
    watermark: Option<i64>,
    stats: Stats,
    /// (agent, budget name, spend in its current period).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    spend: Vec<(String, String, Spend)>,
}

/// The parts of an engine that its [`Snapshot`] holds, borrowed from a [`Frozen`] copy of them, and
/// serialised as that snapshot (same fields, same shapes) without building one.
struct SnapshotView<'a> {
    ids: &'a [CompactString],
    agents: &'a [AgentState],
    roles: &'a [(Box<str>, PeerTable)],
    peer_levels: &'a [PeerLevels],
    credentials: &'a HashMap<u64, CredentialOwner>,
    max_ts: Option<i64>,
    front: &'a [(u32, i64)],
    wm: Option<i64>,
    stats: Stats,
    spend: &'a [(String, String, Spend)],
}

impl Serialize for SnapshotView<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        struct Agents<'a>(&'a SnapshotView<'a>);
        impl Serialize for Agents<'_> {
            fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
                let v = self.0;
                ser.collect_map(
                    v.ids.iter().zip(v.agents).filter(|(id, _)| !id.is_empty()).map(|(id, a)| (&**id, a)),
                )
            }
        }
        struct Seq<I>(std::cell::RefCell<Option<I>>);
        impl<I: Iterator<Item = T>, T: Serialize> Serialize for Seq<I> {
            fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
                let items =
                    self.0.borrow_mut().take().ok_or_else(|| serde::ser::Error::custom("used twice"))?;
                ser.collect_seq(items)
            }
        }
        fn seq<I>(items: I) -> Seq<I> {
            Seq(std::cell::RefCell::new(Some(items)))
        }
        let v = self;
        let mut st = ser.serialize_struct("Snapshot", 8)?;
        st.serialize_field("agents", &Agents(v))?;
        st.serialize_field("roles", &seq(v.roles.iter().map(|(n, p)| (&**n, p))))?;
        st.serialize_field("peer_levels", &seq(v.roles.iter().map(|(n, _)| &**n).zip(v.peer_levels)))?;
        st.serialize_field(
            "credentials",
            &seq(v.credentials.iter().map(|(h, o)| (*h, &*v.ids[o.agent as usize], o.first_ts))),
        )?;
        st.serialize_field("max_ts", &v.max_ts)?;
        if !v.front.is_empty() {
            st.serialize_field("front", &seq(v.front.iter().map(|&(a, t)| (&*v.ids[a as usize], t))))?;
        }
        st.serialize_field("watermark", &v.wm)?;
        st.serialize_field("stats", &v.stats)?;
        if !v.spend.is_empty() {
            st.serialize_field("spend", &v.spend)?;
        }
        st.end()
    }
}

impl SnapshotView<'_> {
    fn to_json(&self) -> Box<serde_json::value::RawValue> {
        // Every key is a string, so this cannot fail; were it to, `null` is "no state", never a wrong one.
        serde_json::value::to_raw_value(self).unwrap_or_else(|_| serde_json::value::RawValue::NULL.to_owned())
    }
}

/// A copy of the parts of an engine its [`Snapshot`] holds, taken at a flush ([`Engine::freeze`]) and
/// written as JSON later, on another thread ([`Frozen::to_json`]): the same text
/// [`Engine::snapshot_json`] would have written at that moment. Copying a hundred thousand agents'
/// state costs a fraction of writing it as JSON, and the thread that judges events pays only the copy.
#[derive(Debug, Clone)]
pub struct Frozen {
    ids: Vec<CompactString>,
    agents: Vec<AgentState>,
    roles: Vec<(Box<str>, PeerTable)>,
    peer_levels: Vec<PeerLevels>,
    credentials: HashMap<u64, CredentialOwner>,
    max_ts: Option<i64>,
    front: Vec<(u32, i64)>,
    wm: Option<i64>,
    stats: Stats,
    spend: Vec<(String, String, Spend)>,
}

impl Frozen {
    /// The copied state as a checkpoint stores it (see [`Engine::snapshot_json`]).
    pub fn to_json(&self) -> Box<serde_json::value::RawValue> {
        self.view().to_json()
    }

    /// The same text as [`Frozen::to_json`], written into `out` as it is made.
    pub fn write_json(&self, out: impl std::io::Write) -> serde_json::Result<()> {
        serde_json::to_writer(out, &self.view())
    }

    fn view(&self) -> SnapshotView<'_> {
        SnapshotView {
            ids: &self.ids,
            agents: &self.agents,
            roles: &self.roles,
            peer_levels: &self.peer_levels,
            credentials: &self.credentials,
            max_ts: self.max_ts,
            front: &self.front,
            wm: self.wm,
            stats: self.stats,
            spend: &self.spend,
        }
    }
}

/// The name of role `role` (an index into the engine's roles), `None` for 0, "no role".
fn role_name(roles: &[(Box<str>, PeerTable)], role: u16) -> Option<&str> {
    (role != 0).then(|| &*roles[usize::from(role)].0)
}

impl Engine {
    /// Builds an engine from a config, validating it.
    pub fn new(cfg: &DetectConfig) -> Result<Engine, ConfigError> {
        let mut engine = Engine {
            cfg: cfg.build()?,
            index: HashMap::default(),
            ids: Vec::new(),
            id_hash: Vec::new(),
            pool: Vec::new(),
            agents: Vec::new(),
            roles: Vec::new(),
            peer_levels: Vec::new(),
            role_index: HashMap::new(),
            credentials: HashMap::new(),
            closing: Closing::default(),
            max_ts: None,
            front: Vec::new(),
            floor: None,
            wm: None,
            free: Vec::new(),
            next_forget: i64::MIN,
            overflow_said: None,
            stats: Stats::default(),
            scratch: String::with_capacity(256),
            due: Vec::new(),
            found: Vec::new(),
            counts: Vec::new(),
            spend: HashMap::new(),
            warm_from: WARM_FROM_AGENTS,
        };
        engine.intern_role("");
        Ok(engine)
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Number of agents with state.
    pub fn agents(&self) -> usize {
        self.index.len()
    }

    /// Bytes of per-agent state (inline and heap, ids included), for sizing and the benchmarks.
    pub fn state_bytes(&self) -> usize {
        // Each id twice (its slot's and its index entry's: up to 24 bytes held inline, a longer one
        // on the heap besides), and its hash.
        let entry = size_of::<(CompactString, u32)>();
        let ids: usize = self
            .ids
            .iter()
            .map(|s| size_of::<CompactString>() + 8 + entry + if s.len() > 24 { 2 * s.len() } else { 0 })
            .sum();
        let spend = self.spend.len() * (size_of::<((u32, u16), Spend)>() + 8);
        ids + spend + self.agents.iter().map(AgentState::footprint).sum::<usize>() + 4 * self.free.len()
    }

    /// Windows ending at or before this event time are closed; events before it are late.
    ///
    /// It is the newest event time of the `watermark_quorum`-th newest agent, or the newest event time
    /// less `max_skew_seconds` if that is later, minus the lateness tolerance. A lone agent (or sender)
    /// stamping events ahead moves only its own place in the front, so the rest of the fleet is judged
    /// on its own clock; a fleet where only one agent is busy still closes windows, `max_skew_seconds`
    /// late. It depends only on the set of events seen (never their order), and never goes back.
    pub fn watermark(&self) -> Option<i64> {
        self.wm
    }

    fn update_watermark(&mut self) {
        let lead = self.max_ts.map(|m| {
            let quorum = self.front.last().map_or(m, |&(_, t)| t);
            quorum.max(m.saturating_sub(self.cfg.skew_ms))
        });
        let w = lead.map(|l| l.saturating_sub(self.cfg.lateness_ms));
        self.wm = match (w, self.floor) {
            (Some(w), Some(f)) => Some(w.max(f)),
            (w, f) => w.or(f),
        };
    }

    /// Records that agent `idx` sent an event at `ts` (not behind the watermark): keeps the
    /// `watermark_quorum` newest agents in `front`. An agent outside it is never newer than its last.
    fn advance(&mut self, idx: u32, ts: i64) {
        let quorum = self.cfg.quorum;
        let moved = if let Some(p) = self.front.iter().position(|&(a, _)| a == idx) {
            if ts <= self.front[p].1 {
                false
            } else {
                self.front[p].1 = ts;
                true
            }
        } else if self.front.len() < quorum {
            self.front.push((idx, ts));
            true
        } else if self.front.last().is_some_and(|&(_, t)| ts > t) {
            self.front[quorum - 1] = (idx, ts);
            true
        } else {
            false
        };
        let newest = self.max_ts.is_none_or(|m| ts > m);
        if newest {
            self.max_ts = Some(ts);
        }
        if moved {
            // A handful of entries, nearly sorted: insertion sort, newest first.
            for i in (1..self.front.len()).rev() {
                if self.front[i].1 > self.front[i - 1].1 {
                    self.front.swap(i, i - 1);
                }
            }
        }
        if moved || newest {
            self.update_watermark();
        }
    }

    /// The state, for a checkpoint.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            // A forgotten agent's slot has an empty id (ids are never empty).
            agents: self
                .ids
                .iter()
                .zip(&self.agents)
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            roles: self.roles.iter().map(|(n, p)| (n.to_string(), p.clone())).collect(),
            peer_levels: self
                .roles
                .iter()
                .map(|(n, _)| n.to_string())
                .zip(self.peer_levels.clone())
                .collect(),
            credentials: self
                .credentials
                .iter()
                .map(|(h, o)| (*h, self.ids[o.agent as usize].to_string(), o.first_ts))
                .collect(),
            max_ts: self.max_ts,
            front: self.front.iter().map(|&(a, t)| (self.ids[a as usize].to_string(), t)).collect(),
            watermark: self.wm,
            stats: self.stats,
            spend: self.snapshot_spend(),
        }
    }

    /// (agent, budget name, spend), sorted: the snapshot's `spend`.
    fn snapshot_spend(&self) -> Vec<(String, String, Spend)> {
        let mut spend: Vec<(String, String, Spend)> = self
            .spend
            .iter()
            .map(|(&(a, b), v)| {
                (self.ids[a as usize].to_string(), self.cfg.budgets[usize::from(b)].name.clone(), *v)
            })
            .collect();
        spend.sort_by(|x, y| (&x.0, &x.1).cmp(&(&y.0, &y.1)));
        spend
    }

    /// The state as a checkpoint stores it: [`Engine::snapshot`]'s JSON, written from the engine as it
    /// is (no copy of its agents, no `BTreeMap` of owned ids, no `serde_json::Value` tree on the way),
    /// the same text a [`Frozen`] copy taken now writes. A flush does not call this: its writer thread
    /// writes such a copy straight into the checkpoint file.
    pub fn snapshot_json(&self) -> Box<serde_json::value::RawValue> {
        let spend = self.snapshot_spend();
        SnapshotView {
            ids: &self.ids,
            agents: &self.agents,
            roles: &self.roles,
            peer_levels: &self.peer_levels,
            credentials: &self.credentials,
            max_ts: self.max_ts,
            front: &self.front,
            wm: self.wm,
            stats: self.stats,
            spend: &spend,
        }
        .to_json()
    }

    /// A copy of what [`Engine::snapshot_json`] writes, to be written later (see [`Frozen`]).
    pub fn freeze(&self) -> Frozen {
        Frozen {
            ids: self.ids.clone(),
            agents: self.agents.clone(),
            roles: self.roles.clone(),
            peer_levels: self.peer_levels.clone(),
            credentials: self.credentials.clone(),
            max_ts: self.max_ts,
            front: self.front.clone(),
            wm: self.wm,
            stats: self.stats,
            spend: self.snapshot_spend(),
        }
    }

    /// Replaces the state with a checkpoint's.
    pub fn restore(&mut self, snapshot: Snapshot) {
        self.index.clear();
        self.ids.clear();
        self.id_hash.clear();
        self.agents.clear();
        self.free.clear();
        self.next_forget = i64::MIN;
        self.closing.clear();
        self.roles.clear();
        self.peer_levels.clear();
        self.role_index.clear();
        for (name, peers) in snapshot.roles {
            let i = self.intern_role(&name);
            self.roles[usize::from(i)].1 = peers;
        }
        for (name, levels) in snapshot.peer_levels {
            let i = self.intern_role(&name);
            self.peer_levels[usize::from(i)] = levels;
        }
        if self.roles.is_empty() {
            self.intern_role("");
        }
        for (id, mut state) in snapshot.agents {
            let idx = self.ids.len() as u32;
            // The role config as it is now binds (it may have changed since the checkpoint).
            if let Some(name) = self.bound_role(&id) {
                let role = self.intern_role(&name);
                if role != state.role {
                    self.move_peers(state.role, role);
                    state.role = role;
                }
                state.pinned = true;
            }
            // Coverage worked out again now, so an agent reported as covered by no policy before the
            // checkpoint is not reported again after it.
            let role = role_name(&self.roles, state.role);
            state.covered_by = Some(Coverage::new(role.map(|_| state.role), &covering(&self.cfg, &id, role)));
            for w in &state.open_windows {
                self.closing.push(w.start + self.cfg.window_ms, idx);
            }
            self.index.insert(CompactString::from(id.as_str()), idx);
            self.id_hash.push(stable_hash(&[id.as_bytes()]));
            self.ids.push(CompactString::from(id));
            self.agents.push(state);
        }
        self.credentials = snapshot
            .credentials
            .into_iter()
            .filter_map(|(h, owner, first_ts)| {
                self.index.get(owner.as_str()).map(|&agent| (h, CredentialOwner { agent, first_ts }))
            })
            .collect();
        self.max_ts = snapshot.max_ts;
        self.front = snapshot
            .front
            .into_iter()
            .filter_map(|(agent, t)| Some((*self.index.get(agent.as_str())?, t)))
            .take(self.cfg.quorum)
            .collect();
        // Snapshots from before the quorum held only the newest event time, which was the watermark.
        self.floor =
            snapshot.watermark.or_else(|| snapshot.max_ts.map(|m| m.saturating_sub(self.cfg.lateness_ms)));
        self.update_watermark();
        self.stats = snapshot.stats;
        // Spend under budgets this config still declares; a renamed or removed budget starts afresh.
        self.spend = snapshot
            .spend
            .into_iter()
            .filter_map(|(agent, budget, spend)| {
                let a = *self.index.get(agent.as_str())?;
                let b = self.cfg.budgets.iter().position(|x| x.name == budget)?;
                Some(((a, b as u16), spend))
            })
            .collect();
    }

    /// Judges a batch of events in order, appending to `out`.
    pub fn process(&mut self, events: &[Event<'_>], out: &mut Output) {
        let ahead = self.agents.len() >= self.warm_from;
        let mut slots = [None; WARM_GROUP];
        for group in events.chunks(WARM_GROUP) {
            if !ahead {
                for ev in group {
                    self.judge(ev, None, out);
                }
                continue;
            }
            for (slot, ev) in slots.iter_mut().zip(group) {
                *slot = self.index.get(&*ev.agent_id).copied();
            }
            std::hint::black_box(self.warm(slots.iter().copied(), false));
            // The slots looked up to read ahead are the agents' while none is forgotten (a sweep in the
            // group may forget idle agents and a new agent then reuse a slot): judged without a second
            // lookup until then.
            let forgotten = self.stats.forgotten;
            for (ev, &slot) in group.iter().zip(&slots) {
                let known = slot.filter(|_| self.stats.forgotten == forgotten);
                self.judge(ev, known, out);
            }
        }
    }

    /// Reads the states of a group of agents ahead, a link at a time for all of them, for judging an
    /// event or for `closing` a window (`AgentState::warm_event` or `warm_close`, then `warm_buffers`,
    /// then `warm_window_keys`); changes nothing. Indices that name no agent are passed over.
    fn warm(&self, group: impl Iterator<Item = Option<u32>>, closing: bool) -> u64 {
        let mut idx = [u32::MAX; WARM_GROUP];
        for (slot, i) in idx.iter_mut().zip(group) {
            *slot = i.unwrap_or(u32::MAX);
        }
        let agents = || idx.iter().filter_map(|&i| self.agents.get(i as usize));
        let xor = |a: u64, b: u64| a ^ b;
        let first = if closing { AgentState::warm_close } else { AgentState::warm_event };
        let mut x = agents().map(first).fold(0, xor);
        x ^= agents().map(|a| a.warm_buffers(closing)).fold(0, xor);
        x ^ agents().map(AgentState::warm_window_keys).fold(0, xor)
    }

    /// Closes every open window, as if the watermark had passed them all: the end of a finite input.
    /// Events for those windows that arrive afterwards are late.
    pub fn finish(&mut self, out: &mut Output) {
        if let Some(end) = self.closing.last_end() {
            self.floor = Some(self.floor.map_or(end, |f| f.max(end)));
            self.update_watermark();
        }
        self.sweep(out);
    }

    fn intern_role(&mut self, name: &str) -> u16 {
        if let Some(&i) = self.role_index.get(name) {
            return i;
        }
        let i = u16::try_from(self.roles.len()).unwrap_or(u16::MAX);
        if i == u16::MAX {
            // More than 65k roles: the rest share the last peer group.
            return i - 1;
        }
        self.roles.push((name.into(), PeerTable::default()));
        self.peer_levels.push(PeerLevels::default());
        self.role_index.insert(name.into(), i);
        i
    }

    /// The agent's slot, made if it is new; `None` for a new agent beyond `max_agents`.
    fn agent_index(&mut self, ev: &Event<'_>) -> Option<u32> {
        if let Some(&i) = self.index.get(&*ev.agent_id) {
            return Some(i);
        }
        if self.cfg.raw.max_agents > 0 && self.index.len() >= self.cfg.raw.max_agents {
            return None;
        }
        let hash = stable_hash(&[ev.agent_id.as_bytes()]);
        let i = match self.free.pop() {
            // A forgotten agent's slot: its state was emptied when it was forgotten.
            Some(i) => {
                self.ids[i as usize] = CompactString::from(&*ev.agent_id);
                self.id_hash[i as usize] = hash;
                i
            }
            None => {
                self.ids.push(CompactString::from(&*ev.agent_id));
                self.id_hash.push(hash);
                self.agents.push(AgentState::default());
                (self.ids.len() - 1) as u32
            }
        };
        self.index.insert(CompactString::from(&*ev.agent_id), i);
        // The role config binds, else the first one declared.
        let bound = self.bound_role(&ev.agent_id);
        let pinned = bound.is_some();
        let role = match bound {
            Some(name) => self.intern_role(&name),
            None => self.intern_role(ev.agent_role.as_deref().unwrap_or("")),
        };
        let agent = &mut self.agents[i as usize];
        agent.role = role;
        agent.pinned = pinned;
        self.roles[usize::from(role)].1.agents += 1;
        Some(i)
    }

    /// An agent moves from peer group `from` to `to`: the groups' agent counts follow.
    fn move_peers(&mut self, from: u16, to: u16) {
        self.leave_peers(from);
        self.roles[usize::from(to)].1.agents += 1;
    }

    /// An agent leaves peer group `role` (it moved, or was forgotten).
    fn leave_peers(&mut self, role: u16) {
        let peers = &mut self.roles[usize::from(role)].1;
        peers.agents = peers.agents.saturating_sub(1);
    }

    /// The role `[[detect.role]]` binds this agent to, if any.
    fn bound_role(&self, agent_id: &str) -> Option<Box<str>> {
        let (name, _) = self.cfg.role_bindings.iter().find(|(_, agents)| agents.matches(agent_id))?;
        Some(name.as_str().into())
    }

    /// Holds an event's declared role to its agent's bound one. An agent with no role yet is bound to
    /// the first it declares; after that a different role, or (unless config bound it) none, is a
    /// `role_mismatch`. The agent is judged under its bound role either way.
    fn check_role(&mut self, idx: u32, ev: &Event<'_>) -> Option<(Finding, u64)> {
        let declared = ev.agent_role.as_deref();
        let current = self.agents[idx as usize].role;
        if current == 0 {
            let name = declared?;
            let role = self.intern_role(name);
            self.move_peers(0, role);
            let agent = &mut self.agents[idx as usize];
            agent.role = role;
            // Coverage for the new role at once, so an agent uncovered before and after is said once.
            agent.covered_by =
                Some(Coverage::new(Some(role), &covering(&self.cfg, &ev.agent_id, Some(name))));
            return None;
        }
        let agent = &self.agents[idx as usize];
        let bound = &*self.roles[usize::from(current)].0;
        let (severity, summary) = match declared {
            Some(r) if r == bound => return None,
            None if agent.pinned => return None,
            Some(r) => (
                Severity::High,
                format!(
                    "{} declared role {r:?} but is bound to role {bound:?}; judged as {bound:?}",
                    ev.agent_id
                ),
            ),
            None => (
                Severity::Medium,
                format!("{} left out its role {bound:?}; judged as {bound:?}", ev.agent_id),
            ),
        };
        let mut evidence = Map::new();
        evidence.insert("declared".into(), json!(declared));
        evidence.insert("bound".into(), json!(bound));
        evidence.insert("bound_by".into(), json!(if agent.pinned { "config" } else { "first_declared" }));
        evidence.insert("action".into(), json!(ev.action));
        evidence.insert("resource".into(), json!(ev.resource));
        let f = event_finding(FindingKind::RoleMismatch, severity, ev, summary, evidence);
        Some((f, bucket(&self.cfg, ev.ts_ms)))
    }

    /// Judges one event; `known` is its agent's slot when the caller has just looked it up.
    fn judge(&mut self, ev: &Event<'_>, known: Option<u32>, out: &mut Output) {
        self.stats.events += 1;
        let Some(idx) = known.or_else(|| self.agent_index(ev)) else {
            self.overflow(ev, out);
            return;
        };
        // A check's finding is moved into its slot only when there is one: assigning the returned
        // option itself copied its few hundred bytes for every check of every event.
        let mut found: [Option<(Finding, u64)>; 5] = [None, None, None, None, None];
        if let Some(f) = self.check_role(idx, ev) {
            found[3] = Some(f);
        }
        {
            let Engine { cfg, agents, roles, .. } = self;
            let agent = &mut agents[idx as usize];
            let role = role_name(roles, agent.role);
            let first = agent.covered_by.is_none();
            if let Some(f) = check_policy(cfg, agent, role, ev) {
                found[0] = Some(f);
            }
            if first && agent.covered_by.as_ref().is_some_and(|c| c.policies().is_empty()) {
                out.uncovered.push(ev.agent_id.to_string());
                found[4] = uncovered_finding(cfg, role, ev);
            }
            if let Some(f) = check_rate(cfg, agent, ev) {
                found[1] = Some(f);
            }
            if let Some(f) = check_session(cfg, agent, ev) {
                found[2] = Some(f);
            }
        }
        let credential = self.check_credential(idx, ev);
        if !self.cfg.budgets.is_empty()
            && (ev.input_tokens.is_some() || ev.output_tokens.is_some() || ev.cost_usd.is_some())
        {
            self.check_budgets(idx, ev, out);
        }
        // Taken slot by slot, and only a full one: moving the array into an iterator would copy all five
        // slots for every event, though nearly all are empty, and `take` copies the slot it empties.
        for slot in &mut found {
            if slot.is_some()
                && let Some((f, key)) = slot.take()
            {
                self.emit(idx, f, key, out);
            }
        }
        if let Some((owner, f, key)) = credential {
            self.emit(owner, f, key, out);
        }
        let late = self.watermark().is_some_and(|w| ev.ts_ms < w);
        if late {
            self.stats.late += 1;
        } else {
            self.advance(idx, ev.ts_ms);
            self.accumulate(idx, ev);
        }
        if let (Some(w), Some(end)) = (self.watermark(), self.closing.first_end())
            && end <= w
        {
            self.sweep(out);
        }
    }

    /// Adds an event to its agent's window.
    fn accumulate(&mut self, idx: u32, ev: &Event<'_>) {
        let Engine { cfg, agents, closing, scratch, pool, .. } = self;
        let agent = &mut agents[idx as usize];
        let start = ev.ts_ms.div_euclid(cfg.window_ms) * cfg.window_ms;
        let wi = match agent.open_windows.iter().position(|w| w.start == start) {
            Some(i) => i,
            None => {
                let w = match pool.pop() {
                    Some(mut w) => {
                        w.start = start;
                        w
                    }
                    None => Box::new(Window::new(start)),
                };
                agent.open_windows.push(w);
                closing.push(start.saturating_add(cfg.window_ms), idx);
                agent.open_windows.len() - 1
            }
        };
        let AgentState { keys, models, open_windows, .. } = agent;
        let w = &mut open_windows[wi];
        w.count += 1;
        w.bytes_read = w.bytes_read.saturating_add(ev.bytes_read.unwrap_or(0));
        w.bytes_written = w.bytes_written.saturating_add(ev.bytes_written.unwrap_or(0));
        w.tokens = w.tokens.saturating_add(budget::tokens(ev));
        if ev.outcome == Outcome::Denied {
            w.denied += 1;
        }
        w.sample(ev.ts_ms, &ev.event_id);
        let scope_cfg = &cfg.raw.scope;
        if scope_cfg.enabled {
            let key = generalised(scratch, &ev.resource, scope_cfg.resource_depth);
            let h = stable_hash(&[b"r", key.as_bytes()]);
            w.touch(h, scope_cfg.max_window_keys, || keys.contains(h), &ev.resource, ev.ts_ms, &ev.event_id);
            if let Some(scope) = ev.scope.as_deref() {
                let h = stable_hash(&[b"s", scope.as_bytes()]);
                w.touch(h, scope_cfg.max_window_keys, || keys.contains(h), scope, ev.ts_ms, &ev.event_id);
            }
        }
        if let Some(model) = ev.model.as_deref() {
            let provider = ev.model_provider.as_deref().unwrap_or("");
            let h = stable_hash(&[model.as_bytes(), provider.as_bytes()]);
            if !models.contains(h as u32) {
                // Written only when kept: most events of a model not learned yet are not its earliest.
                let sample = || Sample {
                    text: if provider.is_empty() {
                        model.to_owned()
                    } else {
                        format!("{model} ({provider})")
                    },
                    ts: ev.ts_ms,
                    event_id: ev.event_id.to_string(),
                };
                if let Some(m) = w.models.iter_mut().find(|m| m.hash == h) {
                    if m.sample.earlier(ev.ts_ms, &ev.event_id) {
                        m.sample = sample();
                    }
                } else if w.models.len() < MAX_MODELS {
                    w.models.push(WindowModel {
                        hash: h,
                        provider: stable_hash(&[provider.as_bytes()]),
                        sample: sample(),
                    });
                }
            }
        }
    }

    /// Closes every window the watermark has passed, in `(end, agent_id)` order.
    fn sweep(&mut self, out: &mut Output) {
        let Some(w) = self.watermark() else { return };
        let mut due = std::mem::take(&mut self.due);
        due.clear();
        self.closing.take_through(w, &mut due);
        let (ids, hashes) = (&self.ids, &self.id_hash);
        due.sort_unstable_by(|a, b| {
            let (x, y) = (a.1 as usize, b.1 as usize);
            a.0.cmp(&b.0).then(hashes[x].cmp(&hashes[y])).then_with(|| ids[x].cmp(&ids[y]))
        });
        let ahead = self.agents.len() >= self.warm_from;
        for group in due.chunks(WARM_GROUP) {
            if ahead {
                std::hint::black_box(self.warm(group.iter().map(|&(_, idx)| Some(idx)), true));
            }
            for &(end, idx) in group {
                self.close(idx, end - self.cfg.window_ms, out);
            }
        }
        self.due = due;
        if self.cfg.forget_ms > 0 && w >= self.next_forget {
            self.forget_idle(w);
        }
    }

    /// Forgets the agents with no event for `forget_idle_hours` before the watermark (no open window,
    /// the last one ended before the cut-off): their slots are emptied for reuse, and what spans agents
    /// (credential owners, budget spend, the watermark's front) lets go of them. Looked for once every
    /// eighth of that period, so the scan over every agent costs little per event.
    fn forget_idle(&mut self, w: i64) {
        let forget = self.cfg.forget_ms;
        self.next_forget = w.saturating_add((forget / 8).max(self.cfg.window_ms));
        let cutoff = w.saturating_sub(forget);
        let mut gone = 0;
        for i in 0..self.agents.len() {
            let a = &self.agents[i];
            if self.ids[i].is_empty() || !a.open_windows.is_empty() {
                continue;
            }
            let last = a.last_window.get().map_or(i64::MIN, |s| s.saturating_add(self.cfg.window_ms));
            if last > cutoff {
                continue;
            }
            let role = a.role;
            self.leave_peers(role);
            let id = std::mem::take(&mut self.ids[i]);
            self.index.remove(&*id);
            self.agents[i] = AgentState::default();
            self.free.push(i as u32);
            gone += 1;
        }
        if gone == 0 {
            return;
        }
        self.stats.forgotten += gone;
        let ids = &self.ids;
        self.credentials.retain(|_, o| !ids[o.agent as usize].is_empty());
        self.spend.retain(|&(a, _), _| !ids[a as usize].is_empty());
        if self.front.iter().any(|&(a, _)| ids[a as usize].is_empty()) {
            // The watermark does not go back because an agent in its front was forgotten.
            self.floor = self.wm;
            self.front.retain(|&(a, _)| !ids[a as usize].is_empty());
            self.update_watermark();
        }
    }

    /// An event of a new agent beyond `max_agents`: counted, not judged, and said as one
    /// `agent_overflow` finding per cooldown period.
    fn overflow(&mut self, ev: &Event<'_>, out: &mut Output) {
        self.stats.overflow += 1;
        let key = bucket(&self.cfg, ev.ts_ms);
        if self.overflow_said.is_some_and(|said| said >= key) {
            return;
        }
        self.overflow_said = Some(key);
        let cap = self.cfg.raw.max_agents;
        let mut evidence = Map::new();
        evidence.insert("max_agents".into(), json!(cap));
        evidence.insert("tracked".into(), json!(self.index.len()));
        let summary = format!(
            "{} is beyond detect.max_agents ({cap} agents tracked): new agents are archived but not judged \
             until idle ones are forgotten (a flood of made-up agent ids looks like this)",
            ev.agent_id
        );
        let mut f = event_finding(FindingKind::AgentOverflow, Severity::High, ev, summary, evidence);
        f.finding_id = finding_id(FindingKind::AgentOverflow, "", key as i64, "");
        self.stats.findings += 1;
        out.findings.push(f);
    }

    /// Judges one closed window, then learns from it.
    fn close(&mut self, idx: u32, start: i64, out: &mut Output) {
        let agent = &mut self.agents[idx as usize];
        let Some(pos) = agent.open_windows.iter().position(|w| w.start == start) else { return };
        let w = agent.open_windows.swap_remove(pos);
        if agent.open_windows.is_empty() && agent.open_windows.spilled() {
            // An idle agent holds no window buffers.
            agent.open_windows = OpenWindows::new();
        }
        self.stats.windows += 1;
        let cfg = &self.cfg;
        let base = &cfg.raw.baseline;
        // Windows with no events since the last closed one are observations of zero.
        let gap =
            agent.last_window.get().map_or(0, |last| ((start - last) / cfg.window_ms - 1).max(0) as u64);
        for t in &mut agent.levels.per_window {
            t.learn_zeros(gap, cfg.keep_window);
        }
        if let Some(last) = agent.last_window.get() {
            let period = |t: i64| t.div_euclid(cfg.peak_period_ms);
            agent.levels.peaks.pass(period(last), period(start));
        }
        agent.windows = agent.windows.saturating_add(u32::try_from(gap + 1).unwrap_or(u32::MAX));
        agent.last_window = LastWindow(start);
        let warm =
            u64::from(agent.windows) > base.warmup_windows && u64::from(agent.events) >= base.warmup_events;
        let mut found = std::mem::take(&mut self.found);
        let mut counts = std::mem::take(&mut self.counts);
        let id = &self.ids[idx as usize];
        let bucket = bucket(cfg, start);
        let observed = MEASURES.map(|q| q.of(&w));
        // The usual high of the agent's action count, when this window's count was surprising: the key
        // spread then learns from the window as if it had had that many actions.
        let mut spiked: Option<f64> = None;
        let mut learned = observed.map(|x| x as f64);
        if warm {
            for (m, q) in MEASURES.into_iter().enumerate() {
                let spec = cfg.spike(q.kind());
                let j = judge_window(cfg, &agent.levels.per_window[m], q, observed[m], false);
                learned[m] = robust(&j, spec.p_value, learned[m]);
                if q == Quantity::Actions && surprising(&j, spec.p_value) {
                    spiked = Some(j.high);
                }
                let span = (start, start + cfg.window_ms);
                let levels = &agent.levels;
                let followed = CUMULATIVE.iter().position(|&i| i == m);
                let f = spike(cfg, q, spec, id, &w, span, observed[m], &j, None).or_else(|| {
                    let c = followed?;
                    ceiling(cfg, q, spec, id, &w, observed[m], &j, (&levels.peaks, c, &levels.per_window[m]))
                });
                let peers = base.peers.then(|| &self.peer_levels[usize::from(agent.role)].per_window[m]);
                found.extend(f.map(|f| (peer_percentile(cfg, f, peers, observed[m]), bucket)));
                if let Some(s) = followed {
                    let f = slow_rise(cfg, q, id, &w, (&mut agent.levels.slow, s), gap, observed[m], &j);
                    found.extend(f.map(|f| slow_incident(cfg, &agent.open, f, bucket)));
                }
            }
            let peers = &self.roles[usize::from(agent.role)].1;
            if let Some(f) = novelty(cfg, id, agent, peers, &w) {
                found.push((f, bucket));
            }
            if let Some(f) = new_model(cfg, id, agent, &w) {
                found.push((f, bucket));
            }
            if base.peers {
                for (t, x) in self.peer_levels[usize::from(agent.role)].per_window.iter_mut().zip(observed) {
                    t.learn(x as f64, cfg.keep_window);
                }
            }
        } else if base.peers {
            let role = usize::from(agent.role);
            let peers = &self.peer_levels[role].per_window;
            if peers[0].weight() >= base.peer_min_windows as f64 {
                let group = Some(&*self.roles[role].0);
                for (m, q) in MEASURES.into_iter().enumerate() {
                    let (spec, x) = (cfg.spike(q.kind()), observed[m]);
                    let j = judge_window(cfg, &peers[m], q, x, false);
                    let span = (start, start + cfg.window_ms);
                    let f = spike(cfg, q, spec, id, &w, span, x, &j, group);
                    found.extend(f.map(|f| (peer_percentile(cfg, f, Some(&peers[m]), x), bucket)));
                }
            }
        }
        for (t, x) in agent.levels.per_window.iter_mut().zip(learned) {
            t.learn(x, cfg.keep_window);
        }
        agent.levels.peaks.note(&observed);
        spans(cfg, id, agent, &w, start, observed, &mut found);
        let scope = &cfg.raw.scope;
        if scope.enabled {
            let peers = &mut self.roles[usize::from(agent.role)].1;
            for k in &w.keys {
                if !agent.keys.contains(k.hash) {
                    peers.add(k.hash, scope.max_peer_keys);
                }
            }
            // A window flagged as a volume spike teaches the key spread only with the weight of a normal
            // window, so a runaway loop on one key does not leave the agent's mix looking like drift.
            let scale = spiked.map_or(1.0, |high| (high.max(1.0) / f64::from(w.count.max(1))).min(1.0));
            counts.clear();
            counts.extend(
                w.keys.iter().map(|k| (k.hash, (round_unsigned(f64::from(k.count) * scale) as u32).max(1))),
            );
            let total = (round_unsigned(f64::from(w.count) * scale) as u32).max(1);
            let seen = agent.events as f64;
            let n = f64::from(total);
            let keep = |decay: &crate::config::Decay| decay.over(total).min(seen / (seen + n));
            agent.keys.learn(&counts, total, keep(&cfg.keys_long), keep(&cfg.keys_short), scope.max_keys);
            let judged_events = u64::from(agent.events).saturating_sub(base.warmup_events);
            if warm
                && scope.divergence > 0.0
                && judged_events >= scope.divergence_min_events
                && let Some(d) = agent.keys.divergence_at_least(scope.divergence)
            {
                found.push((divergence_finding(cfg, id, &w, d), bucket));
                // Said once: the recent spread becomes the baseline, so a shift that stays is not
                // reported again, and a creep that keeps going is reported each time it moves as far.
                agent.keys.rebase();
            }
        }
        for m in &w.models {
            agent.models.push((m.hash as u32, m.provider as u32));
        }
        agent.events = agent.events.saturating_add(w.count);
        for (f, key) in found.drain(..) {
            self.emit(idx, f, key, out);
        }
        self.found = found;
        self.counts = counts;
        if self.pool.len() < POOL {
            let mut w = w;
            w.reset();
            self.pool.push(w);
        }
    }

    /// Charges the event's tokens and cost to every budget that covers its agent, reporting the levels
    /// it crosses.
    fn check_budgets(&mut self, idx: u32, ev: &Event<'_>, out: &mut Output) {
        let bound = self.agents[idx as usize].role;
        for bi in 0..self.cfg.budgets.len() {
            let b = &self.cfg.budgets[bi];
            if !b.covers(&ev.agent_id, role_name(&self.roles, bound)) {
                continue;
            }
            let spend = self.spend.entry((idx, bi as u16)).or_default();
            if let Some(c) = budget::charge(b, spend, ev) {
                let f = event_finding(FindingKind::BudgetLimit, c.severity, ev, c.summary, c.evidence);
                self.emit(idx, f, c.period_start as u64, out);
            }
        }
    }

    fn check_credential(&mut self, idx: u32, ev: &Event<'_>) -> Option<(u32, Finding, u64)> {
        let identity = &self.cfg.raw.identity;
        let credential = ev.credential_id.as_deref()?;
        if !identity.enabled {
            return None;
        }
        let h = stable_hash(&[credential.as_bytes()]);
        let agent = &mut self.agents[idx as usize];
        if agent.last_credential == h {
            return None;
        }
        agent.last_credential = h;
        let bucket = bucket(&self.cfg, ev.ts_ms);
        if self.cfg.human_credentials.matches(credential) {
            let mut evidence = Map::new();
            evidence.insert("credential_id".into(), json!(credential));
            evidence.insert("human_credential".into(), json!(true));
            evidence.insert("principal".into(), json!(ev.principal));
            let f = event_finding(
                FindingKind::SharedCredential,
                Severity::High,
                ev,
                format!(
                    "{} acted with {credential:?}, a human's credential (matches identity.human_credentials)",
                    ev.agent_id
                ),
                evidence,
            );
            return Some((idx, f, bucket));
        }
        let owner = match self.credentials.get_mut(&h) {
            None => {
                if self.credentials.len() < identity.max_credentials {
                    self.credentials.insert(h, CredentialOwner { agent: idx, first_ts: ev.ts_ms });
                }
                return None;
            }
            Some(o) if o.agent == idx => {
                o.first_ts = o.first_ts.min(ev.ts_ms);
                return None;
            }
            Some(o) => o,
        };
        // The owner is whoever used the credential first in event time; the other one is flagged. A
        // claim from behind the watermark cannot take a credential over: one back-dated event would
        // otherwise make its sender the owner and frame the agent that really held it.
        let late = self.wm.is_some_and(|w| ev.ts_ms < w);
        let (flagged, holder) = if ev.ts_ms < owner.first_ts && !late {
            let previous = owner.agent;
            *owner = CredentialOwner { agent: idx, first_ts: ev.ts_ms };
            (previous, idx)
        } else {
            (idx, owner.agent)
        };
        let flagged_id = self.ids[flagged as usize].to_string();
        let holder_id = &self.ids[holder as usize];
        let mut evidence = Map::new();
        evidence.insert("credential_id".into(), json!(credential));
        evidence.insert("owner_agent_id".into(), json!(holder_id.as_str()));
        evidence.insert("used_by".into(), json!(flagged_id));
        evidence.insert("principal".into(), json!(ev.principal));
        let mut f = event_finding(
            FindingKind::SharedCredential,
            Severity::High,
            ev,
            format!("{flagged_id} used credential {credential:?}, which belongs to {holder_id}"),
            evidence,
        );
        f.agent_id = flagged_id;
        Some((flagged, f, bucket))
    }

    /// Folds a finding into its incident and emits what is new: the finding, an update of the open one
    /// whose severity rose, or nothing.
    fn emit(&mut self, idx: u32, mut f: Finding, key: u64, out: &mut Output) {
        let agent = &mut self.agents[idx as usize];
        let folded_key = fold_key(key);
        if let Some(open) = agent.open.iter_mut().find(|o| o.kind == f.kind && o.key == folded_key) {
            open.folded = open.folded.saturating_add(1);
            open.last_ts = open.last_ts.max(f.ts);
            if f.severity <= open.severity {
                self.stats.suppressed += 1;
                return;
            }
            open.severity = f.severity;
            f.evidence.insert("folded_findings".into(), json!(open.folded));
        } else {
            // Incidents more than two cooldowns old can no longer be updated: forget them.
            let horizon = f.ts.saturating_sub(2 * self.cfg.cooldown_ms);
            agent.open.retain(|o| o.last_ts >= horizon);
            if agent.open.iter().filter(|o| o.kind == f.kind).count() >= OPEN_PER_KIND
                && let Some(i) = agent.open.iter().position(|o| o.kind == f.kind)
            {
                agent.open.remove(i);
            }
            // Exactly the room needed: an agent that once had several incidents open does not keep
            // their buffer while idle.
            agent.open.reserve_exact(1);
            agent.open.shrink_to(agent.open.len() + 1);
            agent.open.push(OpenFinding {
                kind: f.kind,
                key: folded_key,
                last_ts: f.ts,
                severity: f.severity,
                folded: 0,
            });
        }
        // Derived only for what is emitted: most findings fold into an incident already open.
        f.finding_id = finding_id(f.kind, &f.agent_id, key as i64, "");
        self.stats.findings += 1;
        out.findings.push(f);
    }
}

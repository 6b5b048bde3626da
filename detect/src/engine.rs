//! The engine: per-agent state, the detectors run over each event, dedup of findings within a cooldown,
//! and the shadow halt rule.
//!
//! Everything here is synchronous and deterministic. The only clock is event time, which arrives with the
//! events, so a replay of the same events in the same order gives the same findings and ids.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use vigil_schemas::Event;

use crate::config::{Compiled, ConfigError, DetectConfig};
use crate::finding::{Decision, Finding, FindingKind, Mode, Severity, finding_id};

const MINUTE_MS: i64 = 60_000;
const KINDS: usize = 2;

const fn kind_slot(kind: FindingKind) -> usize {
    match kind {
        FindingKind::PolicyViolation => 0,
        FindingKind::RateLimit => 1,
    }
}

/// What one call to [`Engine::process`] produced.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Output {
    /// New findings, and updates of open ones (same `finding_id`, raised severity).
    pub findings: Vec<Finding>,
    /// Halt decisions (shadow mode in this version).
    pub decisions: Vec<Decision>,
}

impl Output {
    /// Empties both lists, keeping their capacity.
    pub fn clear(&mut self) {
        self.findings.clear();
        self.decisions.clear();
    }
}

/// Counters the engine keeps about its own work.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Events judged.
    pub events: u64,
    /// Findings emitted, updates included.
    pub findings: u64,
    /// Findings folded into an open one during its cooldown.
    pub suppressed: u64,
    /// Events too old for the rate window they belong to (counted, archived, not rate-judged).
    pub late: u64,
}

/// Count of one agent's actions in one event-time minute.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct MinuteCount {
    minute: i64,
    count: u64,
    fired: bool,
}

/// A finding still inside its cooldown: later ones of the same kind fold into it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OpenFinding {
    finding_id: String,
    last_ts: i64,
    severity: Severity,
    folded: u64,
}

#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
struct AgentState {
    /// The current and previous minute.
    rate: [MinuteCount; 2],
    open: [Option<OpenFinding>; KINDS],
    /// Event times and ids of recent high-or-worse findings, for the halt rule.
    recent_high: VecDeque<(i64, String)>,
    /// A halt was recorded; no further halt decisions until a resume (a later version).
    halted: bool,
    /// Indices of the policies that cover this agent, for the role they were computed with.
    #[serde(skip)]
    covered_by: Option<(Option<Box<str>>, Vec<u16>)>,
}

/// The detection engine. Feed it batches of events; it returns findings and decisions.
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
    agents: HashMap<Box<str>, AgentState>,
    stats: Stats,
}

/// A serialisable copy of the engine's state, taken with the source positions it reflects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    agents: BTreeMap<String, AgentState>,
    stats: Stats,
}

impl Engine {
    /// Builds an engine from a config, validating it.
    pub fn new(cfg: &DetectConfig) -> Result<Engine, ConfigError> {
        Ok(Engine { cfg: cfg.build()?, agents: HashMap::new(), stats: Stats::default() })
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Number of agents with state.
    pub fn agents(&self) -> usize {
        self.agents.len()
    }

    /// The state, for a checkpoint.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            agents: self.agents.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            stats: self.stats,
        }
    }

    /// Replaces the state with a checkpoint's.
    pub fn restore(&mut self, snapshot: Snapshot) {
        self.agents = snapshot.agents.into_iter().map(|(k, v)| (k.into_boxed_str(), v)).collect();
        self.stats = snapshot.stats;
    }

    /// Judges a batch of events in order, appending to `out`.
    pub fn process(&mut self, events: &[Event<'_>], out: &mut Output) {
        for ev in events {
            self.judge(ev, out);
        }
    }

    fn judge(&mut self, ev: &Event<'_>, out: &mut Output) {
        self.stats.events += 1;
        let Engine { cfg, agents, stats } = self;
        let agent = match agents.get_mut(&*ev.agent_id) {
            Some(a) => a,
            None => agents.entry(ev.agent_id.clone().into_owned().into_boxed_str()).or_default(),
        };
        let mut found: [Option<Finding>; KINDS] = [None, None];
        if let Some(f) = check_policy(cfg, agent, ev) {
            found[0] = Some(f);
        }
        if let Some(f) = check_rate(cfg, agent, ev, stats) {
            found[1] = Some(f);
        }
        for f in found.into_iter().flatten() {
            if let Some(f) = fold(cfg, agent, f, stats) {
                halt_rule(cfg, agent, &f, out);
                out.findings.push(f);
            }
        }
    }
}

/// Raises a finding's severity when it touches a sensitive resource.
fn severity_for(cfg: &Compiled, base: Severity, resource: &str) -> Severity {
    if cfg.sensitive.matches(resource) { base.raised() } else { base }
}

fn covering_policies<'s>(cfg: &Compiled, agent: &'s mut AgentState, ev: &Event<'_>) -> &'s [u16] {
    let role = ev.agent_role.as_deref();
    let stale = agent.covered_by.as_ref().is_none_or(|(r, _)| r.as_deref() != role);
    if stale {
        let idx = cfg
            .policies
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                p.agents.matches(&ev.agent_id) || role.is_some_and(|r| p.roles.iter().any(|x| x == r))
            })
            .map(|(i, _)| i as u16)
            .collect();
        agent.covered_by = Some((role.map(Box::from), idx));
    }
    agent.covered_by.as_ref().map_or(&[], |(_, idx)| idx.as_slice())
}

fn check_policy(cfg: &Compiled, agent: &mut AgentState, ev: &Event<'_>) -> Option<Finding> {
    let covering = covering_policies(cfg, agent, ev);
    if covering.is_empty() {
        return None;
    }
    let scope = ev.scope.as_deref();
    // The dimension that failed in the policy that came closest, for the evidence.
    let mut failed = "";
    for &i in covering {
        let p = &cfg.policies[usize::from(i)];
        if !(p.actions.is_empty() || p.actions.matches(&ev.action)) {
            failed = if failed.is_empty() { "action" } else { failed };
            continue;
        }
        if !(p.resources.is_empty() || p.resources.matches(&ev.resource)) {
            failed = if failed.is_empty() || failed == "action" { "resource" } else { failed };
            continue;
        }
        if let Some(s) = scope
            && !(p.scopes.is_empty() || p.scopes.matches(s))
        {
            failed = "scope";
            continue;
        }
        return None;
    }
    let names: Vec<Value> = covering.iter().map(|&i| json!(cfg.policies[usize::from(i)].name)).collect();
    let value = match failed {
        "action" => ev.action.as_ref(),
        "scope" => scope.unwrap_or_default(),
        _ => ev.resource.as_ref(),
    };
    // A denied action was stopped by the gateway already: still worth knowing, less urgent.
    let base = if ev.outcome == vigil_schemas::Outcome::Denied { Severity::Medium } else { Severity::High };
    let severity = severity_for(cfg, base, &ev.resource);
    let mut evidence = Map::new();
    evidence.insert("dimension".into(), json!(failed));
    evidence.insert("value".into(), json!(value));
    evidence.insert("action".into(), json!(ev.action));
    evidence.insert("resource".into(), json!(ev.resource));
    evidence.insert("scope".into(), json!(scope));
    evidence.insert("outcome".into(), json!(ev.outcome.as_str()));
    evidence.insert("policies".into(), Value::Array(names));
    let window_start = ev.ts_ms;
    Some(Finding {
        finding_id: finding_id(FindingKind::PolicyViolation, &ev.agent_id, window_start, &ev.event_id),
        kind: FindingKind::PolicyViolation,
        severity,
        agent_id: ev.agent_id.to_string(),
        ts: ev.ts_ms,
        window_start,
        window_end: ev.ts_ms + 1,
        score: 1.0,
        summary: format!(
            "{} used {failed} {value:?} that no policy covering it allows ({} {} {})",
            ev.agent_id,
            ev.action,
            ev.resource,
            ev.outcome.as_str()
        ),
        evidence,
        event_ids: vec![ev.event_id.to_string()],
    })
}

fn check_rate(cfg: &Compiled, agent: &mut AgentState, ev: &Event<'_>, stats: &mut Stats) -> Option<Finding> {
    let cap = cfg.raw.rate_limit_per_minute;
    if cap == 0 {
        return None;
    }
    let minute = ev.ts_ms.div_euclid(MINUTE_MS);
    let [cur, prev] = &mut agent.rate;
    let slot = if cur.count == 0 || minute > cur.minute {
        *prev = if minute == cur.minute + 1 { *cur } else { MinuteCount::default() };
        *cur = MinuteCount { minute, count: 0, fired: false };
        cur
    } else if minute == cur.minute {
        cur
    } else if minute == cur.minute - 1 {
        if prev.minute != minute || prev.count == 0 {
            *prev = MinuteCount { minute, count: 0, fired: false };
        }
        prev
    } else {
        stats.late += 1;
        return None;
    };
    slot.count += 1;
    if slot.count <= cap || slot.fired {
        return None;
    }
    slot.fired = true;
    let window_start = minute * MINUTE_MS;
    let mut evidence = Map::new();
    evidence.insert("limit_per_minute".into(), json!(cap));
    evidence.insert("observed".into(), json!(slot.count));
    Some(Finding {
        finding_id: finding_id(FindingKind::RateLimit, &ev.agent_id, window_start, ""),
        kind: FindingKind::RateLimit,
        severity: cfg.raw.rate_limit_severity,
        agent_id: ev.agent_id.to_string(),
        ts: ev.ts_ms,
        window_start,
        window_end: window_start + MINUTE_MS,
        score: slot.count as f64 / cap as f64,
        summary: format!("{} exceeded its hard cap of {cap} actions per minute", ev.agent_id),
        evidence,
        event_ids: vec![ev.event_id.to_string()],
    })
}

/// Folds a finding into the open one of its kind when inside the cooldown. Returns what to emit: the new
/// finding, an update of the open one whose severity rose, or nothing.
fn fold(cfg: &Compiled, agent: &mut AgentState, f: Finding, stats: &mut Stats) -> Option<Finding> {
    let slot = &mut agent.open[kind_slot(f.kind)];
    if let Some(open) = slot.as_mut()
        && (f.ts - open.last_ts).abs() <= cfg.cooldown_ms
    {
        open.last_ts = open.last_ts.max(f.ts);
        open.folded += 1;
        if f.severity <= open.severity {
            stats.suppressed += 1;
            return None;
        }
        open.severity = f.severity;
        let mut update = f;
        update.finding_id = open.finding_id.clone();
        update.evidence.insert("folded_findings".into(), json!(open.folded));
        stats.findings += 1;
        return Some(update);
    }
    *slot = Some(OpenFinding {
        finding_id: f.finding_id.clone(),
        last_ts: f.ts,
        severity: f.severity,
        folded: 0,
    });
    stats.findings += 1;
    Some(f)
}

fn halt_rule(cfg: &Compiled, agent: &mut AgentState, f: &Finding, out: &mut Output) {
    if agent.halted || f.severity < Severity::High {
        return;
    }
    let rule = &cfg.raw.halt;
    let (actor, reason, ids) = if rule.on_critical && f.severity == Severity::Critical {
        (
            "rule:critical_finding",
            format!("critical {} finding: {}", f.kind.as_str(), f.summary),
            vec![f.finding_id.clone()],
        )
    } else {
        let horizon = f.ts - cfg.halt_window_ms;
        agent.recent_high.retain(|(ts, id)| *ts > horizon && *id != f.finding_id);
        agent.recent_high.push_back((f.ts, f.finding_id.clone()));
        let needed = rule.high_findings as usize;
        while agent.recent_high.len() > needed.max(1) {
            agent.recent_high.pop_front();
        }
        if needed == 0 || agent.recent_high.len() < needed {
            return;
        }
        (
            "rule:high_findings",
            format!("{needed} findings of severity high or above within {}s", rule.window_seconds),
            agent.recent_high.iter().map(|(_, id)| id.clone()).collect(),
        )
    };
    agent.halted = true;
    out.decisions.push(Decision {
        ts: f.ts,
        action: "agent.halt",
        agent_id: f.agent_id.clone(),
        mode: Mode::Shadow,
        actor,
        reason,
        finding_ids: ids,
    });
}

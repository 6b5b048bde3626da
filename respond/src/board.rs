//! The board: every breaker (agents, cohorts, the fleet), the trip rules, the flap guard, operator
//! commands, and the view a gateway's check reads. Pure: findings, events and commands in, transitions
//! and findings out; the only clock is event time and a command's stamp.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use serde_json::{Map, Value, json};
use vigil_schemas::Event;
use vigil_schemas::rows::{
    Action, Actor, BreakerState, Factor, Finding, FindingKind, Mode, Rule, Scope, Severity, Transition,
    row_id,
};

use crate::breaker::{Breaker, Closed, Open, Trip};
use crate::config::{ConfigError, RespondConfig};
use crate::view::{Factors, Halt, View, factor_index, factor_of, set_factor};
use compact_str::CompactString;

const HOUR_MS: i64 = 3_600_000;
const MINUTE_MS: i64 = 60_000;

/// What the board produced for one batch or command.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Response {
    /// Breaker moves, in the order they happened.
    pub transitions: Vec<Transition>,
    /// Findings of the board's own (`halted_agent_activity`, `cohort_anomaly`).
    pub findings: Vec<Finding>,
    /// Agents whose factors changed, with the new ones (for a copy of the [`View`]).
    pub factors: Vec<(String, Factors)>,
}

impl Response {
    /// Empties every list, keeping capacity.
    pub fn clear(&mut self) {
        self.transitions.clear();
        self.findings.clear();
        self.factors.clear();
    }
}

/// What an operator asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Stop.
    Halt,
    /// Go again.
    Resume,
}

/// What a command covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// One agent.
    Agent(String),
    /// Every agent behind one factor's value.
    Cohort(Factor, String),
    /// Every agent.
    Fleet,
}

impl Target {
    /// What it covers.
    pub fn scope(&self) -> Scope {
        match self {
            Target::Agent(_) => Scope::Agent,
            Target::Cohort(..) => Scope::Cohort,
            Target::Fleet => Scope::Fleet,
        }
    }
}

/// An operator's command, stamped at the edge.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// Unique per command (the edge makes it); part of the transition's id.
    pub id: String,
    /// When it was given (UTC ms).
    pub ts: i64,
    /// Halt or resume.
    pub verb: Verb,
    /// What.
    pub target: Target,
    /// Who.
    pub operator: String,
    /// Why (required).
    pub reason: String,
}

/// A command that changed nothing, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unchanged {
    /// Already halted, by an operator or a rule that an operator's halt would not strengthen.
    #[error("already halted since {since} ({actor}: {reason})")]
    AlreadyHalted {
        /// Since when (UTC ms).
        since: i64,
        /// Who halted it.
        actor: String,
        /// Why.
        reason: String,
    },
    /// Not halted: nothing to resume.
    #[error("not halted")]
    NotHalted,
    /// A command needs a reason and an operator name.
    #[error("a command needs a non-empty {0}")]
    Missing(&'static str),
}

#[derive(Debug, Default, Clone)]
struct AgentEntry {
    breaker: Breaker,
    factors: Seen,
    /// Findings that count towards `repeated_findings`: (event time, finding id).
    recent: VecDeque<(i64, String)>,
    /// Halt times within the last hour, for the flap guard.
    halts: VecDeque<i64>,
    /// Findings at or before this time are spent (an operator resumed the agent after them).
    spent_until: Option<i64>,
    /// Whether the view has this agent's factors.
    shown: bool,
    /// Events seen, and the first and last event time (for the API's view of one agent).
    events: u64,
    first_seen: Option<i64>,
    last_seen: Option<i64>,
    /// The halt whose activity was flagged last, and the severity it was flagged at: one finding per
    /// halt, raised once when the activity outlasts the grace.
    activity: Option<(String, Severity)>,
}

/// An agent's factors as the board compares them for every event: held inline (values of up to 24
/// bytes), so the usual "same model, same provider" check reads no heap string.
#[derive(Debug, Default, Clone)]
struct Seen([Option<CompactString>; 3]);

impl Seen {
    fn get(&self, f: Factor) -> Option<&str> {
        self.0[factor_index(f)].as_deref()
    }

    fn set(&mut self, f: Factor, value: &str) {
        self.0[factor_index(f)] = Some(value.into());
    }

    /// As the view and the response hold them.
    fn to_factors(&self) -> Factors {
        let mut out = Factors::default();
        for &f in Factor::ALL {
            set_factor(&mut out, f, self.get(f).map(str::to_owned));
        }
        out
    }
}

#[derive(Debug, Default, Clone)]
struct CohortEntry {
    /// Findings within the window: (event time, agent, finding id).
    recent: VecDeque<(i64, String, String)>,
    /// Open (in some mode), or closed.
    open: Option<Open>,
}

/// A breaker a timer is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Key {
    Agent(String),
    Cohort(Factor, String),
    Fleet,
}

/// Every breaker; see the module docs.
#[derive(Debug, Clone)]
pub struct Board {
    cfg: RespondConfig,
    /// By agent id: ids of up to 24 bytes held inline and hashed by aHash (keyed afresh per process),
    /// as the engine's agent index is: this map is looked up for every event.
    agents: HashMap<CompactString, AgentEntry, ahash::RandomState>,
    cohorts: BTreeMap<(Factor, String), CohortEntry>,
    fleet: Option<Open>,
    /// Trips within the fleet window: (event time, agent).
    fleet_trips: VecDeque<(i64, String)>,
    /// Breakers with a cooldown or probation to check, by due time.
    timers: BTreeSet<(i64, Key)>,
    /// The newest event time seen.
    now: i64,
    view: View,
    /// When each breaker last moved (by key), so a transition read back late (another member's, from the
    /// control topic) never undoes a newer one.
    changed: HashMap<String, i64>,
}

fn halt_action(scope: Scope, mode: Mode) -> Action {
    match (scope, mode) {
        (Scope::Agent, Mode::Warn) => Action::AgentWarn,
        (Scope::Agent, _) => Action::AgentHalt,
        (Scope::Cohort, Mode::Warn) => Action::CohortWarn,
        (Scope::Cohort, _) => Action::CohortHalt,
        (Scope::Fleet, Mode::Warn) => Action::FleetWarn,
        (Scope::Fleet, _) => Action::FleetHalt,
    }
}

/// The credential issuer an event names in `attributes.credential_issuer`.
fn issuer(ev: &Event<'_>) -> Option<String> {
    let attrs = ev.attributes.as_deref()?;
    if !attrs.contains("credential_issuer") {
        return None;
    }
    let v: Value = serde_json::from_str(attrs).ok()?;
    v.get("credential_issuer")?.as_str().map(str::to_owned)
}

/// What one decision is about, before it becomes a transition.
struct Decision<'a> {
    at: i64,
    mode: Mode,
    actor: Actor,
    reason: String,
    finding_ids: Vec<String>,
    evidence: Map<String, Value>,
    /// The command's id, for an operator's decision.
    command: Option<&'a str>,
}

impl Decision<'static> {
    /// A rule's decision on no findings (a cooldown, a quiet probation).
    fn by_rule(at: i64, mode: Mode, rule: Rule, reason: String) -> Self {
        Decision {
            at,
            mode,
            actor: Actor::Rule(rule),
            reason,
            finding_ids: Vec::new(),
            evidence: Map::new(),
            command: None,
        }
    }
}

impl Board {
    /// A board with every breaker closed.
    pub fn new(cfg: &RespondConfig) -> Result<Board, ConfigError> {
        cfg.validate()?;
        Ok(Board {
            cfg: cfg.clone(),
            agents: HashMap::default(),
            cohorts: BTreeMap::new(),
            fleet: None,
            fleet_trips: VecDeque::new(),
            timers: BTreeSet::new(),
            now: i64::MIN,
            view: View::default(),
            changed: HashMap::new(),
        })
    }

    /// The halts in force and the agents' factors.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// Where an agent's breaker stands (closed for an agent never seen).
    pub fn state(&self, agent: &str) -> BreakerState {
        self.agents.get(agent).map_or(BreakerState::Closed, |e| e.breaker.state())
    }

    /// What the board counted of an agent since this process started: events, first and last event
    /// time, halts within the last hour, and the findings counting towards `repeated_findings`.
    pub fn counters(&self, agent: &str) -> Option<serde_json::Value> {
        let e = self.agents.get(agent)?;
        Some(json!({
            "events": e.events,
            "first_seen": e.first_seen,
            "last_seen": e.last_seen,
            "halts_last_hour": e.halts.len(),
            "recent_findings": e.recent.iter().map(|(_, id)| id.as_str()).collect::<Vec<_>>(),
        }))
    }

    /// The open trip of an agent's breaker (in any mode).
    pub fn open_trip(&self, agent: &str) -> Option<&Trip> {
        match self.agents.get(agent).map(|e| &e.breaker) {
            Some(Breaker::Open(o)) => Some(&o.trip),
            _ => None,
        }
    }

    /// One batch, in the order the lane runs it: the events' factors, then the engine's findings, then
    /// halted agents still acting (findings of their own, judged in turn), then the cooldowns the
    /// batch's newest event time made due.
    pub fn process(&mut self, events: &[Event<'_>], findings: &[Finding], out: &mut Response) {
        self.observe_factors(events, out);
        for f in findings {
            self.judge(f, out);
        }
        let first = out.findings.len();
        self.halted_activity(events, out);
        for i in first..out.findings.len() {
            let f = out.findings[i].clone();
            self.judge(&f, out);
        }
        if let Some(newest) = events.iter().map(|e| e.ts_ms).max() {
            self.now = self.now.max(newest);
        }
        self.tick(self.now, out);
    }

    fn observe_factors(&mut self, events: &[Event<'_>], out: &mut Response) {
        let mut last: Option<&str> = None;
        for ev in events {
            let agent = ev.agent_id.as_ref();
            let entry = match self.agents.get_mut(agent) {
                Some(e) => e,
                None => self.agents.entry(agent.into()).or_default(),
            };
            entry.events += 1;
            entry.first_seen = Some(entry.first_seen.map_or(ev.ts_ms, |t| t.min(ev.ts_ms)));
            entry.last_seen = Some(entry.last_seen.map_or(ev.ts_ms, |t| t.max(ev.ts_ms)));
            // Runs of one agent are common: its factors were just compared.
            if last == Some(agent) && ev.attributes.is_none() {
                continue;
            }
            // The usual case: the same model and provider as last time, no issuer to read.
            if entry.shown
                && ev.attributes.is_none()
                && ev.model.as_deref().is_none_or(|m| entry.factors.get(Factor::Model) == Some(m))
                && ev.model_provider.as_deref().is_none_or(|p| entry.factors.get(Factor::Provider) == Some(p))
            {
                last = Some(agent);
                continue;
            }
            last = Some(agent);
            let seen = [ev.model.as_deref(), ev.model_provider.as_deref()];
            let mut changed = false;
            for (i, f) in [Factor::Model, Factor::Provider].into_iter().enumerate() {
                if let Some(v) = seen[i]
                    && entry.factors.get(f) != Some(v)
                {
                    entry.factors.set(f, v);
                    changed = true;
                }
            }
            if let Some(v) = issuer(ev)
                && entry.factors.get(Factor::Issuer) != Some(v.as_str())
            {
                entry.factors.set(Factor::Issuer, &v);
                changed = true;
            }
            if changed || !entry.shown {
                entry.shown = true;
                let factors = entry.factors.to_factors();
                self.view.set_factors(agent, factors.clone());
                out.factors.push((agent.to_owned(), factors));
            }
        }
    }

    fn halted_activity(&mut self, events: &[Event<'_>], out: &mut Response) {
        if self.view.is_clear() {
            return;
        }
        let grace = (self.cfg.revoke_grace_seconds as i64).saturating_mul(1000);
        for ev in events {
            let Some(halt) = self.view.verdict(&ev.agent_id) else { continue };
            if ev.ts_ms <= halt.since {
                continue;
            }
            let Some(entry) = self.agents.get_mut(ev.agent_id.as_ref()) else { continue };
            let after = ev.ts_ms - halt.since;
            let severity = if after <= grace { Severity::High } else { Severity::Critical };
            if entry.activity.as_ref().is_some_and(|(t, s)| *t == halt.transition_id && *s >= severity) {
                continue;
            }
            entry.activity = Some((halt.transition_id.clone(), severity));
            let minute = ev.ts_ms.div_euclid(MINUTE_MS);
            let agent = ev.agent_id.to_string();
            let mut evidence = Map::new();
            evidence.insert("halted_since".into(), json!(halt.since));
            evidence.insert("halt_scope".into(), json!(halt.scope.as_str()));
            evidence.insert("halt_transition_id".into(), json!(halt.transition_id));
            evidence.insert("seconds_after_halt".into(), json!(after as f64 / 1000.0));
            evidence.insert("action".into(), json!(ev.action));
            evidence.insert("resource".into(), json!(ev.resource));
            out.findings.push(Finding {
                finding_id: row_id(&[
                    FindingKind::HaltedAgentActivity.as_str().as_bytes(),
                    agent.as_bytes(),
                    halt.transition_id.as_bytes(),
                ]),
                kind: FindingKind::HaltedAgentActivity,
                severity,
                summary: format!(
                    "{agent} acted ({} {}) {:.0} s after its {} halt: the gateway has not revoked it",
                    ev.action,
                    ev.resource,
                    after as f64 / 1000.0,
                    halt.scope.as_str()
                ),
                agent_id: agent,
                ts: ev.ts_ms,
                window_start: halt.since,
                window_end: (minute + 1) * MINUTE_MS,
                score: after as f64 / 1000.0,
                evidence,
                event_ids: vec![ev.event_id.to_string()],
            });
        }
    }

    /// Runs the trip rules on one finding.
    pub fn judge(&mut self, f: &Finding, out: &mut Response) {
        if f.kind == FindingKind::CohortAnomaly {
            return;
        }
        let cfg = &self.cfg;
        let entry = self.agents.entry(f.agent_id.as_str().into()).or_default();
        if entry.spent_until.is_some_and(|t| f.ts <= t) {
            return;
        }
        // The rules that fire, strongest mode first (ties: the order below).
        let mut fired: Vec<(Rule, Mode, String, Vec<String>)> = Vec::new();
        let hard = &cfg.rules.hard_limit;
        if hard.enabled && hard.kinds.contains(&f.kind) && f.severity >= Severity::High {
            fired.push((
                Rule::HardLimit,
                cfg.mode(hard.mode),
                format!("hard limit {}: {}", f.kind.as_str(), f.summary),
                vec![f.finding_id.clone()],
            ));
        }
        if cfg.rules.critical_finding.enabled && f.severity == Severity::Critical {
            fired.push((
                Rule::CriticalFinding,
                cfg.mode(cfg.rules.critical_finding.mode),
                format!("critical {} finding: {}", f.kind.as_str(), f.summary),
                vec![f.finding_id.clone()],
            ));
        }
        let rep = &cfg.rules.repeated_findings;
        if rep.count > 0 && f.severity >= rep.min_severity {
            let horizon = f.ts.saturating_sub((rep.window_seconds as i64).saturating_mul(1000));
            entry.recent.retain(|(ts, id)| *ts > horizon && *id != f.finding_id);
            entry.recent.push_back((f.ts, f.finding_id.clone()));
            while entry.recent.len() > rep.count as usize {
                entry.recent.pop_front();
            }
            if entry.recent.len() >= rep.count as usize {
                fired.push((
                    Rule::RepeatedFindings,
                    cfg.mode(rep.mode),
                    format!(
                        "{} findings of severity {} or above within {} s",
                        rep.count,
                        rep.min_severity.as_str(),
                        rep.window_seconds
                    ),
                    entry.recent.iter().map(|(_, id)| id.clone()).collect(),
                ));
            }
        }
        let cohort_counts = f.severity >= cfg.cohort.min_severity && cfg.cohort.min_agents > 0;
        if let Some((rule, mode, reason, ids)) =
            fired.into_iter().enumerate().max_by_key(|(i, r)| (r.1, std::cmp::Reverse(*i))).map(|(_, r)| r)
        {
            let mut evidence = Map::new();
            evidence.insert("finding_kind".into(), json!(f.kind.as_str()));
            evidence.insert("severity".into(), json!(f.severity.as_str()));
            evidence.insert("score".into(), json!(f.score));
            let d = Decision {
                at: f.ts,
                mode,
                actor: Actor::Rule(rule),
                reason,
                finding_ids: ids,
                evidence,
                command: None,
            };
            self.trip_agent(&f.agent_id, d, out);
        }
        if cohort_counts {
            self.cohort_rule(f, out);
        }
    }

    /// Opens (or strengthens) an agent's breaker. Returns whether it moved.
    fn trip_agent(&mut self, agent: &str, mut d: Decision<'_>, out: &mut Response) -> bool {
        let operator = matches!(d.actor, Actor::Operator(_));
        let max_halts = self.cfg.max_halts_per_hour as usize;
        let entry = self.agents.entry(agent.into()).or_default();
        let pinned_before = matches!(&entry.breaker, Breaker::Open(o) if o.pinned);
        let stronger = match &entry.breaker {
            Breaker::Open(o) => d.mode > o.trip.mode || (operator && !o.pinned),
            _ => true,
        };
        if !stronger {
            return false;
        }
        let from = entry.breaker.state();
        let fresh = from != BreakerState::Open;
        if fresh {
            entry.halts.retain(|t| *t > d.at - HOUR_MS);
            entry.halts.push_back(d.at);
        }
        let capped = !operator && fresh && entry.halts.len() >= max_halts;
        let pinned = operator || capped || pinned_before;
        if capped {
            d.reason.push_str(&format!(
                "; halt {} of this agent within an hour: it stays open until an operator resumes it",
                entry.halts.len()
            ));
            d.evidence.insert("flap_guard".into(), json!(true));
        }
        if pinned {
            d.evidence.insert("pinned".into(), json!(true));
        }
        let action = halt_action(Scope::Agent, d.mode);
        let t = transition(action, Some(agent), None, Vec::new(), from, BreakerState::Open, &d);
        let trip = Trip::of(&t);
        entry.breaker = match std::mem::take(&mut entry.breaker) {
            Breaker::Closed(c) => Breaker::Open(c.trip(trip, pinned)),
            Breaker::HalfOpen(h) => Breaker::Open(h.trip(trip, pinned)),
            Breaker::Open(o) => Breaker::Open(o.strengthen(trip, pinned)),
        };
        if !pinned && self.cfg.cooldown_seconds > 0 {
            let wait = self.cfg.cooldown_seconds.max(self.cfg.min_open_seconds) as i64 * 1000;
            self.timers.insert((d.at.saturating_add(wait), Key::Agent(agent.to_owned())));
        }
        self.emit(t, out);
        if fresh && !operator {
            self.fleet_rule(agent, d.at, out);
        }
        true
    }

    fn cohort_rule(&mut self, f: &Finding, out: &mut Response) {
        let Some(entry) = self.agents.get(f.agent_id.as_str()) else { return };
        let factors = entry.factors.to_factors();
        let cfg = self.cfg.cohort.clone();
        let window = (cfg.window_seconds as i64).saturating_mul(1000);
        for &factor in &cfg.factors {
            let Some(value) = factor_of(&factors, factor) else { continue };
            let key = (factor, value.to_owned());
            let c = self.cohorts.entry(key.clone()).or_default();
            c.recent.retain(|(ts, _, id)| *ts > f.ts - window && *id != f.finding_id);
            c.recent.push_back((f.ts, f.agent_id.clone(), f.finding_id.clone()));
            let mode = self.cfg.mode(cfg.mode);
            if c.open.as_ref().is_some_and(|o| o.trip.mode >= mode) {
                continue;
            }
            // Agents already behind an open cohort are explained by it: a bad model must not also halt
            // its whole provider (factors are tried finest first).
            let covered = |agent: &str| {
                self.cohorts.iter().any(|((f, v), other)| {
                    other.open.as_ref().is_some_and(|o| o.trip.mode >= mode)
                        && (*f, v.as_str()) != (factor, value)
                        && self.agents.get(agent).and_then(|e| e.factors.get(*f)) == Some(v.as_str())
                })
            };
            let Some(c) = self.cohorts.get(&key) else { continue };
            let raising: BTreeSet<&str> =
                c.recent.iter().map(|(_, a, _)| a.as_str()).filter(|a| !covered(a)).collect();
            if raising.len() < cfg.min_agents as usize {
                continue;
            }
            let members = self.view.members(factor, value);
            let share = raising.len() as f64 / members.len().max(1) as f64;
            if share < cfg.min_fraction {
                continue;
            }
            let raising: Vec<String> = raising.into_iter().map(str::to_owned).collect();
            let ids: Vec<String> = c.recent.iter().map(|(_, _, id)| id.clone()).collect();
            let mut evidence = Map::new();
            evidence.insert("factor".into(), json!(factor.as_str()));
            evidence.insert("value".into(), json!(value));
            evidence.insert("agents_raising".into(), json!(raising));
            evidence.insert("agents_behind".into(), json!(members.len()));
            evidence.insert("share".into(), json!(share));
            evidence.insert("window_seconds".into(), json!(cfg.window_seconds));
            let summary = format!(
                "{} of {} agents behind {}={value} raised findings within {} s: {}",
                raising.len(),
                members.len(),
                factor.as_str(),
                cfg.window_seconds,
                raising.join(", ")
            );
            let window_start = f.ts.div_euclid(window.max(1)) * window.max(1);
            out.findings.push(Finding {
                finding_id: row_id(&[
                    FindingKind::CohortAnomaly.as_str().as_bytes(),
                    factor.as_str().as_bytes(),
                    value.as_bytes(),
                    &window_start.to_be_bytes(),
                ]),
                kind: FindingKind::CohortAnomaly,
                severity: Severity::Critical,
                agent_id: f.agent_id.clone(),
                ts: f.ts,
                window_start,
                window_end: window_start + window,
                score: share,
                summary: summary.clone(),
                evidence: evidence.clone(),
                event_ids: Vec::new(),
            });
            let d = Decision {
                at: f.ts,
                mode,
                actor: Actor::Rule(Rule::CohortFindings),
                reason: summary,
                finding_ids: ids,
                evidence,
                command: None,
            };
            self.open_cohort(factor, value.to_owned(), members, d, out);
        }
    }

    fn open_cohort(
        &mut self,
        factor: Factor,
        value: String,
        members: Vec<String>,
        d: Decision<'_>,
        out: &mut Response,
    ) {
        let operator = matches!(d.actor, Actor::Operator(_));
        let c = self.cohorts.entry((factor, value.clone())).or_default();
        let from = if c.open.is_some() { BreakerState::Open } else { BreakerState::Closed };
        let action = halt_action(Scope::Cohort, d.mode);
        let t = transition(action, None, Some((factor, &value)), members, from, BreakerState::Open, &d);
        let trip = Trip::of(&t);
        let (open, pinned) = group_open(c.open.take(), trip, operator, d.mode);
        c.open = Some(open);
        self.lapse_later(pinned, d.at, Key::Cohort(factor, value));
        self.emit(t, out);
    }

    fn fleet_rule(&mut self, agent: &str, at: i64, out: &mut Response) {
        let cfg = &self.cfg.fleet;
        if cfg.min_agents == 0 {
            return;
        }
        let window = (cfg.window_seconds as i64).saturating_mul(1000);
        self.fleet_trips.retain(|(ts, _)| *ts > at - window);
        self.fleet_trips.push_back((at, agent.to_owned()));
        let tripped: BTreeSet<&str> = self.fleet_trips.iter().map(|(_, a)| a.as_str()).collect();
        let known = self.agents.len().max(1);
        let share = tripped.len() as f64 / known as f64;
        let mode = self.cfg.mode(cfg.mode);
        if tripped.len() < cfg.min_agents as usize
            || share < cfg.min_fraction
            || self.fleet.as_ref().is_some_and(|o| o.trip.mode >= mode)
        {
            return;
        }
        let mut evidence = Map::new();
        evidence.insert("agents_tripped".into(), json!(tripped));
        evidence.insert("agents_known".into(), json!(known));
        evidence.insert("window_seconds".into(), json!(cfg.window_seconds));
        let d = Decision {
            at,
            mode,
            actor: Actor::Rule(Rule::FleetTrips),
            reason: format!("{} of {known} agents tripped within {} s", tripped.len(), cfg.window_seconds),
            finding_ids: Vec::new(),
            evidence,
            command: None,
        };
        self.open_fleet(d, out);
    }

    fn open_fleet(&mut self, d: Decision<'_>, out: &mut Response) {
        let operator = matches!(d.actor, Actor::Operator(_));
        let from = if self.fleet.is_some() { BreakerState::Open } else { BreakerState::Closed };
        let t = transition(
            halt_action(Scope::Fleet, d.mode),
            None,
            None,
            Vec::new(),
            from,
            BreakerState::Open,
            &d,
        );
        let trip = Trip::of(&t);
        let (open, pinned) = group_open(self.fleet.take(), trip, operator, d.mode);
        self.fleet = Some(open);
        self.lapse_later(pinned, d.at, Key::Fleet);
        self.emit(t, out);
    }

    /// Arms the cooldown after which a group halt that is not pinned lapses.
    fn lapse_later(&mut self, pinned: bool, at: i64, key: Key) {
        if !pinned && self.cfg.cooldown_seconds > 0 {
            let wait = self.cfg.cooldown_seconds as i64 * 1000;
            self.timers.insert((at.saturating_add(wait), key));
        }
    }

    /// Moves breakers whose cooldown or probation ended by `now` (event time).
    pub fn tick(&mut self, now: i64, out: &mut Response) {
        while let Some((due, _)) = self.timers.first() {
            if *due > now {
                break;
            }
            let Some((due, key)) = self.timers.pop_first() else { break };
            match key {
                Key::Agent(agent) => self.agent_timer(&agent, due, out),
                Key::Cohort(factor, value) => {
                    let cooldown = self.cfg.cooldown_seconds as i64 * 1000;
                    let Some(c) = self.cohorts.get_mut(&(factor, value.clone())) else { continue };
                    let Some(o) = c.open.take_if(|o| lapsed(o, cooldown, due)) else { continue };
                    let cohort = Some((factor, value.as_str()));
                    let t = transition(
                        Action::CohortResume,
                        None,
                        cohort,
                        Vec::new(),
                        BreakerState::Open,
                        BreakerState::Closed,
                        &lapse(due, &o),
                    );
                    self.emit(t, out);
                }
                Key::Fleet => {
                    let cooldown = self.cfg.cooldown_seconds as i64 * 1000;
                    let Some(o) = self.fleet.take_if(|o| lapsed(o, cooldown, due)) else { continue };
                    let t = transition(
                        Action::FleetResume,
                        None,
                        None,
                        Vec::new(),
                        BreakerState::Open,
                        BreakerState::Closed,
                        &lapse(due, &o),
                    );
                    self.emit(t, out);
                }
            }
        }
    }

    fn agent_timer(&mut self, agent: &str, due: i64, out: &mut Response) {
        let cooldown = self.cfg.cooldown_seconds.max(self.cfg.min_open_seconds) as i64 * 1000;
        let quiet = self.cfg.quiet_seconds as i64 * 1000;
        let Some(entry) = self.agents.get_mut(agent) else { return };
        let (t, next) = match std::mem::take(&mut entry.breaker) {
            Breaker::Open(o) if !o.pinned && o.since + cooldown <= due => {
                let reason = format!("cooldown of {} s after the halt ended: probation", cooldown / 1000);
                let d = Decision::by_rule(due, o.trip.mode, Rule::Cooldown, reason);
                let t = transition(
                    Action::AgentHalfOpen,
                    Some(agent),
                    None,
                    Vec::new(),
                    BreakerState::Open,
                    BreakerState::HalfOpen,
                    &d,
                );
                match o.cool(due) {
                    Ok(h) => (Some(t), Breaker::HalfOpen(h)),
                    Err(o) => (None, Breaker::Open(o)),
                }
            }
            Breaker::HalfOpen(h) if h.since + quiet <= due => {
                let reason = format!("{} s of probation without a trip", quiet / 1000);
                let d = Decision::by_rule(due, h.mode, Rule::Quiet, reason);
                let t = transition(
                    Action::AgentResume,
                    Some(agent),
                    None,
                    Vec::new(),
                    BreakerState::HalfOpen,
                    BreakerState::Closed,
                    &d,
                );
                (Some(t), Breaker::Closed(h.close()))
            }
            other => (None, other),
        };
        entry.breaker = next;
        if matches!(entry.breaker, Breaker::HalfOpen(_)) && t.is_some() {
            self.timers.insert((due.saturating_add(quiet), Key::Agent(agent.to_owned())));
        }
        if let Some(t) = t {
            self.emit(t, out);
        }
    }

    /// Carries out an operator's command. Operator halts always enforce and stay until an operator
    /// resumes; a resume closes the breaker and spends the findings before it. Resuming the fleet or a
    /// cohort leaves agents halted on their own (staged resume).
    pub fn command(&mut self, cmd: &Command, out: &mut Response) -> Result<Transition, Unchanged> {
        if cmd.reason.trim().is_empty() {
            return Err(Unchanged::Missing("reason"));
        }
        if cmd.operator.trim().is_empty() {
            return Err(Unchanged::Missing("operator"));
        }
        let d = Decision {
            at: cmd.ts,
            mode: Mode::Enforce,
            actor: Actor::Operator(cmd.operator.clone()),
            reason: cmd.reason.clone(),
            finding_ids: Vec::new(),
            evidence: Map::new(),
            command: Some(&cmd.id),
        };
        let before = out.transitions.len();
        let already = |o: &Open| Unchanged::AlreadyHalted {
            since: o.since,
            actor: o.trip.actor.wire(),
            reason: o.trip.reason.clone(),
        };
        match (&cmd.verb, &cmd.target) {
            (Verb::Halt, Target::Agent(agent)) => {
                if let Some(Breaker::Open(o)) = self.agents.get(agent.as_str()).map(|e| &e.breaker)
                    && o.pinned
                    && o.trip.mode == Mode::Enforce
                {
                    return Err(already(o));
                }
                self.trip_agent(agent, d, out);
            }
            (Verb::Resume, Target::Agent(agent)) => {
                let entry = self.agents.entry(agent.as_str().into()).or_default();
                let from = entry.breaker.state();
                if from == BreakerState::Closed {
                    return Err(Unchanged::NotHalted);
                }
                entry.breaker = Breaker::Closed(match std::mem::take(&mut entry.breaker) {
                    Breaker::Open(o) => o.resume(),
                    Breaker::HalfOpen(h) => h.close(),
                    Breaker::Closed(c) => c,
                });
                entry.spent_until = entry.spent_until.max(Some(cmd.ts));
                entry.recent.clear();
                let t = transition(
                    Action::AgentResume,
                    Some(agent),
                    None,
                    Vec::new(),
                    from,
                    BreakerState::Closed,
                    &d,
                );
                self.emit(t, out);
            }
            (Verb::Halt, Target::Cohort(factor, value)) => {
                if let Some(o) = self.cohorts.get(&(*factor, value.clone())).and_then(|c| c.open.as_ref())
                    && o.pinned
                    && o.trip.mode == Mode::Enforce
                {
                    return Err(already(o));
                }
                let members = self.view.members(*factor, value);
                self.open_cohort(*factor, value.clone(), members, d, out);
            }
            (Verb::Resume, Target::Cohort(factor, value)) => {
                let Some(o) = self.cohorts.get_mut(&(*factor, value.clone())).and_then(|c| c.open.take())
                else {
                    return Err(Unchanged::NotHalted);
                };
                drop(o);
                for agent in self.view.members(*factor, value) {
                    if let Some(e) = self.agents.get_mut(agent.as_str()) {
                        e.spent_until = e.spent_until.max(Some(cmd.ts));
                    }
                }
                let t = transition(
                    Action::CohortResume,
                    None,
                    Some((*factor, value)),
                    Vec::new(),
                    BreakerState::Open,
                    BreakerState::Closed,
                    &d,
                );
                self.emit(t, out);
            }
            (Verb::Halt, Target::Fleet) => {
                if let Some(o) = &self.fleet
                    && o.pinned
                    && o.trip.mode == Mode::Enforce
                {
                    return Err(already(o));
                }
                self.open_fleet(d, out);
            }
            (Verb::Resume, Target::Fleet) => {
                if self.fleet.take().is_none() {
                    return Err(Unchanged::NotHalted);
                }
                self.fleet_trips.clear();
                let t = transition(
                    Action::FleetResume,
                    None,
                    None,
                    Vec::new(),
                    BreakerState::Open,
                    BreakerState::Closed,
                    &d,
                );
                self.emit(t, out);
            }
        }
        out.transitions.get(before).cloned().ok_or(Unchanged::NotHalted)
    }

    /// Restores a breaker from a transition read back (the control log at start, or another member's
    /// transition from the control topic): the breaker ends where the transition left it. A transition
    /// older than the breaker's last move is ignored; returns whether it was applied.
    pub fn apply(&mut self, t: &Transition) -> bool {
        let key = t.key();
        if self.changed.get(&key).is_some_and(|at| *at > t.ts) {
            return false;
        }
        self.changed.insert(key, t.ts);
        let pinned = matches!(t.actor, Actor::Operator(_))
            || t.evidence.get("pinned").and_then(Value::as_bool) == Some(true);
        let trip = Trip::of(t);
        match t.scope() {
            Scope::Agent => {
                let Some(agent) = &t.agent_id else { return false };
                let cooldown = self.cfg.cooldown_seconds.max(self.cfg.min_open_seconds) as i64 * 1000;
                let quiet = self.cfg.quiet_seconds as i64 * 1000;
                let entry = self.agents.entry(agent.as_str().into()).or_default();
                match t.to {
                    BreakerState::Open => {
                        let since = match &entry.breaker {
                            Breaker::Open(o) if t.from == BreakerState::Open => o.since,
                            _ => t.ts,
                        };
                        entry.breaker = Breaker::Open(Open { trip, since, pinned });
                        if !pinned && self.cfg.cooldown_seconds > 0 {
                            self.timers.insert((since.saturating_add(cooldown), Key::Agent(agent.clone())));
                        }
                    }
                    BreakerState::HalfOpen => {
                        entry.breaker =
                            Breaker::HalfOpen(crate::breaker::HalfOpen { since: t.ts, mode: t.mode });
                        self.timers.insert((t.ts.saturating_add(quiet), Key::Agent(agent.clone())));
                    }
                    BreakerState::Closed => {
                        entry.breaker = Breaker::Closed(Closed);
                        if matches!(t.actor, Actor::Operator(_)) {
                            entry.spent_until = entry.spent_until.max(Some(t.ts));
                        }
                    }
                }
            }
            Scope::Cohort => {
                let Some(key) = t.factor.zip(t.value.clone()) else { return false };
                let c = self.cohorts.entry(key).or_default();
                c.open = (t.to == BreakerState::Open).then(|| Open {
                    since: t.ts,
                    trip,
                    pinned: pinned || t.mode == Mode::Enforce,
                });
            }
            Scope::Fleet => {
                self.fleet = (t.to == BreakerState::Open).then(|| Open {
                    since: t.ts,
                    trip,
                    pinned: pinned || t.mode == Mode::Enforce,
                });
            }
        }
        self.view.apply(t);
        true
    }

    fn emit(&mut self, t: Transition, out: &mut Response) {
        self.changed.insert(t.key(), t.ts);
        self.view.apply(&t);
        out.transitions.push(t);
    }

    /// The halt that stops `agent` now, if any.
    pub fn verdict(&self, agent: &str) -> Option<&Halt> {
        self.view.verdict(agent)
    }

    /// Agents whose breaker is not closed, sorted, with their state.
    pub fn not_closed(&self) -> Vec<(&str, BreakerState)> {
        let mut v: Vec<(&str, BreakerState)> = self
            .agents
            .iter()
            .filter(|(_, e)| !matches!(e.breaker, Breaker::Closed(_)))
            .map(|(a, e)| (a.as_str(), e.breaker.state()))
            .collect();
        v.sort_unstable_by(|a, b| a.0.cmp(b.0));
        v
    }
}

/// Opens or strengthens a group breaker (a cohort, the fleet). An operator's halt, or a rule's in
/// force, stays until an operator resumes it (pinned); a warning or a shadow lapses after the cooldown,
/// so the rule can speak again.
fn group_open(prev: Option<Open>, trip: Trip, operator: bool, mode: Mode) -> (Open, bool) {
    let pinned = operator || mode == Mode::Enforce;
    let open = match prev {
        Some(o) => o.strengthen(trip, pinned),
        None => Closed.trip(trip, pinned),
    };
    (open, pinned)
}

/// Whether a group breaker that is not pinned has been open for the cooldown by `due`.
fn lapsed(o: &Open, cooldown_ms: i64, due: i64) -> bool {
    !o.pinned && o.since + cooldown_ms <= due
}

fn lapse(at: i64, o: &Open) -> Decision<'static> {
    let reason =
        format!("the {} decision of {} lapsed after the cooldown", o.trip.mode.as_str(), o.trip.actor.wire());
    Decision::by_rule(at, o.trip.mode, Rule::Cooldown, reason)
}

fn transition(
    action: Action,
    agent: Option<&str>,
    cohort: Option<(Factor, &str)>,
    agents: Vec<String>,
    from: BreakerState,
    to: BreakerState,
    d: &Decision<'_>,
) -> Transition {
    let key = match (agent, cohort) {
        (Some(a), _) => format!("agent:{a}"),
        (None, Some((f, v))) => format!("cohort:{}={v}", f.as_str()),
        (None, None) => "fleet".to_owned(),
    };
    let cause = match d.command {
        Some(c) => c.to_owned(),
        None => d.finding_ids.join(","),
    };
    let transition_id = row_id(&[
        action.as_str().as_bytes(),
        d.mode.as_str().as_bytes(),
        key.as_bytes(),
        &d.at.to_be_bytes(),
        d.actor.wire().as_bytes(),
        cause.as_bytes(),
    ]);
    Transition {
        transition_id,
        ts: d.at,
        action,
        agent_id: agent.map(str::to_owned),
        factor: cohort.map(|c| c.0),
        value: cohort.map(|c| c.1.to_owned()),
        agents,
        from,
        to,
        mode: d.mode,
        actor: d.actor.clone(),
        reason: d.reason.clone(),
        evidence: d.evidence.clone(),
        finding_ids: d.finding_ids.clone(),
    }
}

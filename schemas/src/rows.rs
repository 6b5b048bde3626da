//! The rows every table of the archive stores besides events, as the judge produces them and readers
//! consume them: findings (`findings/`) and decisions (`control/`). They live with the contract so that
//! whatever moves or reads them (the archive, topics, a webhook sender) needs no judge.

use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::timestamp::format_rfc3339_ms;

/// The id of a row (a finding, a decision) from the parts that identify it: 32 hex digits of SHA-256
/// over the parts, each preceded by its length, so ("ab", "c") and ("a", "bc") differ.
pub fn row_id(parts: &[&[u8]]) -> String {
    let mut h = Sha256::new();
    for part in parts {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    hex(&h.finalize()[..16])
}

/// Bytes as lower-case hex digits, two per byte.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * bytes.len());
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    out
}

/// The kinds of finding (DESIGN.md lists their meanings).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// Outside the agent's declared allow-list.
    PolicyViolation,
    /// Resources or scopes new to the agent and rare among its peers, or a shift in what it touches.
    ScopeDrift,
    /// Actions per window far above the agent's baseline.
    VolumeSpike,
    /// Bytes per window far above the agent's baseline.
    DataSpike,
    /// Actions per span far below what the agent's daily and weekly rhythm expects: the agent, or the
    /// trail of its actions, went quiet when it is usually busy.
    VolumeDrop,
    /// Over the hard actions-per-minute cap.
    RateLimit,
    /// Over the hard bytes-per-session cap.
    SessionLimit,
    /// A credential used by more than one agent, or a human's credential used by an agent.
    SharedCredential,
    /// A new model or provider behind the agent.
    ModelChange,
    /// Many denied actions in a window: probing.
    DeniedBurst,
    /// Model tokens per window (or span) far above the agent's baseline: a loop burning the budget.
    TokenSpike,
    /// Over a declared token or money budget for a minute, an hour or a day (warn or hard level).
    BudgetLimit,
    /// A halted agent still acting: the gateway did not revoke it.
    HaltedAgentActivity,
    /// Several agents behind one model, provider or credential issuer raising findings together.
    CohortAnomaly,
    /// An event declared a role other than the one its agent is bound to (by config, or by the first
    /// role it declared), or left out the role it had declared: judged under the bound role regardless.
    RoleMismatch,
    /// An agent that no allow-list covers while allow-lists are declared: nothing it does is checked
    /// against one.
    UncoveredAgent,
    /// More agents than `detect.max_agents`: the ones beyond it are archived but not judged.
    AgentOverflow,
}

impl FindingKind {
    /// Every kind this version emits.
    pub const ALL: &'static [FindingKind] = &[
        FindingKind::PolicyViolation,
        FindingKind::ScopeDrift,
        FindingKind::VolumeSpike,
        FindingKind::DataSpike,
        FindingKind::VolumeDrop,
        FindingKind::RateLimit,
        FindingKind::SessionLimit,
        FindingKind::SharedCredential,
        FindingKind::ModelChange,
        FindingKind::DeniedBurst,
        FindingKind::TokenSpike,
        FindingKind::BudgetLimit,
        FindingKind::HaltedAgentActivity,
        FindingKind::CohortAnomaly,
        FindingKind::RoleMismatch,
        FindingKind::UncoveredAgent,
        FindingKind::AgentOverflow,
    ];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            FindingKind::PolicyViolation => "policy_violation",
            FindingKind::ScopeDrift => "scope_drift",
            FindingKind::VolumeSpike => "volume_spike",
            FindingKind::DataSpike => "data_spike",
            FindingKind::VolumeDrop => "volume_drop",
            FindingKind::RateLimit => "rate_limit",
            FindingKind::SessionLimit => "session_limit",
            FindingKind::SharedCredential => "shared_credential",
            FindingKind::ModelChange => "model_change",
            FindingKind::DeniedBurst => "denied_burst",
            FindingKind::TokenSpike => "token_spike",
            FindingKind::BudgetLimit => "budget_limit",
            FindingKind::HaltedAgentActivity => "halted_agent_activity",
            FindingKind::CohortAnomaly => "cohort_anomaly",
            FindingKind::RoleMismatch => "role_mismatch",
            FindingKind::UncoveredAgent => "uncovered_agent",
            FindingKind::AgentOverflow => "agent_overflow",
        }
    }
}

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth a look.
    Low,
    /// Worth a ticket.
    Medium,
    /// Worth a page.
    High,
    /// Halt first, ask later.
    Critical,
}

impl Severity {
    /// Every severity, lowest first.
    pub const ALL: &'static [Severity] =
        &[Severity::Low, Severity::Medium, Severity::High, Severity::Critical];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// One step up (critical stays critical).
    pub const fn raised(self) -> Severity {
        match self {
            Severity::Low => Severity::Medium,
            Severity::Medium => Severity::High,
            Severity::High | Severity::Critical => Severity::Critical,
        }
    }
}

fn rfc3339<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_rfc3339_ms(*ms))
}

/// One judgement about one agent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// Deterministic: the same input gives the same id.
    pub finding_id: String,
    /// What was found.
    pub kind: FindingKind,
    /// How bad.
    pub severity: Severity,
    /// Who.
    pub agent_id: String,
    /// Event time at detection (UTC ms; RFC 3339 on the wire).
    #[serde(serialize_with = "rfc3339")]
    pub ts: i64,
    /// Start of the window the evidence covers.
    #[serde(serialize_with = "rfc3339")]
    pub window_start: i64,
    /// End of that window (exclusive).
    #[serde(serialize_with = "rfc3339")]
    pub window_end: i64,
    /// Strength of the evidence; for hard limits, observed over limit.
    pub score: f64,
    /// One human sentence.
    pub summary: String,
    /// The numbers behind it.
    pub evidence: serde_json::Map<String, serde_json::Value>,
    /// A bounded sample of the events behind it.
    pub event_ids: Vec<String>,
}

/// How a rule's decision is carried out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Recorded only: what the rule would have done. Nothing is sent, nothing is enforced.
    Shadow,
    /// `agent.warn` (or `cohort.warn`, `fleet.warn`) is sent; the breaker the gateway sees stays closed.
    Warn,
    /// Carried out: the halt is sent and the check endpoint refuses the agent.
    Enforce,
}

impl Mode {
    /// Every mode, weakest first.
    pub const ALL: &'static [Mode] = &[Mode::Shadow, Mode::Warn, Mode::Enforce];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Shadow => "shadow",
            Mode::Warn => "warn",
            Mode::Enforce => "enforce",
        }
    }
}

/// What a breaker covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// One agent.
    Agent,
    /// Every agent behind one model, provider or credential issuer.
    Cohort,
    /// Every agent.
    Fleet,
}

impl Scope {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Scope::Agent => "agent",
            Scope::Cohort => "cohort",
            Scope::Fleet => "fleet",
        }
    }
}

/// What agents of a cohort share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Factor {
    /// The event's `model`.
    Model,
    /// The event's `model_provider`.
    Provider,
    /// `attributes.credential_issuer`: who issued the credential the agent acts with.
    Issuer,
}

impl Factor {
    /// Every factor.
    pub const ALL: &'static [Factor] = &[Factor::Model, Factor::Provider, Factor::Issuer];

    /// The wire name (also the API path segment and the CLI's `--cohort NAME=VALUE`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Factor::Model => "model",
            Factor::Provider => "provider",
            Factor::Issuer => "issuer",
        }
    }

    /// The factor named `s` (`credential_issuer` is accepted for `issuer`).
    pub fn parse(s: &str) -> Option<Factor> {
        match s {
            "model" => Some(Factor::Model),
            "provider" | "model_provider" => Some(Factor::Provider),
            "issuer" | "credential_issuer" => Some(Factor::Issuer),
            _ => None,
        }
    }
}

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Acting normally.
    Closed,
    /// Halted.
    Open,
    /// Allowed again on probation: the next trip reopens at once.
    HalfOpen,
}

impl BreakerState {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// What a transition did, as the archive, the topics and webhooks name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Action {
    /// An agent halted (or, in shadow mode, would have been).
    #[serde(rename = "agent.halt")]
    AgentHalt,
    /// A rule in warn mode would halt the agent; it keeps acting.
    #[serde(rename = "agent.warn")]
    AgentWarn,
    /// A halted agent may act again on probation (after the cooldown).
    #[serde(rename = "agent.half_open")]
    AgentHalfOpen,
    /// An agent may act again (an operator, or a quiet probation).
    #[serde(rename = "agent.resume")]
    AgentResume,
    /// A cohort halted.
    #[serde(rename = "cohort.halt")]
    CohortHalt,
    /// A cohort rule in warn mode.
    #[serde(rename = "cohort.warn")]
    CohortWarn,
    /// A cohort may act again.
    #[serde(rename = "cohort.resume")]
    CohortResume,
    /// The whole fleet halted.
    #[serde(rename = "fleet.halt")]
    FleetHalt,
    /// A fleet rule in warn mode.
    #[serde(rename = "fleet.warn")]
    FleetWarn,
    /// The fleet may act again.
    #[serde(rename = "fleet.resume")]
    FleetResume,
}

impl Action {
    /// Every action.
    pub const ALL: &'static [Action] = &[
        Action::AgentHalt,
        Action::AgentWarn,
        Action::AgentHalfOpen,
        Action::AgentResume,
        Action::CohortHalt,
        Action::CohortWarn,
        Action::CohortResume,
        Action::FleetHalt,
        Action::FleetWarn,
        Action::FleetResume,
    ];

    /// The wire name (the webhook event type).
    pub const fn as_str(self) -> &'static str {
        match self {
            Action::AgentHalt => "agent.halt",
            Action::AgentWarn => "agent.warn",
            Action::AgentHalfOpen => "agent.half_open",
            Action::AgentResume => "agent.resume",
            Action::CohortHalt => "cohort.halt",
            Action::CohortWarn => "cohort.warn",
            Action::CohortResume => "cohort.resume",
            Action::FleetHalt => "fleet.halt",
            Action::FleetWarn => "fleet.warn",
            Action::FleetResume => "fleet.resume",
        }
    }

    /// The action named `s`.
    pub fn parse(s: &str) -> Option<Action> {
        Action::ALL.iter().copied().find(|a| a.as_str() == s)
    }

    /// What the breaker covers.
    pub const fn scope(self) -> Scope {
        match self {
            Action::AgentHalt | Action::AgentWarn | Action::AgentHalfOpen | Action::AgentResume => {
                Scope::Agent
            }
            Action::CohortHalt | Action::CohortWarn | Action::CohortResume => Scope::Cohort,
            Action::FleetHalt | Action::FleetWarn | Action::FleetResume => Scope::Fleet,
        }
    }
}

/// The rules that move breakers by themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// One critical finding.
    CriticalFinding,
    /// N findings of at least a severity within a window.
    RepeatedFindings,
    /// A hard limit or budget (rate, session bytes, token or money budget at its hard level).
    HardLimit,
    /// K agents behind one factor raising findings within a window.
    CohortFindings,
    /// K agents tripping within a window.
    FleetTrips,
    /// The cooldown after a halt ended: probation.
    Cooldown,
    /// Probation passed quietly.
    Quiet,
}

impl Rule {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Rule::CriticalFinding => "critical_finding",
            Rule::RepeatedFindings => "repeated_findings",
            Rule::HardLimit => "hard_limit",
            Rule::CohortFindings => "cohort_findings",
            Rule::FleetTrips => "fleet_trips",
            Rule::Cooldown => "cooldown",
            Rule::Quiet => "quiet",
        }
    }
}

/// Who moved a breaker.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Actor {
    /// A rule, on findings.
    Rule(Rule),
    /// A person (or their tool), by name, through the control API.
    Operator(String),
}

impl Actor {
    /// `rule:NAME` or `operator:NAME`, as archived.
    pub fn wire(&self) -> String {
        match self {
            Actor::Rule(r) => format!("rule:{}", r.as_str()),
            Actor::Operator(n) => format!("operator:{n}"),
        }
    }

    /// Parses what [`Actor::wire`] wrote.
    pub fn parse(s: &str) -> Option<Actor> {
        if let Some(name) = s.strip_prefix("operator:") {
            return Some(Actor::Operator(name.to_owned()));
        }
        let rule = s.strip_prefix("rule:")?;
        [
            Rule::CriticalFinding,
            Rule::RepeatedFindings,
            Rule::HardLimit,
            Rule::CohortFindings,
            Rule::FleetTrips,
            Rule::Cooldown,
            Rule::Quiet,
        ]
        .into_iter()
        .find(|r| r.as_str() == rule)
        .map(Actor::Rule)
    }
}

impl Serialize for Actor {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.wire())
    }
}

impl<'de> Deserialize<'de> for Actor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Actor::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("not an actor: {s:?}")))
    }
}

fn rfc3339_de<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let s = String::deserialize(d)?;
    crate::timestamp::parse_rfc3339_ms(&s)
        .map_err(|e| serde::de::Error::custom(format!("not an RFC 3339 time: {s:?}: {e}")))
}

/// One move of a breaker (or, in shadow and warn mode, the move a rule would have made), archived under
/// `control/`, published on the control topic, and sent to webhooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transition {
    /// Deterministic: the same decision on the same input gives the same id; the webhook-id.
    pub transition_id: String,
    /// When: the event time of the finding behind it, or the command's stamp.
    #[serde(serialize_with = "rfc3339", deserialize_with = "rfc3339_de")]
    pub ts: i64,
    /// What it did.
    pub action: Action,
    /// The agent, for an agent transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The shared factor, for a cohort transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<Factor>,
    /// The factor's value (the model's name, …), for a cohort transition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The agents it covers (a cohort's agents known when it moved; empty for one agent or the fleet).
    #[serde(default)]
    pub agents: Vec<String>,
    /// Where the breaker was.
    pub from: BreakerState,
    /// Where it went (in shadow and warn mode: where it would have gone).
    pub to: BreakerState,
    /// How it is carried out.
    pub mode: Mode,
    /// Who moved it.
    pub actor: Actor,
    /// One sentence.
    pub reason: String,
    /// The numbers behind it.
    #[serde(default)]
    pub evidence: serde_json::Map<String, serde_json::Value>,
    /// The findings behind it.
    #[serde(default)]
    pub finding_ids: Vec<String>,
}

impl Transition {
    /// The scope it moves.
    pub fn scope(&self) -> Scope {
        self.action.scope()
    }

    /// The breaker it moves: `agent:ID`, `cohort:FACTOR=VALUE` or `fleet`.
    pub fn key(&self) -> String {
        match self.scope() {
            Scope::Agent => format!("agent:{}", self.agent_id.as_deref().unwrap_or_default()),
            Scope::Cohort => format!(
                "cohort:{}={}",
                self.factor.map_or("", Factor::as_str),
                self.value.as_deref().unwrap_or_default()
            ),
            Scope::Fleet => "fleet".to_owned(),
        }
    }
}

/// What became of one webhook delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// The endpoint answered 2xx.
    Delivered,
    /// Given up after the last attempt; `detail` says why.
    Failed,
    /// The endpoint answered 410 Gone and is disabled.
    Disabled,
    /// The target was refused before connecting (a private address without `allow_private`).
    Refused,
}

impl Delivery {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Delivery::Delivered => "delivered",
            Delivery::Failed => "failed",
            Delivery::Disabled => "disabled",
            Delivery::Refused => "refused",
        }
    }
}

/// The outcome of sending one transition to one webhook endpoint, archived under `control/` beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeliveryOutcome {
    /// The transition (and webhook-id) delivered.
    pub transition_id: String,
    /// The endpoint's name.
    pub endpoint: String,
    /// When the outcome was known (wall clock, UTC ms).
    #[serde(serialize_with = "rfc3339", deserialize_with = "rfc3339_de")]
    pub ts: i64,
    /// What happened.
    pub outcome: Delivery,
    /// Attempts made.
    pub attempts: u32,
    /// The last HTTP status, if any.
    #[serde(default)]
    pub status: Option<u16>,
    /// One sentence: why not, or how long it took.
    pub detail: String,
}

/// One row of `control/`: a transition, or what became of its delivery to one endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "snake_case")]
pub enum ControlRecord {
    /// A breaker moved.
    Transition(Transition),
    /// A webhook delivery ended.
    Delivery(DeliveryOutcome),
}

#[cfg(test)]
mod id_tests {
    use super::*;

    #[test]
    fn row_ids_are_pinned_length_prefixed_sha256_in_hex() {
        // Pinned: ids are archived and compared across restarts, so the derivation may never change.
        let id = row_id(&[b"rate_limit", b"agent-1", &60_000i64.to_be_bytes(), b""]);
        assert_eq!(id, "c83ef269e28aa416933ac7ae47bab793");
        assert_ne!(row_id(&[b"ab", b"c"]), row_id(&[b"a", b"bc"]));
        assert_eq!(hex(&[0x00, 0x0f, 0xa5, 0xff]), "000fa5ff");
        assert_eq!(hex(&[]), "");
    }
}

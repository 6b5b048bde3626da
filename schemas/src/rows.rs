//! The rows every table of the archive stores besides events, as the judge produces them and readers
//! consume them: findings (`findings/`) and decisions (`control/`). They live with the contract so that
//! whatever moves or reads them (the archive, topics, a webhook sender) needs no judge.

use serde::{Deserialize, Serialize, Serializer};

use crate::timestamp::format_rfc3339_ms;

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
}

impl FindingKind {
    /// Every kind this version emits.
    pub const ALL: &'static [FindingKind] = &[
        FindingKind::PolicyViolation,
        FindingKind::ScopeDrift,
        FindingKind::VolumeSpike,
        FindingKind::DataSpike,
        FindingKind::RateLimit,
        FindingKind::SessionLimit,
        FindingKind::SharedCredential,
        FindingKind::ModelChange,
        FindingKind::DeniedBurst,
        FindingKind::TokenSpike,
        FindingKind::BudgetLimit,
    ];

    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            FindingKind::PolicyViolation => "policy_violation",
            FindingKind::ScopeDrift => "scope_drift",
            FindingKind::VolumeSpike => "volume_spike",
            FindingKind::DataSpike => "data_spike",
            FindingKind::RateLimit => "rate_limit",
            FindingKind::SessionLimit => "session_limit",
            FindingKind::SharedCredential => "shared_credential",
            FindingKind::ModelChange => "model_change",
            FindingKind::DeniedBurst => "denied_burst",
            FindingKind::TokenSpike => "token_spike",
            FindingKind::BudgetLimit => "budget_limit",
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

/// Whether a decision was carried out or only recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Recorded only: what the rule would have done.
    Shadow,
}

impl Mode {
    /// The wire name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Mode::Shadow => "shadow",
        }
    }
}

/// A decision about an agent, archived under `control/`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Event time of the decision.
    #[serde(serialize_with = "rfc3339")]
    pub ts: i64,
    /// `agent.halt`.
    pub action: &'static str,
    /// The agent.
    pub agent_id: String,
    /// Shadow (recorded only) in this version.
    pub mode: Mode,
    /// The rule that decided: `rule:critical_finding` or `rule:high_findings`.
    pub actor: &'static str,
    /// One sentence.
    pub reason: String,
    /// The findings behind it.
    pub finding_ids: Vec<String>,
}

//! Typed detection config: what the `[detect]` table and the `[[policy]]` array of `vigil.toml` hold.
//! Validated once by [`DetectConfig::build`] into the form the engine runs.

use serde::{Deserialize, Serialize};

use crate::finding::Severity;
use crate::glob::GlobSet;

/// Detection settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DetectConfig {
    /// Hard cap on actions per agent per event-time minute; `0` turns the `rate_limit` detector off.
    #[serde(default = "default_rate_limit_per_minute")]
    pub rate_limit_per_minute: u64,
    /// Severity of a `rate_limit` finding.
    #[serde(default = "default_rate_limit_severity")]
    pub rate_limit_severity: Severity,
    /// A finding of one kind for one agent within this many seconds of the last is folded into it, so
    /// one incident is one finding rather than a storm.
    #[serde(default = "default_cooldown_seconds")]
    pub cooldown_seconds: u64,
    /// Resources (globs) whose touch raises a finding's severity one step: customer data, secrets, prod.
    #[serde(default)]
    pub sensitive_resources: Vec<String>,
    /// When an agent would be halted. In this version halts are only recorded (`shadow` mode).
    #[serde(default)]
    pub halt: HaltConfig,
    /// Declared allow-lists: least privilege per agent or role.
    #[serde(default, rename = "policy")]
    pub policies: Vec<PolicyConfig>,
}

/// 600 actions a minute is ten a second: far above what a human-paced agent does, well below a loop.
pub const fn default_rate_limit_per_minute() -> u64 {
    600
}
const fn default_rate_limit_severity() -> Severity {
    Severity::High
}
/// Fifteen minutes: long enough to fold one incident, short enough that a new one is a new finding.
pub const fn default_cooldown_seconds() -> u64 {
    900
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            rate_limit_per_minute: default_rate_limit_per_minute(),
            rate_limit_severity: default_rate_limit_severity(),
            cooldown_seconds: default_cooldown_seconds(),
            sensitive_resources: Vec::new(),
            halt: HaltConfig::default(),
            policies: Vec::new(),
        }
    }
}

/// The trip rule that decides an agent would be halted.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HaltConfig {
    /// A single critical finding halts the agent.
    #[serde(default = "default_true")]
    pub on_critical: bool,
    /// This many findings of severity high or above within `window_seconds` halt the agent; 0 = never.
    #[serde(default = "default_high_findings")]
    pub high_findings: u32,
    /// The window for `high_findings`, in seconds of event time.
    #[serde(default = "default_halt_window_seconds")]
    pub window_seconds: u64,
}

const fn default_true() -> bool {
    true
}
/// Two distinct high findings in an hour: one may be noise, two different ones rarely are.
const fn default_high_findings() -> u32 {
    2
}
const fn default_halt_window_seconds() -> u64 {
    3600
}

impl Default for HaltConfig {
    fn default() -> Self {
        HaltConfig {
            on_critical: true,
            high_findings: default_high_findings(),
            window_seconds: default_halt_window_seconds(),
        }
    }
}

/// One allow-list. It applies to the agents it names (`agents`, globs over agent_id) and to agents of
/// the roles it names (`roles`). An agent covered by one or more policies may only do what at least one
/// of them allows; an agent covered by none is not judged here (`vigil audit` lists such agents).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Name shown in findings.
    pub name: String,
    /// Agent ids (globs) this policy covers.
    #[serde(default)]
    pub agents: Vec<String>,
    /// Agent roles this policy covers (exact `agent_role` values).
    #[serde(default)]
    pub roles: Vec<String>,
    /// Allowed actions (globs); empty allows every action.
    #[serde(default)]
    pub actions: Vec<String>,
    /// Allowed resources (globs over the URI); empty allows every resource.
    #[serde(default)]
    pub resources: Vec<String>,
    /// Allowed scopes (globs); empty allows every scope. Events without a scope are not judged on it.
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// A config the engine cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A policy covers no agent at all.
    #[error("policy {name:?} names neither `agents` nor `roles`, so it covers no agent")]
    PolicyCoversNothing {
        /// The policy.
        name: String,
    },
    /// Two policies share a name, so findings could not say which one was broken.
    #[error("two policies are named {name:?}")]
    DuplicatePolicy {
        /// The name.
        name: String,
    },
    /// A value is out of its range.
    #[error("{key} = {value}: {problem}")]
    OutOfRange {
        /// Config key.
        key: &'static str,
        /// The value given.
        value: String,
        /// What is allowed.
        problem: &'static str,
    },
}

/// A policy compiled for matching.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    pub name: String,
    pub agents: GlobSet,
    pub roles: Vec<String>,
    pub actions: GlobSet,
    pub resources: GlobSet,
    pub scopes: GlobSet,
}

/// The validated config the engine runs.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub(crate) raw: DetectConfig,
    pub(crate) policies: Vec<Policy>,
    pub(crate) sensitive: GlobSet,
    pub(crate) cooldown_ms: i64,
    pub(crate) halt_window_ms: i64,
}

impl DetectConfig {
    /// Validates the config and compiles its globs.
    pub fn build(&self) -> Result<Compiled, ConfigError> {
        let mut names = std::collections::HashSet::new();
        let mut policies = Vec::with_capacity(self.policies.len());
        for p in &self.policies {
            if p.agents.is_empty() && p.roles.is_empty() {
                return Err(ConfigError::PolicyCoversNothing { name: p.name.clone() });
            }
            if !names.insert(p.name.as_str()) {
                return Err(ConfigError::DuplicatePolicy { name: p.name.clone() });
            }
            policies.push(Policy {
                name: p.name.clone(),
                agents: GlobSet::new(&p.agents),
                roles: p.roles.clone(),
                actions: GlobSet::new(&p.actions),
                resources: GlobSet::new(&p.resources),
                scopes: GlobSet::new(&p.scopes),
            });
        }
        if self.halt.window_seconds == 0 {
            return Err(ConfigError::OutOfRange {
                key: "detect.halt.window_seconds",
                value: "0".into(),
                problem: "must be at least 1",
            });
        }
        Ok(Compiled {
            raw: self.clone(),
            policies,
            sensitive: GlobSet::new(&self.sensitive_resources),
            cooldown_ms: (self.cooldown_seconds as i64).saturating_mul(1000),
            halt_window_ms: (self.halt.window_seconds as i64).saturating_mul(1000),
        })
    }
}

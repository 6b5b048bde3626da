//! `[respond]`: which findings trip which breakers, in which mode, and the flap guard.

use serde::{Deserialize, Serialize};
use vigil_schemas::rows::{Factor, FindingKind, Mode, Severity};

/// A setting out of range.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("respond.{key} = {value}: {problem}")]
pub struct ConfigError {
    /// The setting, under `[respond]`.
    pub key: &'static str,
    /// Its value.
    pub value: String,
    /// What is wrong.
    pub problem: &'static str,
}

/// `[respond]`. The defaults are a cautious team's: hard limits and operator commands enforce; rules on
/// statistical findings start in warn or shadow until their false-finding rate is known.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RespondConfig {
    /// The mode of every rule without a mode of its own.
    pub default_mode: Mode,
    /// After a rule's halt, the breaker goes half-open (the agent may act on probation) after this many
    /// seconds of event time; 0 = only an operator resumes. Operator halts never lapse.
    pub cooldown_seconds: u64,
    /// A half-open breaker closes after this many seconds without a new trip.
    pub quiet_seconds: u64,
    /// Flap guard: a breaker stays open at least this long, whatever the cooldown says.
    pub min_open_seconds: u64,
    /// Flap guard: the halt that reaches this many halts of one agent within an hour stays open until an
    /// operator resumes it.
    pub max_halts_per_hour: u32,
    /// Activity of a halted agent within this many seconds of its halt is `high` (the gateway may still
    /// be revoking); after it, `critical`.
    pub revoke_grace_seconds: u64,
    /// The trip rules for one agent.
    pub rules: Rules,
    /// The cohort breaker (the supply-chain kill switch).
    pub cohort: CohortConfig,
    /// The fleet breaker.
    pub fleet: FleetConfig,
}

impl Default for RespondConfig {
    fn default() -> Self {
        RespondConfig {
            default_mode: Mode::Warn,
            cooldown_seconds: 3600,
            quiet_seconds: 900,
            min_open_seconds: 300,
            max_halts_per_hour: 3,
            revoke_grace_seconds: 30,
            rules: Rules::default(),
            cohort: CohortConfig::default(),
            fleet: FleetConfig::default(),
        }
    }
}

/// The per-agent trip rules.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rules {
    /// One critical finding.
    pub critical_finding: SimpleRule,
    /// `count` findings of at least `min_severity` within `window_seconds`.
    pub repeated_findings: RepeatedRule,
    /// A finding of one of `kinds` at severity high or above: a declared hard limit or budget.
    pub hard_limit: HardLimitRule,
}

impl Default for Rules {
    fn default() -> Self {
        Rules {
            critical_finding: SimpleRule { enabled: true, mode: None },
            repeated_findings: RepeatedRule::default(),
            hard_limit: HardLimitRule::default(),
        }
    }
}

/// A rule that is on or off, with a mode.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SimpleRule {
    /// Whether it trips anything.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Its mode (else `default_mode`).
    #[serde(default)]
    pub mode: Option<Mode>,
}

impl Default for SimpleRule {
    fn default() -> Self {
        SimpleRule { enabled: true, mode: None }
    }
}

/// N findings of at least a severity within a window.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepeatedRule {
    /// Distinct findings needed; 0 turns the rule off.
    pub count: u32,
    /// The least severity that counts.
    pub min_severity: Severity,
    /// The window, in seconds of event time.
    pub window_seconds: u64,
    /// Its mode (else `default_mode`).
    pub mode: Option<Mode>,
}

impl Default for RepeatedRule {
    fn default() -> Self {
        // Two distinct high findings in an hour: one may be noise, two different ones rarely are. A
        // statistical rule: shadow until a team has seen what it would do.
        RepeatedRule {
            count: 2,
            min_severity: Severity::High,
            window_seconds: 3600,
            mode: Some(Mode::Shadow),
        }
    }
}

/// Declared limits: what the team wrote down, so enforcing it surprises nobody.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HardLimitRule {
    /// Whether it trips anything.
    pub enabled: bool,
    /// The kinds that are hard limits.
    pub kinds: Vec<FindingKind>,
    /// Its mode (else `default_mode`).
    pub mode: Option<Mode>,
}

impl Default for HardLimitRule {
    fn default() -> Self {
        HardLimitRule {
            enabled: true,
            kinds: vec![FindingKind::RateLimit, FindingKind::SessionLimit, FindingKind::BudgetLimit],
            mode: Some(Mode::Enforce),
        }
    }
}

/// The cohort breaker.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CohortConfig {
    /// The factors agents are grouped by.
    pub factors: Vec<Factor>,
    /// Distinct agents behind one value with findings within the window; 0 turns it off.
    pub min_agents: u32,
    /// …and at least this share of the agents known behind that value (so a provider behind most of the
    /// fleet is not halted for a few noisy agents).
    pub min_fraction: f64,
    /// The least severity that counts.
    pub min_severity: Severity,
    /// The window, in seconds of event time.
    pub window_seconds: u64,
    /// Its mode (else `default_mode`).
    pub mode: Option<Mode>,
}

impl Default for CohortConfig {
    fn default() -> Self {
        CohortConfig {
            factors: Factor::ALL.to_vec(),
            min_agents: 3,
            min_fraction: 0.5,
            min_severity: Severity::Medium,
            window_seconds: 900,
            mode: None,
        }
    }
}

/// The fleet breaker (operators can always halt the fleet; this is the rule).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// Distinct agents tripping (in any mode) within the window; 0 turns the rule off.
    pub min_agents: u32,
    /// …and at least this share of the agents known.
    pub min_fraction: f64,
    /// The window, in seconds of event time.
    pub window_seconds: u64,
    /// Its mode (else `default_mode`).
    pub mode: Option<Mode>,
}

impl Default for FleetConfig {
    fn default() -> Self {
        FleetConfig { min_agents: 10, min_fraction: 0.25, window_seconds: 900, mode: None }
    }
}

const fn yes() -> bool {
    true
}

impl RespondConfig {
    /// Checks every setting.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fraction = |key, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(())
            } else {
                Err(ConfigError { key, value: v.to_string(), problem: "must be between 0 and 1" })
            }
        };
        fraction("cohort.min_fraction", self.cohort.min_fraction)?;
        fraction("fleet.min_fraction", self.fleet.min_fraction)?;
        for (key, v) in [
            ("rules.repeated_findings.window_seconds", self.rules.repeated_findings.window_seconds),
            ("cohort.window_seconds", self.cohort.window_seconds),
            ("fleet.window_seconds", self.fleet.window_seconds),
            ("quiet_seconds", self.quiet_seconds),
        ] {
            if v == 0 {
                return Err(ConfigError { key, value: "0".into(), problem: "must be at least 1" });
            }
        }
        if self.max_halts_per_hour == 0 {
            return Err(ConfigError {
                key: "max_halts_per_hour",
                value: "0".into(),
                problem: "must be at least 1 (the halt that reaches it stays open)",
            });
        }
        Ok(())
    }

    pub(crate) fn mode(&self, own: Option<Mode>) -> Mode {
        own.unwrap_or(self.default_mode)
    }
}

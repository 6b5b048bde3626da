//! Typed detection config: what the `[detect]` table and the `[[policy]]` array of `vigil.toml` hold.
//! Validated once by [`DetectConfig::build`] into the form the engine runs.

use serde::{Deserialize, Serialize};

use crate::finding::Severity;
use crate::glob::GlobSet;

/// Detection settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DetectConfig {
    /// Length of the event-time window baselines count in, in seconds.
    #[serde(default = "default_window_seconds")]
    pub window_seconds: u64,
    /// How far behind the newest event time an event may arrive and still be counted in its window.
    /// Later events are archived and counted as late; the hard per-event checks still judge them.
    #[serde(default = "default_lateness_seconds")]
    pub lateness_seconds: u64,
    /// Hard cap on actions per agent per event-time minute; `0` turns the `rate_limit` detector off.
    #[serde(default = "default_rate_limit_per_minute")]
    pub rate_limit_per_minute: u64,
    /// Severity of a `rate_limit` finding.
    #[serde(default = "default_rate_limit_severity")]
    pub rate_limit_severity: Severity,
    /// Hard cap on bytes read plus written in one session (`session_id`); `0` turns `session_limit` off.
    #[serde(default = "default_session_max_bytes")]
    pub session_max_bytes: u64,
    /// Findings of one kind for one agent are folded into one per cooldown period (periods are aligned on
    /// event time, so the same events give the same findings in any order): one incident is one
    /// finding, updated when its severity rises, rather than a storm.
    #[serde(default = "default_cooldown_seconds")]
    pub cooldown_seconds: u64,
    /// Resources (globs) whose touch raises a finding's severity one step: customer data, secrets, prod.
    #[serde(default)]
    pub sensitive_resources: Vec<String>,
    /// Per-agent baselines.
    #[serde(default)]
    pub baseline: BaselineConfig,
    /// `volume_spike`: actions per window.
    #[serde(default = "SpikeConfig::volume")]
    pub volume: SpikeConfig,
    /// `data_spike`: bytes read plus written per window.
    #[serde(default)]
    pub data: DataConfig,
    /// `denied_burst`: denied actions per window.
    #[serde(default = "SpikeConfig::denied")]
    pub denied: SpikeConfig,
    /// `scope_drift`: new and rare keys, and the shift of the agent's work between them.
    #[serde(default)]
    pub scope: ScopeConfig,
    /// `shared_credential`.
    #[serde(default)]
    pub identity: IdentityConfig,
    /// When an agent would be halted. In this version halts are only recorded (`shadow` mode).
    #[serde(default)]
    pub halt: HaltConfig,
    /// Declared allow-lists: least privilege per agent or role.
    #[serde(default, rename = "policy")]
    pub policies: Vec<PolicyConfig>,
}

const fn default_window_seconds() -> u64 {
    60
}
const fn default_lateness_seconds() -> u64 {
    30
}
/// 10 GiB in one session is a bulk export, not an agent answering questions.
const fn default_session_max_bytes() -> u64 {
    10 << 30
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
            window_seconds: default_window_seconds(),
            lateness_seconds: default_lateness_seconds(),
            session_max_bytes: default_session_max_bytes(),
            baseline: BaselineConfig::default(),
            volume: SpikeConfig::volume(),
            data: DataConfig::default(),
            denied: SpikeConfig::denied(),
            scope: ScopeConfig::default(),
            identity: IdentityConfig::default(),
            rate_limit_per_minute: default_rate_limit_per_minute(),
            rate_limit_severity: default_rate_limit_severity(),
            cooldown_seconds: default_cooldown_seconds(),
            sensitive_resources: Vec::new(),
            halt: HaltConfig::default(),
            policies: Vec::new(),
        }
    }
}

/// How baselines learn.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineConfig {
    /// EWMA weight of each new window (0 < alpha < 1): 0.05 remembers about the last 20 windows.
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Windows an agent is watched before its baseline judges it.
    #[serde(default = "default_warmup_windows")]
    pub warmup_windows: u64,
    /// Events an agent must have made before its baseline judges it.
    #[serde(default = "default_warmup_events")]
    pub warmup_events: u64,
    /// Variance over mean above which counts are modelled as negative binomial rather than Poisson.
    #[serde(default = "default_overdispersion")]
    pub overdispersion: f64,
    /// Also learn a mean per hour of day (UTC) and judge against the larger of it and the EWMA, for
    /// fleets whose busy hours start abruptly.
    #[serde(default)]
    pub time_of_day: bool,
}

const fn default_alpha() -> f64 {
    0.05
}
const fn default_warmup_windows() -> u64 {
    60
}
const fn default_warmup_events() -> u64 {
    50
}
const fn default_overdispersion() -> f64 {
    1.5
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            alpha: default_alpha(),
            warmup_windows: default_warmup_windows(),
            warmup_events: default_warmup_events(),
            overdispersion: default_overdispersion(),
            time_of_day: false,
        }
    }
}

/// A count-per-window detector: fires when `P(X >= observed)` under the agent's baseline is below
/// `p_value` and the count is at least `min_count`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpikeConfig {
    /// Off when false.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Tail probability below which a window is a finding.
    pub p_value: f64,
    /// Smallest count that can be a finding, whatever the baseline.
    pub min_count: u64,
    /// Observed over expected at or above which the finding is high rather than medium.
    #[serde(default = "default_high_ratio")]
    pub high_ratio: f64,
}

const fn default_high_ratio() -> f64 {
    10.0
}

impl SpikeConfig {
    /// Defaults for `volume_spike`: one in a million windows by chance, and at least 20 actions.
    pub fn volume() -> SpikeConfig {
        SpikeConfig { enabled: true, p_value: 1e-6, min_count: 20, high_ratio: default_high_ratio() }
    }
    /// Defaults for `denied_burst`: at least 10 denials, one in ten thousand by chance.
    pub fn denied() -> SpikeConfig {
        SpikeConfig { enabled: true, p_value: 1e-4, min_count: 10, high_ratio: default_high_ratio() }
    }
}

/// `data_spike`: bytes per window, counted in units of `unit_bytes` under the same count models.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Off when false.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Tail probability below which a window is a finding.
    #[serde(default = "default_data_p_value")]
    pub p_value: f64,
    /// Fewest bytes in a window that can be a finding, whatever the baseline.
    #[serde(default = "default_data_min_bytes")]
    pub min_bytes: u64,
    /// The unit bytes are counted in.
    #[serde(default = "default_unit_bytes")]
    pub unit_bytes: u64,
    /// Observed over expected at or above which the finding is high.
    #[serde(default = "default_high_ratio")]
    pub high_ratio: f64,
}

const fn default_data_p_value() -> f64 {
    1e-6
}
const fn default_data_min_bytes() -> u64 {
    500_000_000
}
const fn default_unit_bytes() -> u64 {
    65_536
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            enabled: true,
            p_value: default_data_p_value(),
            min_bytes: default_data_min_bytes(),
            unit_bytes: default_unit_bytes(),
            high_ratio: default_high_ratio(),
        }
    }
}

/// `scope_drift`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeConfig {
    /// Off when false.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Path segments kept when generalising a resource URI (`file:///repo/src/x.rs` at 2 is
    /// `file:///repo/src`).
    #[serde(default = "default_resource_depth")]
    pub resource_depth: usize,
    /// A new key counts as drift only if at least this share of the agent's peers (same role) never
    /// use it (1 = none of them do).
    #[serde(default = "default_min_rarity")]
    pub min_rarity: f64,
    /// Fewer other agents in a role than this and the peer group is not consulted (every key is rare).
    #[serde(default = "default_min_peers")]
    pub min_peers: u32,
    /// New rare keys in one window at which the finding is high.
    #[serde(default = "default_high_new_keys")]
    pub high_new_keys: usize,
    /// Keys remembered per agent; beyond it the least used is forgotten.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// Keys remembered per role for peer rarity.
    #[serde(default = "default_max_peer_keys")]
    pub max_peer_keys: usize,
    /// Distinct keys counted per agent window (the smallest hashes are kept, so the choice does not
    /// depend on arrival order).
    #[serde(default = "default_max_window_keys")]
    pub max_window_keys: usize,
    /// Jensen-Shannon divergence (nats, at most ln 2 = 0.69) between the agent's recent and long-term
    /// spread of work over keys at which slow creep is a finding; 0 turns it off.
    #[serde(default = "default_divergence")]
    pub divergence: f64,
    /// Events of memory for the recent spread.
    #[serde(default = "default_short_memory")]
    pub short_memory_events: u64,
    /// Events of memory for the long-term spread.
    #[serde(default = "default_long_memory")]
    pub long_memory_events: u64,
    /// Events after warm-up before divergence is judged (the recent spread needs data).
    #[serde(default = "default_divergence_min_events")]
    pub divergence_min_events: u64,
}

const fn default_resource_depth() -> usize {
    2
}
const fn default_min_rarity() -> f64 {
    0.8
}
const fn default_min_peers() -> u32 {
    5
}
const fn default_high_new_keys() -> usize {
    3
}
const fn default_max_keys() -> usize {
    32
}
const fn default_max_peer_keys() -> usize {
    65_536
}
const fn default_max_window_keys() -> usize {
    32
}
const fn default_divergence() -> f64 {
    0.15
}
const fn default_short_memory() -> u64 {
    100
}
const fn default_long_memory() -> u64 {
    5_000
}
const fn default_divergence_min_events() -> u64 {
    200
}

impl Default for ScopeConfig {
    fn default() -> Self {
        ScopeConfig {
            enabled: true,
            resource_depth: default_resource_depth(),
            min_rarity: default_min_rarity(),
            min_peers: default_min_peers(),
            high_new_keys: default_high_new_keys(),
            max_keys: default_max_keys(),
            max_peer_keys: default_max_peer_keys(),
            max_window_keys: default_max_window_keys(),
            divergence: default_divergence(),
            short_memory_events: default_short_memory(),
            long_memory_events: default_long_memory(),
            divergence_min_events: default_divergence_min_events(),
        }
    }
}

/// `shared_credential`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// Off when false.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Globs over `credential_id` that mark a human's credential (personal access tokens, SSO
    /// sessions): an agent using one is borrowing a person's identity.
    #[serde(default)]
    pub human_credentials: Vec<String>,
    /// Credentials remembered fleet-wide (about 40 bytes each); past it new ones are not tracked.
    #[serde(default = "default_max_credentials")]
    pub max_credentials: usize,
}

const fn default_max_credentials() -> usize {
    1_000_000
}

impl Default for IdentityConfig {
    fn default() -> Self {
        IdentityConfig {
            enabled: true,
            human_credentials: Vec::new(),
            max_credentials: default_max_credentials(),
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
    pub(crate) human_credentials: GlobSet,
    pub(crate) window_ms: i64,
    pub(crate) lateness_ms: i64,
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
        let at_least_one = |key: &'static str, v: u64| {
            if v == 0 {
                Err(ConfigError::OutOfRange { key, value: "0".into(), problem: "must be at least 1" })
            } else {
                Ok(())
            }
        };
        at_least_one("detect.halt.window_seconds", self.halt.window_seconds)?;
        at_least_one("detect.window_seconds", self.window_seconds)?;
        at_least_one("detect.data.unit_bytes", self.data.unit_bytes)?;
        at_least_one("detect.scope.short_memory_events", self.scope.short_memory_events)?;
        at_least_one("detect.scope.long_memory_events", self.scope.long_memory_events)?;
        at_least_one("detect.scope.max_keys", self.scope.max_keys as u64)?;
        at_least_one("detect.scope.max_window_keys", self.scope.max_window_keys as u64)?;
        let unit = |key: &'static str, v: f64, problem: &'static str, ok: bool| {
            if ok { Ok(()) } else { Err(ConfigError::OutOfRange { key, value: v.to_string(), problem }) }
        };
        let a = self.baseline.alpha;
        unit("detect.baseline.alpha", a, "must be above 0 and below 1", a > 0.0 && a < 1.0)?;
        for (key, p) in [
            ("detect.volume.p_value", self.volume.p_value),
            ("detect.data.p_value", self.data.p_value),
            ("detect.denied.p_value", self.denied.p_value),
        ] {
            unit(key, p, "must be above 0 and below 1", p > 0.0 && p < 1.0)?;
        }
        let r = self.scope.min_rarity;
        unit("detect.scope.min_rarity", r, "must be between 0 and 1", (0.0..=1.0).contains(&r))?;
        let o = self.baseline.overdispersion;
        unit("detect.baseline.overdispersion", o, "must be at least 1", o >= 1.0)?;
        Ok(Compiled {
            raw: self.clone(),
            policies,
            sensitive: GlobSet::new(&self.sensitive_resources),
            human_credentials: GlobSet::new(&self.identity.human_credentials),
            window_ms: (self.window_seconds as i64).saturating_mul(1000),
            lateness_ms: (self.lateness_seconds as i64).saturating_mul(1000),
            cooldown_ms: (self.cooldown_seconds as i64).saturating_mul(1000),
            halt_window_ms: (self.halt.window_seconds as i64).saturating_mul(1000),
        })
    }
}

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
    /// "Newest event time" above is that of the `watermark_quorum`-th newest agent, so that one agent
    /// whose clock runs ahead (or one sender stamping events in the future) cannot make every other
    /// agent's events late and blind the windowed detectors. `1` follows the single newest event.
    #[serde(default = "default_watermark_quorum")]
    pub watermark_quorum: u32,
    /// How far the watermark may lag the newest event time when fewer than `watermark_quorum` agents
    /// are busy, in seconds. Unset, vigil takes `[input] max_future_seconds` (how far ahead an event
    /// may be stamped at all), so a lone early event still cannot push the watermark past the present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_skew_seconds: Option<u64>,
    /// Agents tracked at most (each holds its baselines: about 1 KiB idle, more while active). Events of
    /// agents beyond it are archived and counted but not judged, and an `agent_overflow` finding says
    /// so once per cooldown: a flood of made-up agent ids cannot take the memory. `0`: no cap.
    #[serde(default = "default_max_agents")]
    pub max_agents: usize,
    /// An agent with no event for this many hours of event time is forgotten: its state is freed, and
    /// if it comes back it starts afresh (a role bound by config stays bound). `0` keeps every agent.
    #[serde(default = "default_forget_idle_hours")]
    pub forget_idle_hours: u64,
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
    #[serde(default = "SpikeConfig::volume", deserialize_with = "SpikeTable::volume")]
    pub volume: SpikeConfig,
    /// `data_spike`: bytes read plus written per window.
    #[serde(default)]
    pub data: DataConfig,
    /// `denied_burst`: denied actions per window.
    #[serde(default = "SpikeConfig::denied", deserialize_with = "SpikeTable::denied")]
    pub denied: SpikeConfig,
    /// `token_spike`: model tokens (input plus output) per window.
    #[serde(default = "SpikeConfig::tokens", deserialize_with = "SpikeTable::tokens")]
    pub tokens: SpikeConfig,
    /// The cumulative detector of slow rises in actions, bytes and bytes written.
    #[serde(default)]
    pub slow: SlowConfig,
    /// Drops and rises of actions against the agent's daily and weekly rhythm.
    #[serde(default)]
    pub rhythm: RhythmConfig,
    /// A window beyond a ceiling the agent kept reaching (actions, bytes moved, bytes written).
    #[serde(default)]
    pub ceiling: CeilingConfig,
    /// `scope_drift`: new and rare keys, and the shift of the agent's work between them.
    #[serde(default)]
    pub scope: ScopeConfig,
    /// `shared_credential`.
    #[serde(default)]
    pub identity: IdentityConfig,
    /// The old home of the halt rule, now `[respond]`: refused with a message saying so.
    #[serde(default, skip_serializing)]
    pub halt: Option<serde::de::IgnoredAny>,
    /// Declared allow-lists: least privilege per agent or role.
    #[serde(default, rename = "policy")]
    pub policies: Vec<PolicyConfig>,
    /// Roles bound to agents by config: what these agents' events declare as `agent_role` is not
    /// believed (a different one is a `role_mismatch` finding). An agent no binding names is bound to
    /// the first role it declares.
    #[serde(default, rename = "role")]
    pub roles: Vec<RoleConfig>,
    /// Declared token and money budgets per agent or role (`budget_limit`).
    #[serde(default, rename = "budget")]
    pub budgets: Vec<BudgetConfig>,
}

const fn default_window_seconds() -> u64 {
    60
}
const fn default_lateness_seconds() -> u64 {
    30
}
/// Two: a single agent ahead of the fleet does not move it.
const fn default_watermark_quorum() -> u32 {
    2
}
/// A million agents: about 1 GiB of idle state.
const fn default_max_agents() -> usize {
    1_000_000
}
/// A week: an agent idle that long has no baseline worth keeping over the memory it costs.
const fn default_forget_idle_hours() -> u64 {
    168
}
/// The default of `[input] max_future_seconds`.
pub const DEFAULT_MAX_SKEW_SECONDS: u64 = 900;
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
            watermark_quorum: default_watermark_quorum(),
            max_skew_seconds: None,
            max_agents: default_max_agents(),
            forget_idle_hours: default_forget_idle_hours(),
            session_max_bytes: default_session_max_bytes(),
            baseline: BaselineConfig::default(),
            volume: SpikeConfig::volume(),
            data: DataConfig::default(),
            denied: SpikeConfig::denied(),
            tokens: SpikeConfig::tokens(),
            slow: SlowConfig::default(),
            rhythm: RhythmConfig::default(),
            ceiling: CeilingConfig::default(),
            scope: ScopeConfig::default(),
            identity: IdentityConfig::default(),
            rate_limit_per_minute: default_rate_limit_per_minute(),
            rate_limit_severity: default_rate_limit_severity(),
            cooldown_seconds: default_cooldown_seconds(),
            sensitive_resources: Vec::new(),
            halt: None,
            policies: Vec::new(),
            roles: Vec::new(),
            budgets: Vec::new(),
        }
    }
}

/// How baselines learn. Each measure (actions, bytes, denials) has, per agent, a decayed histogram of
/// its value per window and per span of `span_windows` windows, whose upper tail is a generalized Pareto
/// distribution fitted to the agent's own excesses (see `tail.rs`): bursty, heavy-tailed and shifting
/// traffic is judged against its own shape, not against a mean and a variance.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineConfig {
    /// How long a baseline remembers, in hours of event time: each window's weight decays by
    /// `1 - 1/memory` per window. A sustained new level becomes the baseline within a small share of
    /// this; one outlier stays one window among `memory`.
    #[serde(default = "default_memory_hours")]
    pub memory_hours: f64,
    /// The share of an agent's windows that make its upper tail: above the value only this share
    /// reaches (its "usual high"), the tail is the fitted Pareto distribution.
    #[serde(default = "default_tail_quantile")]
    pub tail_quantile: f64,
    /// Windows summed into a span, the second time scale judged: a rise spread over a quarter of an
    /// hour shows in the span's sum when no single window is surprising.
    #[serde(default = "default_span_windows")]
    pub span_windows: u64,
    /// Windows an agent is watched before its baseline judges it (spans: this many spans).
    #[serde(default = "default_warmup_windows")]
    pub warmup_windows: u64,
    /// Events an agent must have made before its baseline judges it.
    #[serde(default = "default_warmup_events")]
    pub warmup_events: u64,
    /// Until then, each window of the agent is judged against its role's agents instead (what one of
    /// them does in one window, learned from the windows of those that have a baseline), so a new
    /// agent's first hour is watched too. Off when false.
    #[serde(default = "default_true")]
    pub peers: bool,
    /// Windows of its agents a role's yardstick must hold before it judges a new agent: fewer say
    /// little about how far the role's busiest windows reach.
    #[serde(default = "default_peer_min_windows")]
    pub peer_min_windows: u64,
}

/// Three days: long enough to hold a daily rhythm's every hour several times and a bursty agent's
/// rare bursts, short enough that a new normal is learned within hours.
const fn default_memory_hours() -> f64 {
    72.0
}
/// The top 2% of windows, the initial threshold Siffer et al. use for peaks over threshold.
const fn default_tail_quantile() -> f64 {
    0.02
}
/// 16 one-minute windows: a quarter of an hour and a bit.
const fn default_span_windows() -> u64 {
    16
}
const fn default_warmup_windows() -> u64 {
    60
}
const fn default_warmup_events() -> u64 {
    50
}
/// Four agent-hours of windows.
const fn default_peer_min_windows() -> u64 {
    240
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig {
            memory_hours: default_memory_hours(),
            tail_quantile: default_tail_quantile(),
            span_windows: default_span_windows(),
            warmup_windows: default_warmup_windows(),
            warmup_events: default_warmup_events(),
            peers: true,
            peer_min_windows: default_peer_min_windows(),
        }
    }
}

/// A volume detector: fires when `P(X >= observed)` under the agent's baseline (per window or per
/// span) is below `p_value`, the value is at least `min_ratio` times the agent's usual high, and at
/// least `min_count` (an absolute floor that only keeps trivia quiet).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SpikeConfig {
    /// Off when false.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Tail probability below which a window is a finding.
    pub p_value: f64,
    /// Smallest value that can be a finding, whatever the baseline.
    pub min_count: u64,
    /// Smallest ratio of the value to the agent's usual high (the value only `tail_quantile` of its
    /// windows reach) that can be a finding: a steady agent's tiny variance does not make a 10% rise news.
    #[serde(default = "default_min_ratio")]
    pub min_ratio: f64,
    /// Ratio to the usual high at or above which the finding is high rather than medium.
    #[serde(default = "default_high_ratio")]
    pub high_ratio: f64,
}

/// What one `[detect.volume]`, `[detect.denied]` or `[detect.tokens]` table sets: the keys it leaves out
/// keep that detector's own defaults (the three differ in `p_value` and `min_count`), so a table that
/// changes one setting needs only that one.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpikeTable {
    enabled: Option<bool>,
    p_value: Option<f64>,
    min_count: Option<u64>,
    min_ratio: Option<f64>,
    high_ratio: Option<f64>,
}

impl SpikeTable {
    fn over<'de, D: serde::Deserializer<'de>>(d: D, defaults: SpikeConfig) -> Result<SpikeConfig, D::Error> {
        let t = SpikeTable::deserialize(d)?;
        Ok(SpikeConfig {
            enabled: t.enabled.unwrap_or(defaults.enabled),
            p_value: t.p_value.unwrap_or(defaults.p_value),
            min_count: t.min_count.unwrap_or(defaults.min_count),
            min_ratio: t.min_ratio.unwrap_or(defaults.min_ratio),
            high_ratio: t.high_ratio.unwrap_or(defaults.high_ratio),
        })
    }
    fn volume<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SpikeConfig, D::Error> {
        SpikeTable::over(d, SpikeConfig::volume())
    }
    fn denied<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SpikeConfig, D::Error> {
        SpikeTable::over(d, SpikeConfig::denied())
    }
    fn tokens<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SpikeConfig, D::Error> {
        SpikeTable::over(d, SpikeConfig::tokens())
    }
}

const fn default_high_ratio() -> f64 {
    10.0
}
const fn default_min_ratio() -> f64 {
    1.5
}

impl SpikeConfig {
    /// Defaults for `volume_spike`: one in 100,000 windows by chance (about 1,500 judgements of each
    /// measure per agent-day, so a few false findings per 100 agent-days if the tail fits), and at
    /// least 10 actions.
    pub fn volume() -> SpikeConfig {
        SpikeConfig {
            enabled: true,
            p_value: 1e-5,
            min_count: 10,
            min_ratio: default_min_ratio(),
            high_ratio: default_high_ratio(),
        }
    }
    /// Defaults for `token_spike`: one in 100,000 windows by chance, and at least 1,000 tokens.
    pub fn tokens() -> SpikeConfig {
        SpikeConfig {
            enabled: true,
            p_value: 1e-5,
            min_count: 1_000,
            min_ratio: default_min_ratio(),
            high_ratio: default_high_ratio(),
        }
    }
    /// Defaults for `denied_burst`: at least 5 denials, one in ten thousand by chance.
    pub fn denied() -> SpikeConfig {
        SpikeConfig {
            enabled: true,
            p_value: 1e-4,
            min_count: 5,
            min_ratio: default_min_ratio(),
            high_ratio: default_high_ratio(),
        }
    }
}

/// `data_spike`: bytes read plus written per window or span.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Off when false.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Tail probability below which a window is a finding.
    #[serde(default = "default_data_p_value")]
    pub p_value: f64,
    /// Fewest bytes that can be a finding, whatever the baseline: a floor for trivia only.
    #[serde(default = "default_data_min_bytes")]
    pub min_bytes: u64,
    /// As for the other volume detectors.
    #[serde(default = "default_min_ratio")]
    pub min_ratio: f64,
    /// Ratio to the usual high at or above which the finding is high.
    #[serde(default = "default_high_ratio")]
    pub high_ratio: f64,
}

const fn default_data_p_value() -> f64 {
    1e-5
}
/// One megabyte: below it a "spike" is a few documents.
const fn default_data_min_bytes() -> u64 {
    1_000_000
}

impl DataConfig {
    /// The same settings in the form every volume detector shares.
    fn spec(&self) -> SpikeConfig {
        SpikeConfig {
            enabled: self.enabled,
            p_value: self.p_value,
            min_count: self.min_bytes,
            min_ratio: self.min_ratio,
            high_ratio: self.high_ratio,
        }
    }
}

impl Default for DataConfig {
    fn default() -> Self {
        DataConfig {
            enabled: true,
            p_value: default_data_p_value(),
            min_bytes: default_data_min_bytes(),
            min_ratio: default_min_ratio(),
            high_ratio: default_high_ratio(),
        }
    }
}

/// The cumulative detector (CUSUM) of slow rises: each window's surprise under the agent's baseline,
/// `-log10 p`, less an allowance, summed while it stays above zero; a finding (`volume_spike` or
/// `data_spike`, evidence `detector = "cumulative"`) when the sum reaches the threshold.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SlowConfig {
    /// Off when false.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Subtracted from every window's surprise: 1 means a window must be as unusual as one in ten to
    /// add anything (ordinary traffic averages 0.43).
    #[serde(default = "default_allowance")]
    pub allowance: f64,
    /// The sum at which the rise is a finding: 20 is, for example, ten windows in a row each as unusual
    /// as one in a thousand.
    #[serde(default = "default_slow_threshold")]
    pub threshold: f64,
    /// The most one window can add: a single extreme window is the per-window detectors' to report.
    #[serde(default = "default_max_window_score")]
    pub max_window_score: f64,
    /// The excess detector of a steady trickle out (off when false): a CUSUM on the bytes an agent
    /// writes or sends per span, counting what each span carries beyond the agent's usual high, in bytes.
    /// A trickle too thin to make any span surprising, or to add surprise to the sum above, still piles
    /// up bytes (`data_spike`, evidence `detector = "excess"`).
    #[serde(default = "default_true")]
    pub excess: bool,
    /// When the excess detector reports, in multiples of the agent's reach (how far its spans above the
    /// usual high go beyond it, on average): at 16, quarter-hours that each carry four reaches over the
    /// usual high are a finding in four.
    #[serde(default = "default_excess_interval")]
    pub excess_interval: f64,
}

const fn default_allowance() -> f64 {
    1.0
}
const fn default_slow_threshold() -> f64 {
    20.0
}
const fn default_max_window_score() -> f64 {
    5.0
}
const fn default_excess_interval() -> f64 {
    16.0
}

impl Default for SlowConfig {
    fn default() -> Self {
        SlowConfig {
            enabled: true,
            allowance: default_allowance(),
            threshold: default_slow_threshold(),
            max_window_score: default_max_window_score(),
            excess: true,
            excess_interval: default_excess_interval(),
        }
    }
}

/// The rhythm detector: each span's actions against what the agent's hour-of-day (after two days) or
/// hour-of-week (after two weeks) profile expects (see `rhythm.rs`). A span far below the hour of the
/// week is a `volume_drop` (the agent, or the trail of its actions, went quiet when it is usually busy;
/// judged only with two weeks of history, so a first weekend is not one); one far
/// above it a `volume_spike` with `"detector": "rhythm"` (three times the usual load at 01:00 is news
/// even when it is under the daytime peaks).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RhythmConfig {
    /// Off when false.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Standard deviations of the agent's own residual (plus Poisson noise) from the expected count
    /// that make a drop or a rise: 5 is about one span in 3.5 million by chance.
    #[serde(default = "default_rhythm_z")]
    pub z: f64,
    /// A drop is at most this share of the expected count (and the expected count at least
    /// `volume.min_count`): a dip of a third in a large count is not an incident, however regular.
    #[serde(default = "default_drop_ratio")]
    pub drop_ratio: f64,
    /// How long the hour-of-day profile remembers, in days.
    #[serde(default = "default_day_memory_days")]
    pub day_memory_days: f64,
    /// How long the hour-of-week profile remembers, in weeks.
    #[serde(default = "default_week_memory_weeks")]
    pub week_memory_weeks: f64,
}

const fn default_rhythm_z() -> f64 {
    5.0
}
const fn default_drop_ratio() -> f64 {
    0.67
}
const fn default_day_memory_days() -> f64 {
    7.0
}
const fn default_week_memory_weeks() -> f64 {
    4.0
}

impl Default for RhythmConfig {
    fn default() -> Self {
        RhythmConfig {
            enabled: true,
            z: default_rhythm_z(),
            drop_ratio: default_drop_ratio(),
            day_memory_days: default_day_memory_days(),
            week_memory_weeks: default_week_memory_weeks(),
        }
    }
}

/// The ceiling detector: a window whose actions, bytes moved or bytes written go beyond the most the
/// agent did in any window lately, when that most is a ceiling it kept reaching (at least `min_windows`
/// windows within a factor of 1.41 of it), is a `volume_spike` or `data_spike` at severity low, with
/// evidence `detector = "ceiling"`, once the tail puts it below `p_value` (the volume detectors' own
/// floors, `min_count` and `min_ratio`, still apply). Denials and tokens are left to their detectors and
/// budgets, as for the cumulative detector.
///
/// Why. The tail baselines judge a value by how far their fitted tail reaches, and a tail fitted to a
/// histogram whose bins are 19% wide cannot tell a ceiling touched twenty times from a spread of values
/// under it: a burst a seventh above a ceiling (a job that always moved 250 MB now moving 290 MB, a
/// request rate held for an hour above anything before) comes out at p of a few in 10,000, far from
/// the volume detectors' 1e-5. Among every window judged that p-value would be noise; among the few
/// that break a ceiling it is news. The rule is rare by construction: most windows are not above the
/// recent most, and most recent mosts are one-off peaks, not ceilings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CeilingConfig {
    /// Off when false.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Tail probability (both time scales counted, as for the volume detectors) below which a window
    /// beyond the ceiling is a finding.
    #[serde(default = "default_ceiling_p_value")]
    pub p_value: f64,
    /// Windows (decayed weight, as the baseline remembers them) within a factor of 1.41 of the recent
    /// most that make it a ceiling rather than a one-off peak.
    #[serde(default = "default_ceiling_min_windows")]
    pub min_windows: f64,
}

/// One in a thousand: judged only for the rare window beyond a ceiling.
const fn default_ceiling_p_value() -> f64 {
    1e-3
}
/// Ten windows: reached again and again, not once or twice.
const fn default_ceiling_min_windows() -> f64 {
    10.0
}

impl Default for CeilingConfig {
    fn default() -> Self {
        CeilingConfig {
            enabled: true,
            p_value: default_ceiling_p_value(),
            min_windows: default_ceiling_min_windows(),
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

/// A role bound to agents: the first binding whose `agents` match an agent id gives its role.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// The role (as policies' `roles` name it).
    pub name: String,
    /// Agent ids (globs) that have this role.
    pub agents: Vec<String>,
}

/// A token or money budget: what the agents it covers (`agents` globs, `roles`) may spend in one
/// minute, hour or day of event time, with a warn level (a medium `budget_limit` finding) and a hard
/// level (high). Every level is optional; at least one must be set.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Name shown in findings.
    pub name: String,
    /// Agent ids (globs) this budget covers.
    #[serde(default)]
    pub agents: Vec<String>,
    /// Agent roles this budget covers (exact `agent_role` values).
    #[serde(default)]
    pub roles: Vec<String>,
    /// The period spend is summed over, aligned on event time in UTC.
    pub per: Period,
    /// Model tokens (input plus output) at which to warn.
    #[serde(default)]
    pub tokens_warn: Option<u64>,
    /// Model tokens at which the budget is exhausted.
    #[serde(default)]
    pub tokens_limit: Option<u64>,
    /// Money (`cost_usd` summed) at which to warn.
    #[serde(default)]
    pub cost_warn_usd: Option<f64>,
    /// Money at which the budget is exhausted.
    #[serde(default)]
    pub cost_limit_usd: Option<f64>,
}

/// A budget's period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// A UTC minute.
    Minute,
    /// A UTC hour.
    Hour,
    /// A UTC day.
    Day,
}

impl Period {
    const fn ms(self) -> i64 {
        match self {
            Period::Minute => 60_000,
            Period::Hour => 3_600_000,
            Period::Day => 86_400_000,
        }
    }

    const fn as_str(self) -> &'static str {
        match self {
            Period::Minute => "minute",
            Period::Hour => "hour",
            Period::Day => "day",
        }
    }
}

/// A budget compiled for matching.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    pub name: String,
    pub agents: GlobSet,
    pub roles: Vec<String>,
    pub per: &'static str,
    pub period_ms: i64,
    pub tokens_warn: Option<u64>,
    pub tokens_limit: Option<u64>,
    pub cost_warn_usd: Option<f64>,
    pub cost_limit_usd: Option<f64>,
}

impl Budget {
    pub(crate) fn covers(&self, agent_id: &str, role: Option<&str>) -> bool {
        self.agents.matches(agent_id) || role.is_some_and(|r| self.roles.iter().any(|x| x == r))
    }
}

impl BudgetConfig {
    fn build(&self) -> Result<Budget, ConfigError> {
        let bad = |problem: &'static str| ConfigError::Budget { name: self.name.clone(), problem };
        if self.agents.is_empty() && self.roles.is_empty() {
            return Err(bad("names neither `agents` nor `roles`, so it covers no agent"));
        }
        let levels = [self.tokens_warn.is_some(), self.tokens_limit.is_some()];
        let money = [self.cost_warn_usd, self.cost_limit_usd];
        if !levels.iter().any(|x| *x) && money.iter().all(Option::is_none) {
            return Err(bad(
                "sets no level: give tokens_warn, tokens_limit, cost_warn_usd or cost_limit_usd",
            ));
        }
        if money.iter().flatten().any(|c| !c.is_finite() || *c <= 0.0) {
            return Err(bad("a cost level must be a number above 0"));
        }
        if let (Some(w), Some(l)) = (self.tokens_warn, self.tokens_limit)
            && w > l
        {
            return Err(bad("tokens_warn is above tokens_limit"));
        }
        if let (Some(w), Some(l)) = (self.cost_warn_usd, self.cost_limit_usd)
            && w > l
        {
            return Err(bad("cost_warn_usd is above cost_limit_usd"));
        }
        Ok(Budget {
            name: self.name.clone(),
            agents: GlobSet::new(&self.agents),
            roles: self.roles.clone(),
            per: self.per.as_str(),
            period_ms: self.per.ms(),
            tokens_warn: self.tokens_warn,
            tokens_limit: self.tokens_limit,
            cost_warn_usd: self.cost_warn_usd,
            cost_limit_usd: self.cost_limit_usd,
        })
    }
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
    /// A budget that cannot work.
    #[error("budget {name:?} {problem}")]
    Budget {
        /// The budget.
        name: String,
        /// What is wrong.
        problem: &'static str,
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
    /// `[[detect.role]]`: (role, agents), in order.
    pub(crate) role_bindings: Vec<(String, GlobSet)>,
    pub(crate) budgets: Vec<Budget>,
    pub(crate) sensitive: GlobSet,
    pub(crate) human_credentials: GlobSet,
    pub(crate) window_ms: i64,
    pub(crate) lateness_ms: i64,
    /// `watermark_quorum`, at least 1.
    pub(crate) quorum: usize,
    /// `max_skew_seconds` in milliseconds.
    pub(crate) skew_ms: i64,
    /// `forget_idle_hours` in milliseconds (0: never).
    pub(crate) forget_ms: i64,
    pub(crate) cooldown_ms: i64,
    /// `span_windows` windows, in milliseconds.
    pub(crate) span_ms: i64,
    /// Weight kept per window and per span by the baselines: `1 - 1/memory`.
    pub(crate) keep_window: f64,
    pub(crate) keep_span: f64,
    /// The baselines' memory in windows.
    pub(crate) memory_windows: f64,
    /// The period over which the ceiling detector keeps the most of each measure (half the memory).
    pub(crate) peak_period_ms: i64,
    /// `data` as a volume detector.
    data: SpikeConfig,
    /// `rhythm` in spans.
    pub(crate) rhythm: crate::rhythm::RhythmSpec,
    /// How much of the key tables' weight a window of `n` events keeps, over their long and short
    /// memories.
    pub(crate) keys_long: Decay,
    pub(crate) keys_short: Decay,
}

/// `(1 - 1/memory)^n`, what a memory of `memory` events keeps over `n` more, looked up for the `n` most
/// windows have: every closed window decays its agent's key table by two of these, and `powf` was most of
/// what libm cost a quiet fleet's closes. The table holds the same `powf` results, so what it gives is
/// the same to the bit.
#[derive(Debug, Clone)]
pub(crate) struct Decay {
    base: f64,
    table: Vec<f64>,
}

impl Decay {
    /// Window sizes with a kept power: a quiet agent's windows hold a few events, a busy one's dozens.
    const UPTO: u32 = 256;

    pub(crate) fn new(memory: u64) -> Decay {
        let base = 1.0 - 1.0 / memory as f64;
        Decay { base, table: (0..=Decay::UPTO).map(|n| base.powf(f64::from(n))).collect() }
    }

    /// `(1 - 1/memory)^n`.
    #[inline]
    pub(crate) fn over(&self, n: u32) -> f64 {
        match self.table.get(n as usize) {
            Some(&k) => k,
            None => self.base.powf(f64::from(n)),
        }
    }
}

impl Compiled {
    /// The settings of a volume detector.
    pub(crate) fn spike(&self, kind: crate::FindingKind) -> &SpikeConfig {
        match kind {
            crate::FindingKind::DataSpike => &self.data,
            crate::FindingKind::DeniedBurst => &self.raw.denied,
            crate::FindingKind::TokenSpike => &self.raw.tokens,
            _ => &self.raw.volume,
        }
    }
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
        let mut role_bindings = Vec::with_capacity(self.roles.len());
        for r in &self.roles {
            if r.name.is_empty() || r.agents.is_empty() {
                return Err(ConfigError::OutOfRange {
                    key: "detect.role",
                    value: format!("{:?}", r.name),
                    problem: "needs a name and at least one agent glob",
                });
            }
            role_bindings.push((r.name.clone(), GlobSet::new(&r.agents)));
        }
        let mut budget_names = std::collections::HashSet::new();
        let mut budgets = Vec::with_capacity(self.budgets.len());
        for b in &self.budgets {
            if !budget_names.insert(b.name.as_str()) {
                return Err(ConfigError::Budget { name: b.name.clone(), problem: "is declared twice" });
            }
            budgets.push(b.build()?);
        }
        let at_least_one = |key: &'static str, v: u64| {
            if v == 0 {
                Err(ConfigError::OutOfRange { key, value: "0".into(), problem: "must be at least 1" })
            } else {
                Ok(())
            }
        };
        if self.halt.is_some() {
            return Err(ConfigError::OutOfRange {
                key: "detect.halt",
                value: "a table".into(),
                problem: "the halt rules moved to [respond.rules] (see examples/vigil.toml)",
            });
        }
        at_least_one("detect.window_seconds", self.window_seconds)?;
        at_least_one("detect.watermark_quorum", u64::from(self.watermark_quorum))?;
        at_least_one("detect.baseline.span_windows", self.baseline.span_windows)?;
        at_least_one("detect.scope.short_memory_events", self.scope.short_memory_events)?;
        at_least_one("detect.scope.long_memory_events", self.scope.long_memory_events)?;
        at_least_one("detect.scope.max_keys", self.scope.max_keys as u64)?;
        at_least_one("detect.scope.max_window_keys", self.scope.max_window_keys as u64)?;
        let unit = |key: &'static str, v: f64, problem: &'static str, ok: bool| {
            if ok { Ok(()) } else { Err(ConfigError::OutOfRange { key, value: v.to_string(), problem }) }
        };
        let q = self.baseline.tail_quantile;
        unit("detect.baseline.tail_quantile", q, "must be above 0 and below 0.5", q > 0.0 && q < 0.5)?;
        for (key, p) in [
            ("detect.volume.p_value", self.volume.p_value),
            ("detect.data.p_value", self.data.p_value),
            ("detect.denied.p_value", self.denied.p_value),
            ("detect.ceiling.p_value", self.ceiling.p_value),
            ("detect.tokens.p_value", self.tokens.p_value),
        ] {
            unit(key, p, "must be above 0 and below 1", p > 0.0 && p < 1.0)?;
        }
        let sl = &self.slow;
        let ok = sl.allowance > 0.0 && sl.threshold > 0.0 && sl.max_window_score > sl.allowance;
        unit(
            "detect.slow",
            sl.threshold,
            "needs allowance > 0, threshold > 0, max_window_score > allowance",
            ok,
        )?;
        let i = sl.excess_interval;
        unit("detect.slow.excess_interval", i, "must be above 0", i.is_finite() && i > 0.0)?;
        let rh = &self.rhythm;
        let ok = rh.z.is_finite()
            && rh.z > 0.0
            && (0.0..=1.0).contains(&rh.drop_ratio)
            && rh.day_memory_days >= 1.0
            && rh.week_memory_weeks >= 1.0;
        unit("detect.rhythm", rh.z, "needs z > 0, drop_ratio in 0..=1, memories of at least 1", ok)?;
        let w = self.ceiling.min_windows;
        unit("detect.ceiling.min_windows", w, "must be at least 1", w.is_finite() && w >= 1.0)?;
        let r = self.scope.min_rarity;
        unit("detect.scope.min_rarity", r, "must be between 0 and 1", (0.0..=1.0).contains(&r))?;
        let window_ms = (self.window_seconds as i64).saturating_mul(1000);
        let memory_windows = self.baseline.memory_hours * 3_600_000.0 / window_ms as f64;
        let m = self.baseline.memory_hours;
        let ok = m.is_finite() && memory_windows >= 2.0 * self.baseline.span_windows as f64;
        unit("detect.baseline.memory_hours", m, "must hold at least two spans", ok)?;
        for (key, r) in [
            ("detect.volume.min_ratio", self.volume.min_ratio),
            ("detect.data.min_ratio", self.data.min_ratio),
            ("detect.denied.min_ratio", self.denied.min_ratio),
            ("detect.tokens.min_ratio", self.tokens.min_ratio),
        ] {
            unit(key, r, "must be a number, at least 0", r.is_finite() && r >= 0.0)?;
        }
        Ok(Compiled {
            raw: self.clone(),
            policies,
            role_bindings,
            budgets,
            sensitive: GlobSet::new(&self.sensitive_resources),
            human_credentials: GlobSet::new(&self.identity.human_credentials),
            window_ms,
            lateness_ms: (self.lateness_seconds as i64).saturating_mul(1000),
            quorum: self.watermark_quorum as usize,
            skew_ms: (self.max_skew_seconds.unwrap_or(DEFAULT_MAX_SKEW_SECONDS) as i64).saturating_mul(1000),
            forget_ms: (self.forget_idle_hours as i64).saturating_mul(3_600_000),
            cooldown_ms: (self.cooldown_seconds as i64).saturating_mul(1000),
            span_ms: window_ms.saturating_mul(self.baseline.span_windows as i64),
            keep_window: 1.0 - 1.0 / memory_windows,
            keep_span: 1.0 - self.baseline.span_windows as f64 / memory_windows,
            memory_windows,
            peak_period_ms: window_ms.saturating_mul(((memory_windows / 2.0) as i64).max(1)),
            data: self.data.spec(),
            rhythm: {
                let span_ms = window_ms.saturating_mul(self.baseline.span_windows as i64) as f64;
                let per_hour = 3_600_000.0 / span_ms;
                crate::rhythm::RhythmSpec {
                    spans_per_day: 86_400_000.0 / span_ms,
                    day_memory: (rh.day_memory_days * per_hour).max(1.0),
                    week_memory: (rh.week_memory_weeks * per_hour).max(1.0),
                    residual_memory: (self.baseline.memory_hours * 3_600_000.0 / span_ms).max(1.0),
                    z: rh.z,
                }
            },
            keys_long: Decay::new(self.scope.long_memory_events),
            keys_short: Decay::new(self.scope.short_memory_events),
        })
    }
}

const fn default_true() -> bool {
    true
}

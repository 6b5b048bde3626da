//! What the engine has learned about one agent, in words a responder reads: the control API's
//! `GET /v1/agents/{id}` shows it beside the breaker, so "why was this agent halted?" can be answered
//! with "what is normal for it?".

use serde::Serialize;

use super::{CUMULATIVE, Engine, MEASURES, judge_window};

/// One agent's baseline, as learned so far.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Baseline {
    /// The role the agent is bound to (by config or the first it declared; empty when none).
    pub role: String,
    /// Whether the baseline is mature enough for the statistical detectors to judge the agent
    /// (`baseline.warmup_windows` windows and `baseline.warmup_events` events seen).
    pub warm: bool,
    /// Windows accounted for since the agent's first event (the empty ones between included).
    pub windows: u32,
    /// Events counted in closed windows.
    pub events: u32,
    /// The window length, in seconds.
    pub window_seconds: i64,
    /// Start of the last closed window (epoch milliseconds).
    pub last_window_start_ms: Option<i64>,
    /// Per measure: the median per window, the usual high, and the value that would be a finding.
    pub per_window: Vec<Measure>,
    /// Distinct (action, generalised resource) keys learned.
    pub keys_learned: usize,
    /// Incidents still open (a finding that later events may update).
    pub open_incidents: usize,
    /// Bytes this agent's state takes.
    pub state_bytes: usize,
}

/// One measure's baseline per window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measure {
    /// `actions`, `bytes` (read and written), `denials`, `tokens` or `bytes_written`.
    pub measure: &'static str,
    /// The median of the measure per window.
    pub median: f64,
    /// The agent's usual high: where its fitted upper tail starts (the lower edge of the histogram bin
    /// holding `baseline.tail_quantile`, so for a very regular agent it can sit just under the median).
    /// Findings state their size as a multiple of it.
    pub usual_high: f64,
    /// The smallest value per window that its detector would report.
    pub threshold: f64,
    /// The most in one window lately (the last half to whole memory; to within 0.07%), for the measures
    /// the ceiling detector follows (actions, bytes, bytes written): a window beyond it, when many came
    /// near it, is a ceiling broken.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub most_lately: Option<f64>,
}

impl Engine {
    /// What the engine has learned about `agent`, if it has seen it.
    pub fn baseline(&self, agent: &str) -> Option<Baseline> {
        let idx = *self.index.get(agent)? as usize;
        let state = &self.agents[idx];
        let cfg = &self.cfg;
        let base = &cfg.raw.baseline;
        let per_window = MEASURES
            .into_iter()
            .zip(&state.levels.per_window)
            .enumerate()
            .map(|(m, (q, tail))| {
                let j = judge_window(cfg, tail, q, 0, true);
                let followed = CUMULATIVE.iter().position(|&i| i == m);
                Measure {
                    measure: q.name(),
                    median: round(j.median),
                    usual_high: round(j.high),
                    threshold: round(j.threshold),
                    most_lately: followed.map(|c| state.levels.peaks.most(c).floor()),
                }
            })
            .collect();
        Some(Baseline {
            role: self.roles[usize::from(state.role)].0.to_string(),
            warm: u64::from(state.windows) > base.warmup_windows
                && u64::from(state.events) >= base.warmup_events,
            windows: state.windows,
            events: state.events,
            window_seconds: cfg.window_ms / 1000,
            last_window_start_ms: state.last_window.get(),
            per_window,
            keys_learned: state.keys.keys.len(),
            open_incidents: state.open.len(),
            state_bytes: state.footprint() + 2 * agent.len(),
        })
    }
}

/// Three significant decimals are all a reader needs (and keep the JSON short).
fn round(x: f64) -> f64 {
    if x.is_finite() { (x * 1000.0).round() / 1000.0 } else { x }
}

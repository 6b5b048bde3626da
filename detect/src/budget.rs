//! `budget_limit`: declared token and money budgets per agent or role, per minute, hour or day of event
//! time, each with a warn level and a hard level. The loop that burns the API budget is the incident
//! teams fear most; a statistical `token_spike` says "unusual", a budget says "too much", whatever the
//! agent's history.
//!
//! Spend is kept per (agent, budget) in the engine, not in each agent's state: only agents that spend
//! under a budget pay for it, so an idle agent stays small. Periods are aligned on event time (UTC
//! minutes, hours, days); a late event for a period already closed is not counted, as for the hard rate
//! cap.

use serde::{Deserialize, Serialize};
use serde_json::{Map, json};
use vigil_schemas::Event;

use crate::config::Budget;
use crate::finding::Severity;

/// An event's model tokens, input plus output: what budgets charge and `token_spike` counts.
pub(crate) fn tokens(ev: &Event<'_>) -> u64 {
    ev.input_tokens.unwrap_or(0).saturating_add(ev.output_tokens.unwrap_or(0))
}

/// What one agent spent under one budget in its current period.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Spend {
    /// The period's index (event time / period length).
    pub period: i64,
    pub tokens: u64,
    /// Money in millionths of a US dollar.
    pub micro_usd: u64,
    /// Levels already reported this period: bit 0 tokens warn, 1 tokens hard, 2 cost warn, 3 cost hard.
    pub fired: u8,
}

/// A budget level crossed by one event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Crossing {
    pub severity: Severity,
    pub summary: String,
    pub evidence: Map<String, serde_json::Value>,
    /// Start of the period, in ms: the incident key, so a warn and the hard level of one period are
    /// one incident whose severity rises.
    pub period_start: i64,
}

/// Adds the event's tokens and cost to `spend` under budget `b` and returns the level it crossed, if
/// one it had not crossed before in this period. The hard level is reported before the warn level
/// when one event crosses both.
pub(crate) fn charge(b: &Budget, spend: &mut Spend, ev: &Event<'_>) -> Option<Crossing> {
    let tokens = tokens(ev);
    let micro_usd = ev.cost_usd.map_or(0, |c| (c * 1e6).round().clamp(0.0, u64::MAX as f64) as u64);
    if tokens == 0 && micro_usd == 0 {
        return None;
    }
    let period = ev.ts_ms.div_euclid(b.period_ms);
    if period > spend.period || (spend.tokens == 0 && spend.micro_usd == 0 && spend.fired == 0) {
        *spend = Spend { period, ..Spend::default() };
    } else if period < spend.period {
        return None;
    }
    spend.tokens = spend.tokens.saturating_add(tokens);
    spend.micro_usd = spend.micro_usd.saturating_add(micro_usd);
    let cost = spend.micro_usd as f64 / 1e6;
    // (measure, used, level, limit, bit), hard levels first.
    let checks = [
        ("tokens", spend.tokens as f64, "hard", b.tokens_limit.map(|v| v as f64), 1u8),
        ("cost_usd", cost, "hard", b.cost_limit_usd, 3),
        ("tokens", spend.tokens as f64, "warn", b.tokens_warn.map(|v| v as f64), 0),
        ("cost_usd", cost, "warn", b.cost_warn_usd, 2),
    ];
    for (measure, used, level, limit, bit) in checks {
        let Some(limit) = limit else { continue };
        if used < limit || spend.fired & (1 << bit) != 0 {
            continue;
        }
        spend.fired |= 1 << bit;
        // A hard crossing implies the warn level too: it is not reported again.
        if level == "hard" {
            spend.fired |= 1 << (bit - 1);
        }
        let severity = if level == "hard" { Severity::High } else { Severity::Medium };
        let shown = |v: f64| if measure == "tokens" { format!("{v:.0} tokens") } else { format!("${v:.2}") };
        let mut evidence = Map::new();
        evidence.insert("budget".into(), json!(b.name));
        evidence.insert("per".into(), json!(b.per));
        evidence.insert("level".into(), json!(level));
        evidence.insert("measure".into(), json!(measure));
        evidence.insert("used".into(), json!(used));
        evidence.insert("limit".into(), json!(limit));
        evidence.insert("period_start_ms".into(), json!(period * b.period_ms));
        let summary = format!(
            "{} spent {} this {} under budget {:?}, at or over its {level} level of {}",
            ev.agent_id,
            shown(used),
            b.per,
            b.name,
            shown(limit)
        );
        return Some(Crossing { severity, summary, evidence, period_start: period * b.period_ms });
    }
    None
}

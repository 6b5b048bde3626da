//! How findings are built: ids kept compactly, incident buckets, and the wording of evidence.

use super::*;

/// The incident key of a finding at `ts`: the start of its cooldown period.
pub(super) fn bucket(cfg: &Compiled, ts: i64) -> u64 {
    let period = cfg.cooldown_ms.max(1);
    ts.div_euclid(period).wrapping_mul(period) as u64
}

/// A finding about one event.
pub(super) fn event_finding(
    kind: FindingKind,
    severity: Severity,
    ev: &Event<'_>,
    summary: String,
    evidence: Map<String, Value>,
) -> Finding {
    Finding {
        finding_id: String::new(),
        kind,
        severity,
        agent_id: ev.agent_id.to_string(),
        ts: ev.ts_ms,
        window_start: ev.ts_ms,
        window_end: ev.ts_ms + 1,
        score: 1.0,
        summary,
        evidence,
        event_ids: vec![ev.event_id.to_string()],
    }
}

pub(super) fn window_finding(
    cfg: &Compiled,
    kind: FindingKind,
    severity: Severity,
    agent: &str,
    w: &Window,
) -> Finding {
    Finding {
        finding_id: String::new(),
        kind,
        severity,
        agent_id: agent.to_owned(),
        ts: w.start + cfg.window_ms,
        window_start: w.start,
        window_end: w.start + cfg.window_ms,
        score: 0.0,
        summary: String::new(),
        evidence: Map::new(),
        event_ids: w.samples.event_ids(),
    }
}

/// A duration in whole seconds as people say it: "60s", "16 min", "2 h".
pub(super) fn human_duration(seconds: i64) -> String {
    if seconds % 3600 == 0 && seconds >= 3600 {
        format!("{} h", seconds / 3600)
    } else if seconds % 60 == 0 && seconds > 60 {
        format!("{} min", seconds / 60)
    } else {
        format!("{seconds}s")
    }
}

/// A number with two significant digits, for summaries: 0.05, 2.4, 310.
pub(super) fn two_digits(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

pub(super) fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub(super) fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 { format!("{v:.0} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

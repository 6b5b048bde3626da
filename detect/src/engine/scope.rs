//! Scope drift: keys new to the agent and rare among its role's peers, and divergence of its recent
//! spread of work from its long-term one.

use super::*;

/// Keys new to the agent and rare among its peers.
pub(super) fn novelty(
    cfg: &Compiled,
    agent_id: &str,
    agent: &AgentState,
    peers: &PeerTable,
    w: &Window,
) -> Option<Finding> {
    let scope = &cfg.raw.scope;
    if !scope.enabled {
        return None;
    }
    let mut new: Vec<(&WindowKey, f64)> = w
        .keys
        .iter()
        .filter(|k| !agent.keys.contains(k.hash))
        .map(|k| (k, peers.rarity(k.hash, scope.min_peers)))
        .filter(|(_, r)| *r >= scope.min_rarity)
        .collect();
    if new.is_empty() {
        return None;
    }
    new.sort_by(|a, b| {
        let ka = a.0.sample.as_ref().map(|s| (s.ts, s.event_id.as_str()));
        let kb = b.0.sample.as_ref().map(|s| (s.ts, s.event_id.as_str()));
        ka.cmp(&kb).then(a.0.hash.cmp(&b.0.hash))
    });
    let sensitive =
        new.iter().any(|(k, _)| k.sample.as_ref().is_some_and(|s| cfg.sensitive.matches(&s.text)));
    let base = if new.len() >= scope.high_new_keys { Severity::High } else { Severity::Medium };
    let severity = if sensitive { base.raised() } else { base };
    let mut f = window_finding(cfg, FindingKind::ScopeDrift, severity, agent_id, w);
    let weight: f64 = new.iter().map(|(_, r)| r).sum();
    f.score = round3(weight);
    let names: Vec<&str> =
        new.iter().map(|(k, _)| k.sample.as_ref().map_or("(forgotten key)", |s| s.text.as_str())).collect();
    let peers_n = peers.agents.saturating_sub(1);
    f.summary = format!(
        "{agent_id} touched {} new to it and rare among its {peers_n} peers: {}",
        if new.len() == 1 { "1 thing".to_owned() } else { format!("{} things", new.len()) },
        names.iter().take(3).map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ")
    );
    let items: Vec<Value> = new
        .iter()
        .map(|(k, r)| {
            json!({
                "value": k.sample.as_ref().map(|s| s.text.as_str()),
                "count": k.count,
                "peer_rarity": round3(*r),
                "first_event_id": k.sample.as_ref().map(|s| s.event_id.as_str()),
            })
        })
        .collect();
    f.event_ids =
        new.iter().filter_map(|(k, _)| k.sample.as_ref().map(|s| s.event_id.clone())).take(SAMPLES).collect();
    let e = &mut f.evidence;
    e.insert("new".into(), Value::Array(items));
    e.insert("known_keys".into(), json!(agent.keys.keys.len()));
    e.insert("peers".into(), json!(peers_n));
    e.insert("min_rarity".into(), json!(scope.min_rarity));
    e.insert("sensitive".into(), json!(sensitive));
    Some(f)
}

pub(super) fn divergence_finding(cfg: &Compiled, agent_id: &str, w: &Window, d: f64) -> Finding {
    let scope = &cfg.raw.scope;
    let mut f = window_finding(cfg, FindingKind::ScopeDrift, Severity::Medium, agent_id, w);
    f.score = round3(d);
    f.summary = format!(
        "{agent_id}'s recent work has moved away from what it usually touches (divergence {d:.2} >= {:.2})",
        scope.divergence
    );
    let e = &mut f.evidence;
    e.insert("divergence".into(), json!(round3(d)));
    e.insert("threshold".into(), json!(scope.divergence));
    e.insert("short_memory_events".into(), json!(scope.short_memory_events));
    e.insert("long_memory_events".into(), json!(scope.long_memory_events));
    f
}

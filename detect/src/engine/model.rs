//! Model and provider changes behind an agent.

use super::*;

pub(super) fn new_model(cfg: &Compiled, agent_id: &str, agent: &AgentState, w: &Window) -> Option<Finding> {
    let mut fresh: Vec<&WindowModel> =
        w.models.iter().filter(|m| !agent.models.contains(m.hash as u32)).collect();
    if fresh.is_empty() || agent.models.is_empty() {
        return None;
    }
    fresh.sort_by(|a, b| (a.sample.ts, &a.sample.event_id).cmp(&(b.sample.ts, &b.sample.event_id)));
    let new_provider =
        fresh.iter().any(|m| !agent.models.as_slice().iter().any(|k| k.1 == m.provider as u32));
    let severity = if new_provider { Severity::High } else { Severity::Medium };
    let mut f = window_finding(cfg, FindingKind::ModelChange, severity, agent_id, w);
    f.score = 1.0;
    let names: Vec<&str> = fresh.iter().map(|m| m.sample.text.as_str()).collect();
    f.summary = format!(
        "{agent_id} is now backed by {}{}",
        names.join(", "),
        if new_provider { ", from a provider it never used" } else { "" }
    );
    f.event_ids = fresh.iter().map(|m| m.sample.event_id.clone()).collect();
    f.evidence.insert("new_models".into(), json!(names));
    f.evidence.insert("new_provider".into(), json!(new_provider));
    f.evidence.insert("known_models".into(), json!(agent.models.len));
    Some(f)
}

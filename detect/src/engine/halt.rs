//! The shadow halt rule: which findings would halt an agent.

use super::*;

pub(super) fn halt_rule(cfg: &Compiled, agent: &mut AgentState, f: &Finding, out: &mut Output) {
    if agent.halted || f.severity < Severity::High {
        return;
    }
    let rule = &cfg.raw.halt;
    let (actor, reason, ids) = if rule.on_critical && f.severity == Severity::Critical {
        (
            "rule:critical_finding",
            format!("critical {} finding: {}", f.kind.as_str(), f.summary),
            vec![f.finding_id.clone()],
        )
    } else {
        let horizon = f.ts - cfg.halt_window_ms;
        let id = id_bytes(&f.finding_id);
        agent.recent_high.retain(|(ts, old)| *ts > horizon && *old != id);
        agent.recent_high.push((f.ts, id));
        let needed = rule.high_findings as usize;
        while agent.recent_high.len() > needed.max(1) {
            agent.recent_high.remove(0);
        }
        agent.recent_high.shrink_to(needed.max(1));
        if needed == 0 || agent.recent_high.len() < needed {
            return;
        }
        (
            "rule:high_findings",
            format!("{needed} findings of severity high or above within {}s", rule.window_seconds),
            agent.recent_high.iter().map(|(_, id)| id_hex(id)).collect(),
        )
    };
    agent.halted = true;
    out.decisions.push(Decision {
        ts: f.ts,
        action: "agent.halt",
        agent_id: f.agent_id.clone(),
        mode: Mode::Shadow,
        actor,
        reason,
        finding_ids: ids,
    });
}

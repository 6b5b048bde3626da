use serde_json::Map;
use vigil_schemas::rows::{Action, Factor, Finding, FindingKind, Mode, Scope, Severity, Transition};
use vigil_schemas::{Event, decode};

use crate::*;

fn finding(id: &str, agent: &str, ts: i64, kind: FindingKind, severity: Severity) -> Finding {
    Finding {
        finding_id: id.into(),
        kind,
        severity,
        agent_id: agent.into(),
        ts,
        window_start: ts,
        window_end: ts + 60_000,
        score: 1.0,
        summary: format!("{id} about {agent}"),
        evidence: Map::new(),
        event_ids: Vec::new(),
    }
}

fn event_line(id: &str, agent: &str, ts: i64, model: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","ts":{ts},"agent_id":"{agent}","action":"tool.call","resource":"mcp://x","model":"{model}","model_provider":"p","attributes":{{"credential_issuer":"okta"}}}}"#
    )
}

fn decode_all(lines: &[String]) -> Vec<Event<'_>> {
    lines.iter().map(|l| decode(l.as_bytes(), 1 << 20).unwrap()).collect()
}

fn cfg(text: &str) -> RespondConfig {
    toml::from_str(text).unwrap()
}

/// One line per transition: action mode key actor.
fn summary(ts: &[Transition]) -> String {
    ts.iter()
        .map(|t| format!("{} {} {} {}", t.action.as_str(), t.mode.as_str(), t.key(), t.actor.wire()))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_hard_limit_halts_and_a_halted_agent_acting_raises_findings_that_escalate() {
    let mut board = Board::new(&RespondConfig::default()).unwrap();
    let mut out = Response::default();
    let lines = vec![event_line("e0", "a", 1_000, "m")];
    let f = finding("f1", "a", 1_000, FindingKind::RateLimit, Severity::High);
    board.process(&decode_all(&lines), &[f], &mut out);
    assert_eq!(summary(&out.transitions), "agent.halt enforce agent:a rule:hard_limit");
    let halt = board.verdict("a").expect("halted");
    assert_eq!((halt.scope, halt.since), (Scope::Agent, 1_000));
    assert!(board.verdict("b").is_none());
    // Still acting: within the grace high, after it critical (the same finding, raised); nothing more
    // for the same halt.
    let lines = vec![
        event_line("e1", "a", 5_000, "m"),
        event_line("e2", "a", 6_000, "m"),
        event_line("e3", "a", 120_000, "m"),
        event_line("e4", "a", 180_000, "m"),
        event_line("old", "a", 500, "m"),
    ];
    out.clear();
    board.process(&decode_all(&lines), &[], &mut out);
    let got: Vec<(&str, Severity, &str)> =
        out.findings.iter().map(|f| (f.kind.as_str(), f.severity, f.event_ids[0].as_str())).collect();
    assert_eq!(
        got,
        vec![
            ("halted_agent_activity", Severity::High, "e1"),
            ("halted_agent_activity", Severity::Critical, "e3")
        ]
    );
    assert_eq!(out.findings[0].finding_id, out.findings[1].finding_id, "one finding per halt, raised");
    // The critical one is judged too; the agent is already halted in force, so nothing moves.
    assert!(out.transitions.is_empty(), "{}", summary(&out.transitions));
}

#[test]
fn shadow_warn_and_enforce_make_the_same_decisions_acted_on_differently() {
    let run = |mode: &str| {
        let mut board = Board::new(&cfg(&format!(
            "default_mode = \"{mode}\"\n[rules.hard_limit]\nmode = \"{mode}\"\n[rules.repeated_findings]\nmode = \"{mode}\"\n"
        )))
        .unwrap();
        let mut out = Response::default();
        let findings = [
            finding("f1", "a", 1_000, FindingKind::RateLimit, Severity::High),
            finding("f2", "b", 2_000, FindingKind::ScopeDrift, Severity::High),
            finding("f3", "b", 3_000, FindingKind::VolumeSpike, Severity::High),
            finding("f4", "c", 4_000, FindingKind::PolicyViolation, Severity::Critical),
            finding("f5", "a", 5_000, FindingKind::RateLimit, Severity::High),
        ];
        board.process(&[], &findings, &mut out);
        let halted: Vec<bool> = ["a", "b", "c"].iter().map(|a| board.verdict(a).is_some()).collect();
        (out.transitions, halted)
    };
    let (shadow, s_halted) = run("shadow");
    let (warn, w_halted) = run("warn");
    let (enforce, e_halted) = run("enforce");
    let decisions =
        |ts: &[Transition]| ts.iter().map(|t| (t.key(), t.ts, t.actor.wire())).collect::<Vec<_>>();
    assert_eq!(decisions(&shadow), decisions(&warn));
    assert_eq!(decisions(&warn), decisions(&enforce));
    assert_eq!(shadow.len(), 3);
    let actions = |ts: &[Transition]| ts.iter().map(|t| t.action).collect::<Vec<_>>();
    assert_eq!(actions(&shadow), vec![Action::AgentHalt; 3]);
    assert!(shadow.iter().all(|t| t.mode == Mode::Shadow));
    assert_eq!(actions(&warn), vec![Action::AgentWarn; 3]);
    assert_eq!(actions(&enforce), vec![Action::AgentHalt; 3]);
    assert_eq!((s_halted, w_halted, e_halted), (vec![false; 3], vec![false; 3], vec![true; 3]));
}

#[test]
fn cooldown_probation_quiet_and_the_flap_guard() {
    let mut board = Board::new(&cfg(
        "cooldown_seconds = 60\nmin_open_seconds = 120\nquiet_seconds = 300\nmax_halts_per_hour = 2\n",
    ))
    .unwrap();
    let mut out = Response::default();
    let lim = |id: &str, ts| finding(id, "a", ts, FindingKind::RateLimit, Severity::High);
    board.process(&[], &[lim("f1", 0)], &mut out);
    // The minimum open time wins over the shorter cooldown.
    board.tick(100_000, &mut out);
    assert!(board.verdict("a").is_some());
    board.tick(120_000, &mut out);
    assert!(board.verdict("a").is_none(), "half-open: may act on probation");
    board.tick(420_000, &mut out);
    assert_eq!(
        summary(&out.transitions),
        "agent.halt enforce agent:a rule:hard_limit\n\
         agent.half_open enforce agent:a rule:cooldown\n\
         agent.resume enforce agent:a rule:quiet"
    );
    // A second halt within the hour reaches the cap: it stays open whatever the clock says.
    out.clear();
    board.process(&[], &[lim("f2", 600_000)], &mut out);
    board.tick(10_000_000, &mut out);
    assert_eq!(out.transitions.len(), 1, "{}", summary(&out.transitions));
    assert!(out.transitions[0].reason.contains("stays open until an operator resumes"));
    assert!(board.verdict("a").is_some());
}

#[test]
fn probation_reopens_on_the_next_trip() {
    let mut board = Board::new(&cfg("cooldown_seconds = 60\nmin_open_seconds = 0\n")).unwrap();
    let mut out = Response::default();
    board.process(&[], &[finding("f1", "a", 0, FindingKind::RateLimit, Severity::High)], &mut out);
    board.tick(60_000, &mut out);
    board.process(&[], &[finding("f2", "a", 70_000, FindingKind::SessionLimit, Severity::High)], &mut out);
    assert_eq!(
        out.transitions.iter().map(|t| (t.from.as_str(), t.to.as_str())).collect::<Vec<_>>(),
        vec![("closed", "open"), ("open", "half_open"), ("half_open", "open")]
    );
    assert_eq!(board.verdict("a").unwrap().since, 70_000);
}

#[test]
fn a_bad_model_halts_exactly_the_agents_behind_it() {
    let mut board = Board::new(&cfg(
        "[cohort]\nmode = \"enforce\"\nmin_agents = 3\nmin_fraction = 0.3\nfactors = [\"model\", \"provider\"]\n",
    ))
    .unwrap();
    let mut out = Response::default();
    let mut lines = Vec::new();
    for i in 0..4 {
        lines.push(event_line(&format!("b{i}"), &format!("bad{i}"), 1_000, "m-bad"));
        lines.push(event_line(&format!("g{i}"), &format!("good{i}"), 1_000, "m-good"));
    }
    board.process(&decode_all(&lines), &[], &mut out);
    // One agent behind the good model has a finding too: noise, not a cohort. Both models share the
    // provider "p": the bad model explains its agents, so the provider is not halted with it.
    let findings: Vec<Finding> = (0..4)
        .map(|i| {
            finding(
                &format!("f{i}"),
                &format!("bad{i}"),
                2_000 + i,
                FindingKind::VolumeSpike,
                Severity::Medium,
            )
        })
        .chain([finding("n", "good0", 2_000, FindingKind::VolumeSpike, Severity::Medium)])
        .collect();
    out.clear();
    board.process(&[], &findings, &mut out);
    assert_eq!(summary(&out.transitions), "cohort.halt enforce cohort:model=m-bad rule:cohort_findings");
    assert_eq!(out.transitions[0].agents, vec!["bad0", "bad1", "bad2", "bad3"]);
    let anomaly = &out.findings[0];
    assert_eq!((anomaly.kind, anomaly.severity), (FindingKind::CohortAnomaly, Severity::Critical));
    for i in 0..4 {
        let h = board.verdict(&format!("bad{i}")).expect("behind the bad model");
        assert_eq!(h.scope, Scope::Cohort);
        assert!(board.verdict(&format!("good{i}")).is_none());
    }
    // An agent that switches to the bad model later is behind it too.
    out.clear();
    board.process(&decode_all(&[event_line("s", "good3", 3_000, "m-bad")]), &[], &mut out);
    assert!(board.verdict("good3").is_some());
}

#[test]
fn operators_halt_and_resume_in_stages() {
    let mut board = Board::new(&RespondConfig::default()).unwrap();
    let mut out = Response::default();
    let lines: Vec<String> =
        (0..3).map(|i| event_line(&format!("e{i}"), &format!("a{i}"), 1_000, "m")).collect();
    board.process(&decode_all(&lines), &[], &mut out);
    let cmd = |verb, target, id: &str| Command {
        id: id.into(),
        ts: 10_000,
        verb,
        target,
        operator: "alice".into(),
        reason: "incident 42".into(),
    };
    let t = board.command(&cmd(Verb::Halt, Target::Agent("a0".into()), "c1"), &mut out).unwrap();
    assert_eq!(
        (t.action, t.mode, t.actor.wire()),
        (Action::AgentHalt, Mode::Enforce, "operator:alice".into())
    );
    assert!(matches!(
        board.command(&cmd(Verb::Halt, Target::Agent("a0".into()), "c2"), &mut out),
        Err(Unchanged::AlreadyHalted { since: 10_000, .. })
    ));
    board.command(&cmd(Verb::Halt, Target::Cohort(Factor::Model, "m".into()), "c3"), &mut out).unwrap();
    board.command(&cmd(Verb::Halt, Target::Fleet, "c4"), &mut out).unwrap();
    assert_eq!(board.verdict("a1").unwrap().scope, Scope::Fleet);
    assert_eq!(board.verdict("never-seen").unwrap().scope, Scope::Fleet);
    board.command(&cmd(Verb::Resume, Target::Fleet, "c5"), &mut out).unwrap();
    assert_eq!(board.verdict("a1").unwrap().scope, Scope::Cohort);
    assert!(board.verdict("never-seen").is_none());
    board.command(&cmd(Verb::Resume, Target::Cohort(Factor::Model, "m".into()), "c6"), &mut out).unwrap();
    assert!(board.verdict("a1").is_none());
    assert_eq!(board.verdict("a0").unwrap().scope, Scope::Agent, "its own halt is resumed on its own");
    board.command(&cmd(Verb::Resume, Target::Agent("a0".into()), "c7"), &mut out).unwrap();
    assert!(board.verdict("a0").is_none());
    assert_eq!(board.command(&cmd(Verb::Resume, Target::Fleet, "c8"), &mut out), Err(Unchanged::NotHalted));
    let mut no_reason = cmd(Verb::Halt, Target::Fleet, "c9");
    no_reason.reason = " ".into();
    assert_eq!(board.command(&no_reason, &mut out), Err(Unchanged::Missing("reason")));
    // Findings from before the resume are spent: a replay of them does not halt again.
    out.clear();
    board.process(&[], &[finding("old", "a0", 9_000, FindingKind::RateLimit, Severity::High)], &mut out);
    assert!(out.transitions.is_empty());
}

#[test]
fn transitions_read_back_restore_every_halt() {
    let mut board = Board::new(&cfg("[cohort]\nmode = \"enforce\"\n")).unwrap();
    let mut out = Response::default();
    let lines: Vec<String> =
        (0..3).map(|i| event_line(&format!("e{i}"), &format!("a{i}"), 1_000, "m")).collect();
    board.process(&decode_all(&lines), &[], &mut out);
    board.process(&[], &[finding("f", "a0", 2_000, FindingKind::RateLimit, Severity::High)], &mut out);
    let c = Command {
        id: "c".into(),
        ts: 3_000,
        verb: Verb::Halt,
        target: Target::Cohort(Factor::Provider, "p".into()),
        operator: "bob".into(),
        reason: "provider incident".into(),
    };
    board.command(&c, &mut out).unwrap();
    let mut restored = Board::new(&cfg("[cohort]\nmode = \"enforce\"\n")).unwrap();
    for t in &out.transitions {
        restored.apply(t);
    }
    for (agent, factors) in &out.factors {
        let _ = factors;
        // The factors come back with the first events after a restart; the halts do not wait for them.
        assert!(restored.verdict(agent).is_none() || agent == "a0");
    }
    assert_eq!(restored.verdict("a0").unwrap().scope, Scope::Agent);
    let (agents, cohorts, fleet) = restored.view().halts();
    assert_eq!(agents.len(), 1);
    assert_eq!(cohorts[0].cohort, Some((Factor::Provider, "p".to_owned())));
    assert!(fleet.is_none());
    // A transition older than the breaker's last move (another member's, read late) changes nothing.
    let mut stale = out.transitions[0].clone();
    stale.action = Action::AgentResume;
    stale.ts -= 1;
    assert!(!restored.apply(&stale));
    assert_eq!(restored.verdict("a0").unwrap().scope, Scope::Agent);
    // A transition round-trips through JSON (the control log and topic).
    let json = serde_json::to_string(&out.transitions[0]).unwrap();
    let back: Transition = serde_json::from_str(&json).unwrap();
    assert_eq!(back, out.transitions[0]);
}

#[test]
fn many_agents_tripping_together_trip_the_fleet() {
    let mut board = Board::new(&cfg(
        "[fleet]\nmin_agents = 3\nmin_fraction = 0.5\nmode = \"enforce\"\n[cohort]\nmin_agents = 0\n",
    ))
    .unwrap();
    let mut out = Response::default();
    let lines: Vec<String> =
        (0..4).map(|i| event_line(&format!("e{i}"), &format!("a{i}"), 1_000, "m")).collect();
    board.process(&decode_all(&lines), &[], &mut out);
    let findings: Vec<Finding> = (0..3)
        .map(|i| {
            finding(&format!("f{i}"), &format!("a{i}"), 2_000 + i, FindingKind::RateLimit, Severity::High)
        })
        .collect();
    out.clear();
    board.process(&[], &findings, &mut out);
    assert_eq!(out.transitions.last().unwrap().action, Action::FleetHalt);
    assert_eq!(board.verdict("a3").unwrap().scope, Scope::Fleet);
}

#[test]
fn repeated_findings_count_distinct_findings_within_the_window() {
    let mut board =
        Board::new(&cfg("[rules.repeated_findings]\ncount = 2\nwindow_seconds = 60\nmode = \"enforce\"\n"))
            .unwrap();
    let mut out = Response::default();
    let f = |id: &str, ts| finding(id, "a", ts, FindingKind::ScopeDrift, Severity::High);
    // The same finding updated does not count twice; one outside the window does not count.
    board.process(&[], &[f("x", 0), f("x", 1_000), f("y", 61_000)], &mut out);
    assert!(out.transitions.is_empty());
    board.process(&[], &[f("z", 62_000)], &mut out);
    assert_eq!(out.transitions[0].finding_ids, vec!["y", "z"]);
}

#[test]
fn config_is_checked() {
    let bad: RespondConfig = cfg("[cohort]\nmin_fraction = 2.0\n");
    assert_eq!(Board::new(&bad).unwrap_err().key, "cohort.min_fraction");
    assert!(toml::from_str::<RespondConfig>("default_mode = \"loud\"").is_err());
}

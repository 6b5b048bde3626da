//! Detector behaviour, pinned through one helper: a config and NDJSON in, findings and decisions out.

use crate::{DetectConfig, Engine, Output};

/// Runs `ndjson` through an engine built from `config_toml` and compares a one-line-per-item rendering
/// of the findings and decisions with `expect`.
fn check(config_toml: &str, ndjson: &str, expect: &str) {
    let cfg: DetectConfig = toml::from_str(config_toml).expect("test config parses");
    let mut engine = Engine::new(&cfg).expect("test config builds");
    let events: Vec<_> = ndjson
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| vigil_schemas::decode(l.trim().as_bytes(), 1 << 20).expect("fixture event is valid"))
        .collect();
    let mut out = Output::default();
    engine.process(&events, &mut out);
    let got = render(&out);
    assert_eq!(got.trim(), expect.trim(), "\n--- got ---\n{got}");
}

fn render(out: &Output) -> String {
    let mut s = String::new();
    for f in &out.findings {
        s.push_str(&format!(
            "{} {} {} @{} [{}] {}\n",
            f.kind.as_str(),
            f.severity.as_str(),
            f.agent_id,
            f.ts,
            f.event_ids.join(","),
            f.summary
        ));
    }
    for d in &out.decisions {
        s.push_str(&format!(
            "{} {} {} {} <- {}\n",
            d.action,
            d.mode.as_str(),
            d.agent_id,
            d.actor,
            d.finding_ids.len()
        ));
    }
    s
}

fn ev(id: &str, ts: i64, agent: &str, action: &str, resource: &str, extra: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","ts":{ts},"agent_id":"{agent}","action":"{action}","resource":"{resource}"{extra}}}"#
    )
}

const SUPPORT_POLICY: &str = r#"
rate_limit_per_minute = 0
sensitive_resources = ["postgres://hr/**"]
[[policy]]
name = "support"
roles = ["support"]
actions = ["data.read", "api.call"]
resources = ["postgres://support/*", "https://api.zendesk.com/**"]
scopes = ["tickets:*"]
"#;

#[test]
fn allowed_actions_raise_nothing() {
    let role = r#","agent_role":"support","scope":"tickets:read""#;
    let input = [
        ev("e1", 1000, "s1", "data.read", "postgres://support/tickets", role),
        ev("e2", 2000, "s1", "api.call", "https://api.zendesk.com/v2/tickets/1", role),
        // No role, no matching agent glob: not covered, not judged.
        ev("e3", 3000, "x1", "data.delete", "postgres://hr/salaries", ""),
    ]
    .join("\n");
    check(SUPPORT_POLICY, &input, "");
}

#[test]
fn policy_violations_name_what_was_outside_the_allow_list() {
    let role = r#","agent_role":"support""#;
    let input = [
        ev("e1", 1000, "s1", "data.read", "postgres://crm/customers", role),
        ev("e2", 1000, "s2", "data.delete", "postgres://support/tickets", role),
        ev(
            "e3",
            1000,
            "s3",
            "data.read",
            "postgres://support/tickets",
            r#","agent_role":"support","scope":"admin:all""#,
        ),
        ev("e4", 1000, "s4", "data.read", "postgres://hr/salaries", role),
        ev(
            "e5",
            1000,
            "s5",
            "data.read",
            "postgres://hr/salaries",
            r#","agent_role":"support","outcome":"denied""#,
        ),
    ]
    .join("\n");
    check(
        SUPPORT_POLICY,
        &input,
        r#"
policy_violation high s1 @1000 [e1] s1 used resource "postgres://crm/customers" that no policy covering it allows (data.read postgres://crm/customers success)
policy_violation high s2 @1000 [e2] s2 used action "data.delete" that no policy covering it allows (data.delete postgres://support/tickets success)
policy_violation high s3 @1000 [e3] s3 used scope "admin:all" that no policy covering it allows (data.read postgres://support/tickets success)
policy_violation critical s4 @1000 [e4] s4 used resource "postgres://hr/salaries" that no policy covering it allows (data.read postgres://hr/salaries success)
policy_violation high s5 @1000 [e5] s5 used resource "postgres://hr/salaries" that no policy covering it allows (data.read postgres://hr/salaries denied)
agent.halt shadow s4 rule:critical_finding <- 1
"#,
    );
}

#[test]
fn any_covering_policy_may_allow() {
    let cfg = r#"
rate_limit_per_minute = 0
[[policy]]
name = "support"
roles = ["support"]
resources = ["postgres://support/*"]
[[policy]]
name = "s1 extra"
agents = ["s1"]
resources = ["s3://exports/**"]
"#;
    let role = r#","agent_role":"support""#;
    let input = [
        ev("e1", 1000, "s1", "file.write", "s3://exports/a/b.csv", role),
        ev("e2", 1000, "s2", "file.write", "s3://exports/a/b.csv", role),
    ]
    .join("\n");
    check(
        cfg,
        &input,
        r#"policy_violation high s2 @1000 [e2] s2 used resource "s3://exports/a/b.csv" that no policy covering it allows (file.write s3://exports/a/b.csv success)"#,
    );
}

#[test]
fn one_incident_is_one_finding_within_the_cooldown() {
    let role = r#","agent_role":"support""#;
    let mut lines: Vec<String> = (0..50)
        .map(|i| ev(&format!("e{i}"), 1000 + i, "s1", "data.read", "postgres://crm/t", role))
        .collect();
    // Severity rises (a sensitive resource): the open finding is updated, same id.
    lines.push(ev("up", 2000, "s1", "data.read", "postgres://hr/salaries", role));
    // Past the 900 s cooldown: a new finding.
    lines.push(ev("late", 2000 + 901_000, "s1", "data.read", "postgres://crm/t", role));
    let cfg: DetectConfig = toml::from_str(SUPPORT_POLICY).unwrap();
    let mut engine = Engine::new(&cfg).unwrap();
    let events: Vec<_> =
        lines.iter().map(|l| vigil_schemas::decode(l.as_bytes(), 1 << 20).unwrap()).collect();
    let mut out = Output::default();
    engine.process(&events, &mut out);
    let ids: Vec<(&str, &str)> =
        out.findings.iter().map(|f| (f.finding_id.as_str(), f.severity.as_str())).collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(ids[0].0, ids[1].0, "the update keeps the id");
    assert_eq!((ids[0].1, ids[1].1), ("high", "critical"));
    assert_ne!(ids[2].0, ids[0].0);
    assert_eq!(engine.stats().suppressed, 49);
}

#[test]
fn rate_limit_fires_once_per_minute_over_the_cap() {
    let cfg = "rate_limit_per_minute = 3\n[halt]\nhigh_findings = 2\n";
    let mut lines: Vec<String> =
        (0..5).map(|i| ev(&format!("a{i}"), 60_000 + i * 1000, "loop", "tool.call", "mcp://x", "")).collect();
    // Out of order into the previous minute: counted there (under the cap), not in the current one.
    lines.extend((0..3).map(|i| ev(&format!("old{i}"), 59_000 + i, "loop", "tool.call", "mcp://x", "")));
    // Next minute over the cap again, but within the cooldown: folded, no new finding.
    lines.extend((0..5).map(|i| ev(&format!("b{i}"), 120_000 + i, "loop", "tool.call", "mcp://x", "")));
    // Past the cooldown: a second finding, and with it the halt rule's second high finding.
    lines.extend((0..4).map(|i| ev(&format!("c{i}"), 1_200_000 + i, "loop", "tool.call", "mcp://x", "")));
    // Two windows back: too late for the rate judge.
    lines.push(ev("stale", 0, "loop", "tool.call", "mcp://x", ""));
    lines.push(ev("stale2", 1_079_999, "loop", "tool.call", "mcp://x", ""));
    check(
        cfg,
        &lines.join("\n"),
        r#"
rate_limit high loop @63000 [a3] loop exceeded its hard cap of 3 actions per minute
rate_limit high loop @1200003 [c3] loop exceeded its hard cap of 3 actions per minute
agent.halt shadow loop rule:high_findings <- 2
"#,
    );
}

#[test]
fn replay_gives_the_same_findings_and_snapshots_resume() {
    let role = r#","agent_role":"support""#;
    let lines: Vec<String> = (0..40)
        .map(|i| {
            ev(&format!("e{i}"), i * 20_000, &format!("s{}", i % 3), "data.read", "postgres://crm/t", role)
        })
        .collect();
    let events: Vec<_> =
        lines.iter().map(|l| vigil_schemas::decode(l.as_bytes(), 1 << 20).unwrap()).collect();
    let cfg: DetectConfig = toml::from_str(SUPPORT_POLICY).unwrap();
    let run_whole = || {
        let mut e = Engine::new(&cfg).unwrap();
        let mut out = Output::default();
        e.process(&events, &mut out);
        out
    };
    let whole = run_whole();
    assert_eq!(whole, run_whole());
    assert!(!whole.findings.is_empty());
    // Stop half-way, snapshot through JSON, restore into a fresh engine, finish: same output.
    let mut first = Engine::new(&cfg).unwrap();
    let mut out = Output::default();
    first.process(&events[..20], &mut out);
    let snap = serde_json::to_string(&first.snapshot()).unwrap();
    let mut second = Engine::new(&cfg).unwrap();
    second.restore(serde_json::from_str(&snap).unwrap());
    second.process(&events[20..], &mut out);
    assert_eq!(out, whole);
}

#[test]
fn bad_configs_are_refused_with_the_reason() {
    let cfg: DetectConfig = toml::from_str("[[policy]]\nname = \"p\"\nresources = [\"x\"]\n").unwrap();
    assert_eq!(
        Engine::new(&cfg).unwrap_err().to_string(),
        "policy \"p\" names neither `agents` nor `roles`, so it covers no agent"
    );
    let err = toml::from_str::<DetectConfig>("rate_limit = 5\n").unwrap_err().to_string();
    assert!(err.contains("unknown field `rate_limit`"), "{err}");
}

#[test]
fn late_events_are_counted_not_rate_judged() {
    let cfg: DetectConfig = toml::from_str("rate_limit_per_minute = 1").unwrap();
    let mut engine = Engine::new(&cfg).unwrap();
    let lines = [
        ev("a", 180_000, "x", "api.call", "https://x/", ""),
        ev("b", 120_500, "x", "api.call", "https://x/", ""),
        ev("c", 60_000, "x", "api.call", "https://x/", ""),
        ev("d", 60_001, "x", "api.call", "https://x/", ""),
    ];
    let events: Vec<_> =
        lines.iter().map(|l| vigil_schemas::decode(l.as_bytes(), 1 << 20).unwrap()).collect();
    let mut out = Output::default();
    engine.process(&events, &mut out);
    assert_eq!(engine.stats().late, 2);
    assert!(out.findings.is_empty(), "{:?}", out.findings);
}

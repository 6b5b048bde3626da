//! Detector behaviour, pinned through one helper: a config and NDJSON in, findings and decisions out.

use std::collections::BTreeMap;

use crate::{DetectConfig, Engine, Output, SpikeConfig};

/// Runs `ndjson` through an engine built from `config_toml` and compares a one-line-per-item rendering
/// of the findings and decisions with `expect`.
fn check(config_toml: &str, ndjson: &str, expect: &str) {
    let got = render(&run(config_toml, ndjson));
    assert_eq!(got.trim(), expect.trim(), "\n--- got ---\n{got}");
}

/// What an engine built from `config_toml` makes of `ndjson`, to the end of the input.
fn run(config_toml: &str, ndjson: &str) -> Output {
    let cfg: DetectConfig = toml::from_str(config_toml).expect("test config parses");
    let mut engine = Engine::new(&cfg).expect("test config builds");
    let events: Vec<_> = ndjson
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| vigil_schemas::decode(l.trim().as_bytes(), 1 << 20).expect("fixture event is valid"))
        .collect();
    let mut out = Output::default();
    engine.process(&events, &mut out);
    engine.finish(&mut out);
    out
}

/// The events of fixture lines (all valid).
fn decoded<'a, S: AsRef<str> + ?Sized + 'a>(
    lines: impl IntoIterator<Item = &'a S>,
) -> Vec<vigil_schemas::Event<'a>> {
    lines
        .into_iter()
        .map(|l| vigil_schemas::decode(l.as_ref().as_bytes(), 1 << 20).expect("fixture event is valid"))
        .collect()
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
        // No role, no matching agent glob: not covered, not judged, but said once.
        ev("e3", 3000, "x1", "data.delete", "postgres://hr/salaries", ""),
        ev("e4", 4000, "x1", "data.delete", "postgres://hr/salaries", ""),
    ]
    .join("\n");
    check(
        SUPPORT_POLICY,
        &input,
        "uncovered_agent medium x1 @3000 [e3] x1 declares no role and no policy names it: nothing it does is checked against an allow-list",
    );
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
"#,
    );
}

#[test]
fn a_role_left_out_or_written_differently_does_not_escape_the_allow_list() {
    // s1 declared "support" first: that is its role. Reading HR data is critical however the later
    // events spell the role or leave it out, and each such event is itself a finding.
    let input = [
        ev("e1", 1000, "s1", "data.read", "postgres://support/tickets", r#","agent_role":"support""#),
        ev("e2", 2000, "s1", "data.read", "postgres://hr/salaries", r#","agent_role":"Support""#),
        ev("e3", 1_000_000, "s1", "data.read", "postgres://hr/salaries", ""),
        // A new agent claiming a role nobody covers is not silence either.
        ev("e4", 3000, "n1", "data.read", "postgres://hr/salaries", r#","agent_role":"Support""#),
    ]
    .join("\n");
    check(
        SUPPORT_POLICY,
        &input,
        r#"
policy_violation critical s1 @2000 [e2] s1 used resource "postgres://hr/salaries" that no policy covering it allows (data.read postgres://hr/salaries success)
role_mismatch high s1 @2000 [e2] s1 declared role "Support" but is bound to role "support"; judged as "support"
policy_violation critical s1 @1000000 [e3] s1 used resource "postgres://hr/salaries" that no policy covering it allows (data.read postgres://hr/salaries success)
role_mismatch medium s1 @1000000 [e3] s1 left out its role "support"; judged as "support"
uncovered_agent medium n1 @3000 [e4] n1 (role "Support") is covered by no policy: nothing it does is checked against an allow-list
"#,
    );
}

#[test]
fn a_role_bound_by_config_is_the_agents_role_whatever_its_events_declare() {
    let cfg = format!("{SUPPORT_POLICY}\n[[role]]\nname = \"support\"\nagents = [\"helpdesk-*\"]\n");
    let input = [
        // Declaring nothing is fine when config says who it is; it is still judged as support.
        ev("e1", 1000, "helpdesk-1", "data.read", "postgres://support/tickets", ""),
        ev("e2", 2000, "helpdesk-1", "data.read", "postgres://hr/salaries", ""),
        // Its very first event claiming another role does not bind that role.
        ev("e3", 3000, "helpdesk-2", "data.read", "postgres://hr/salaries", r#","agent_role":"admin""#),
    ]
    .join("\n");
    check(
        &cfg,
        &input,
        r#"
policy_violation critical helpdesk-1 @2000 [e2] helpdesk-1 used resource "postgres://hr/salaries" that no policy covering it allows (data.read postgres://hr/salaries success)
policy_violation critical helpdesk-2 @3000 [e3] helpdesk-2 used resource "postgres://hr/salaries" that no policy covering it allows (data.read postgres://hr/salaries success)
role_mismatch high helpdesk-2 @3000 [e3] helpdesk-2 declared role "admin" but is bound to role "support"; judged as "support"
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
    let events: Vec<_> = decoded(lines.iter());
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
    let cfg = "rate_limit_per_minute = 3\n";
    let mut lines: Vec<String> =
        (0..5).map(|i| ev(&format!("a{i}"), 60_000 + i * 1000, "loop", "tool.call", "mcp://x", "")).collect();
    // Out of order into the previous minute: counted there (under the cap), not in the current one.
    lines.extend((0..3).map(|i| ev(&format!("old{i}"), 59_000 + i, "loop", "tool.call", "mcp://x", "")));
    // Next minute over the cap again, but within the cooldown: folded, no new finding.
    lines.extend((0..5).map(|i| ev(&format!("b{i}"), 120_000 + i, "loop", "tool.call", "mcp://x", "")));
    // Past the cooldown: a second finding.
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
    let events: Vec<_> = decoded(lines.iter());
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
fn a_detector_table_sets_only_what_it_names() {
    // Each of the three shares one shape but has its own defaults: what a table leaves out keeps them.
    let cfg: DetectConfig =
        toml::from_str("[volume]\np_value = 1e-4\n[denied]\nmin_count = 7\n[tokens]\nenabled = false\n")
            .unwrap();
    let (volume, denied, tokens) = (SpikeConfig::volume(), SpikeConfig::denied(), SpikeConfig::tokens());
    assert_eq!(cfg.volume, SpikeConfig { p_value: 1e-4, ..volume });
    assert_eq!(cfg.denied, SpikeConfig { min_count: 7, ..denied });
    assert_eq!(cfg.tokens, SpikeConfig { enabled: false, ..tokens });
    // An empty table is the defaults; a misspelt key is still refused, by name.
    let cfg: DetectConfig = toml::from_str("[volume]\n").unwrap();
    assert_eq!(cfg.volume, SpikeConfig::volume());
    let err = toml::from_str::<DetectConfig>("[denied]\np_valeu = 1e-3\n").unwrap_err().to_string();
    assert!(err.contains("unknown field `p_valeu`"), "{err}");
}

#[test]
fn events_behind_the_watermark_are_late_but_still_policy_checked() {
    let cfg: DetectConfig = toml::from_str("rate_limit_per_minute = 1").unwrap();
    let mut engine = Engine::new(&cfg).unwrap();
    let lines = [
        ev("a", 180_000, "x", "api.call", "https://x/", ""),
        ev("b", 120_500, "x", "api.call", "https://x/", ""),
        ev("c", 60_000, "x", "api.call", "https://x/", ""),
        ev("d", 60_001, "x", "api.call", "https://x/", ""),
    ];
    let events: Vec<_> = decoded(lines.iter());
    let mut out = Output::default();
    engine.process(&events, &mut out);
    // The watermark is 180 s - 30 s of lateness: the three older events are late. The hard cap still
    // counts them, each in its own minute: two in the minute at 60 s are over a cap of one.
    assert_eq!(engine.stats().late, 3);
    let got: Vec<_> =
        out.findings.iter().map(|f| (f.kind.as_str(), f.window_start, f.event_ids.clone())).collect();
    assert_eq!(got, [("rate_limit", 60_000, vec!["d".to_string()])]);
}

#[test]
fn an_event_stamped_early_does_not_switch_off_the_rate_cap() {
    // One event stamped two minutes ahead, then a loop in the present minute: the early minute is
    // counted apart, the present one still trips the cap.
    let mut lines = vec![ev("early", 180_000, "loop", "tool.call", "mcp://x", "")];
    lines.extend(
        (0..12).map(|i| ev(&format!("a{i:02}"), 60_000 + i * 1000, "loop", "tool.call", "mcp://x", "")),
    );
    check(
        "rate_limit_per_minute = 10\n",
        &lines.join("\n"),
        "rate_limit high loop @70000 [a10] loop exceeded its hard cap of 10 actions per minute",
    );
}

/// Detectors with baselines: a short warm-up so fixtures stay small, and peers from two agents up.
const BASELINE: &str = r#"
rate_limit_per_minute = 0
[baseline]
warmup_windows = 10
warmup_events = 20
[scope]
min_peers = 2
"#;

/// `per_minute` events a minute for `minutes` minutes from `from_min`, spread evenly in each minute,
/// cycling over `resources`. Ids are `{agent}-{minute}-{i}`.
fn steady(
    agent: &str,
    from_min: i64,
    minutes: i64,
    per_minute: i64,
    resources: &[&str],
    extra: &str,
) -> Vec<String> {
    let mut out = Vec::new();
    for m in from_min..from_min + minutes {
        for i in 0..per_minute {
            let ts = m * 60_000 + i * (60_000 / per_minute.max(1));
            let r = resources[(m * per_minute + i) as usize % resources.len()];
            out.push(ev(&format!("{agent}-{m}-{i}"), ts, agent, "data.read", r, extra));
        }
    }
    out
}

fn merged(mut parts: Vec<Vec<String>>) -> String {
    let mut all: Vec<(i64, String)> = parts
        .drain(..)
        .flatten()
        .map(|l| (vigil_schemas::decode(l.as_bytes(), 1 << 20).unwrap().ts_ms, l))
        .collect();
    all.sort();
    all.into_iter().map(|(_, l)| l).collect::<Vec<_>>().join("\n")
}

const TICKETS: &[&str] = &["postgres://support/tickets", "postgres://support/users"];

#[test]
fn a_runaway_loop_is_a_volume_spike_in_its_first_window() {
    let role = r#","agent_role":"support""#;
    let input = merged(vec![
        steady("s1", 0, 30, 3, TICKETS, role),
        // Minute 30: 60 actions where 3 are normal.
        (0..60)
            .map(|i| ev(&format!("loop{i:02}"), 30 * 60_000 + i * 900, "s1", "tool.call", TICKETS[0], role))
            .collect(),
        steady("s1", 31, 5, 3, TICKETS, role),
    ]);
    check(
        BASELINE,
        &input,
        "volume_spike high s1 @1860000 [loop00,loop01,loop02,loop03,loop04] s1 made 60 actions in 60s, 21x its usual high of 2.8 (p < 1e-16)",
    );
}

/// Baselines after ten windows, and a role's yardstick once its agents have 100 windows between them.
const PEERS: &str = "rate_limit_per_minute = 0\n[baseline]\nwarmup_windows = 10\nwarmup_events = 20\npeer_min_windows = 100\n";

/// `n` actions of `agent` on the first ticket resource from minute `minute`, `every_ms` apart; ids
/// `{prefix}00`, `{prefix}01`, ...
fn burst(
    prefix: &str,
    agent: &str,
    minute: i64,
    n: i64,
    every_ms: i64,
    action: &str,
    role: &str,
) -> Vec<String> {
    (0..n)
        .map(|i| {
            ev(&format!("{prefix}{i:02}"), minute * 60_000 + i * every_ms, agent, action, TICKETS[0], role)
        })
        .collect()
}

#[test]
fn a_new_agent_is_judged_against_its_roles_agents_until_it_has_a_baseline() {
    let role = r#","agent_role":"support""#;
    // Four support agents work for two hours, 2 to 5 actions a minute; then s9 joins, works as they do,
    // and in its sixth minute loops: 60 actions. It has no baseline of its own (ten windows), its
    // role's agents do.
    let mut parts: Vec<Vec<String>> =
        (1..=4).map(|i| steady(&format!("s{i}"), 0, 140, i + 1, TICKETS, role)).collect();
    parts.push(steady("s9", 120, 5, 3, TICKETS, role));
    parts.push(burst("loop", "s9", 125, 60, 900, "tool.call", role));
    parts.push(steady("s9", 126, 4, 3, TICKETS, role));
    let input = merged(parts);
    let config = PEERS;
    check(
        config,
        &input,
        "volume_spike high s9 @7560000 [loop00,loop01,loop02,loop03,loop04] s9 made 60 actions in 60s, 13x the usual high of a support agent (4.8); it has no baseline of its own yet (p < 1e-16)",
    );
    // Without the role's yardstick the loop goes unseen: s9 has no baseline of its own.
    check(&format!("{config}peers = false\n"), &input, "");
    // Its evidence says where the window stands among its role's: above every one of theirs.
    let out = run(config, &input);
    assert_eq!(out.findings[0].evidence["peer_percentile"], 100.0, "{:?}", out.findings[0].evidence);
}

#[test]
fn a_spike_for_the_agent_says_where_it_stands_among_its_role() {
    let role = r#","agent_role":"support""#;
    // Three support agents make 2 actions a minute for two hours, a fourth 15; then s1 makes 14 in one
    // minute: seven times its own usual, but what the busy one does every minute. The finding is the
    // agent's own; its evidence shows that for the role it is ordinary (below the busiest quarter).
    let mut parts: Vec<Vec<String>> =
        (1..=3).map(|i| steady(&format!("s{i}"), 0, 130, 2, TICKETS, role)).collect();
    parts.push(steady("s4", 0, 130, 15, TICKETS, role));
    parts.push(burst("b", "s1", 130, 14, 4_000, "api.call", role));
    parts.push(steady("s1", 131, 3, 2, TICKETS, role));
    parts.push(steady("s4", 130, 4, 15, TICKETS, role));
    let out = run(PEERS, &merged(parts));
    let got = render(&out);
    let spike = out.findings.iter().find(|f| f.agent_id == "s1").expect(&got);
    let at = spike.evidence["peer_percentile"].as_f64().expect(&got);
    assert!((75.0..=95.0).contains(&at), "{at}: {got}");
    assert!(spike.evidence.get("peer_group").is_none(), "judged against its own baseline: {got}");
}

#[test]
fn nothing_is_judged_before_warm_up() {
    let role = r#","agent_role":"support""#;
    let input = merged(vec![
        steady("s1", 0, 5, 3, TICKETS, role),
        (0..60)
            .map(|i| ev(&format!("loop{i}"), 5 * 60_000 + i * 900, "s1", "tool.call", TICKETS[0], role))
            .collect(),
    ]);
    check(BASELINE, &input, "");
}

#[test]
fn steady_work_raises_nothing() {
    let role = r#","agent_role":"support""#;
    // Three agents, hours of the same work at different rates, with the odd busy minute.
    let mut parts = vec![
        steady("s1", 0, 240, 2, TICKETS, role),
        steady("s2", 0, 240, 5, TICKETS, role),
        steady("s3", 0, 240, 1, &TICKETS[..1], role),
    ];
    parts.push(
        steady("s2", 100, 1, 9, TICKETS, role).into_iter().map(|l| l.replace("s2-100", "s2-busy")).collect(),
    );
    check(&format!("{BASELINE}[ceiling]\nenabled = false\n"), &merged(parts.clone()), "");
    // s2 made exactly five actions in every minute before its busy one: the volume detector takes 14
    // for noise (p = 8.7e-4 as a count around its usual high), the ceiling detector notes, at low,
    // that it broke a ceiling every window had reached.
    check(
        BASELINE,
        &merged(parts),
        "volume_spike low s2 @6060000 [s2-100-0,s2-busy-0,s2-busy-1,s2-100-1,s2-busy-2] s2 made 14 actions in 60s, beyond its ceiling: the most in a window lately was 5.0, and 99 windows came within 41% of it (2.8x it; p = 8.7e-4)",
    );
}

/// Two days and an hour (2,940 minutes) of agent `d1` reading from the warehouse 4 times a minute, 80 to
/// 120 KB each, times `scale(minute)`; ids `{prefix}{minute}-{i}`.
fn warehouse_reads(prefix: &str, scale: impl Fn(i64) -> i64) -> Vec<String> {
    let mut lines = Vec::new();
    for m in 0..2940 {
        for i in 0..4 {
            let bytes = (80_000 + (m * 7 + i * 13) % 5 * 10_000) * scale(m);
            let extra = format!(r#","agent_role":"data","bytes_read":{bytes}"#);
            let id = format!("{prefix}{m}-{i}");
            lines.push(ev(
                &id,
                m * 60_000 + i * 15_000,
                "d1",
                "data.read",
                "postgres://warehouse/orders",
                &extra,
            ));
        }
    }
    lines
}

#[test]
fn a_slow_exfiltration_under_every_window_threshold_adds_up_to_one_finding() {
    // Two days of 4 reads a minute, each between 80 and 120 KB; then an hour in which every read is
    // three times larger: no single window is far enough out to be a spike, the hour is. It is one
    // incident: its first window noted at low as beyond the ceiling the agent's windows kept to, then
    // medium six minutes in, and high when it is still going on an hour after its incident opened
    // (before, the sum started over after each finding: four findings that hour).
    let lines = warehouse_reads("x", |m| if m >= 2880 { 3 } else { 1 });
    let config = "rate_limit_per_minute = 0\n[data]\nmin_bytes = 100000\n";
    check(
        config,
        &lines.join("\n"),
        r#"
data_spike low d1 @172860000 [x2880-0,x2880-1,x2880-2,x2880-3] d1 moved 1.2 MB in 60s, beyond its ceiling: the most in a window lately was 420.3 KB, and 2103 windows came within 41% of it (2.9x it; p = 7.2e-5)
data_spike medium d1 @173220000 [x2886-0,x2886-1,x2886-2,x2886-3] d1: a sustained rise in bytes moved, window after window above its baseline (cumulative surprise 20.1 >= 20); this window 1.1 MB, its usual high 370.7 KB
data_spike high d1 @176400000 [x2939-0,x2939-1,x2939-2,x2939-3] d1: a sustained rise in bytes moved, window after window above its baseline (cumulative surprise 40.0 >= 20); this window 1.3 MB, its usual high 1.0 MB; still rising 1 h after its incident opened
"#,
    );
    let out = run(config, &lines.join("\n"));
    let ids: std::collections::BTreeSet<_> = out.findings.iter().map(|f| f.finding_id.as_str()).collect();
    assert_eq!(ids.len(), 1, "the updates are the same finding: {ids:?}");
    assert_eq!(out.findings[2].evidence["rising_seconds"], 3600);
    // Without the cumulative detector (and the ceiling's note) the same hour raises nothing: no window,
    // no span was enough.
    check(
        "rate_limit_per_minute = 0\n[data]\nmin_bytes = 100000\n[slow]\nenabled = false\n[ceiling]\nenabled = false\n",
        &lines.join("\n"),
        "",
    );
}

#[test]
fn a_reported_outlier_does_not_hide_the_next_one() {
    // Two days of reads, then two minutes of reads thirty times larger, two hours apart. A baseline
    // that learned the first at its full size would take 12 MB as something this agent does; it learns
    // it as the edge of its usual instead, so the second is as surprising as the first.
    let lines = warehouse_reads("x", |m| if m == 2800 || m == 2920 { 30 } else { 1 });
    let out = run("rate_limit_per_minute = 0\n", &lines.join("\n"));
    let got = render(&out);
    let at: Vec<i64> = out.findings.iter().map(|f| f.ts / 60_000).collect();
    assert_eq!(at, [2801, 2921], "{got}");
}

#[test]
fn a_rise_is_high_for_how_long_it_went_on_not_for_where_its_cooldown_period_began() {
    // With a cooldown of 7,000 s the period holding the rise's start began 80 minutes before it: the
    // first finding is medium (it read "still rising 87 min" and high, for a rise six minutes old).
    let lines = warehouse_reads("x", |m| if m >= 2880 { 3 } else { 1 });
    let out = run(
        "rate_limit_per_minute = 0\ncooldown_seconds = 7000\n[data]\nmin_bytes = 100000\n",
        &lines.join("\n"),
    );
    let got = render(&out);
    let rise = out.findings.iter().find(|f| f.evidence.get("detector") == Some(&"cumulative".into()));
    assert_eq!(rise.map(|f| f.severity.as_str()), Some("medium"), "{got}");
}

#[test]
fn a_slow_rise_soon_after_another_data_incident_is_an_incident_of_its_own() {
    // One minute of reads thirty times the usual size 20 minutes before the hour of triple reads: the
    // spike is an incident, and the rise that starts in a later cooldown period is a new one, not an
    // update of the spike's (which a rise only continues once it has been reported).
    let lines = warehouse_reads("x", |m| match m {
        2860 => 30,
        m if m >= 2880 => 3,
        _ => 1,
    });
    let out = run("rate_limit_per_minute = 0\n[data]\nmin_bytes = 100000\n", &lines.join("\n"));
    let got = render(&out);
    let spike = out.findings.iter().find(|f| f.ts <= 2861 * 60_000).expect(&got);
    let rise = out.findings.iter().find(|f| f.evidence.get("detector") == Some(&"cumulative".into()));
    let rise = rise.expect(&got);
    assert_ne!(spike.finding_id, rise.finding_id, "{got}");
    assert!(rise.ts <= 2890 * 60_000, "found within ten minutes: {got}");
}

#[test]
fn a_steady_trickle_out_is_found_among_the_writes_while_the_reads_hide_it() {
    // Two days of 4 reads a minute (80-120 KB each) and a 2 KB write every five minutes; then an hour
    // in which the agent also sends 40 KB a minute to an upload endpoint. That is a tenth more bytes
    // moved (under the reads' noise: bytes moved raise nothing) but twenty times what it usually
    // writes, minute after minute: the cumulative detector on bytes written finds it within minutes.
    let writes = (0..2940).step_by(5).map(|m| {
        let extra = format!(r#","agent_role":"data","bytes_written":{}"#, 1_500 + m % 7 * 150);
        ev(&format!("w{m}"), m * 60_000 + 5_000, "d1", "file.write", "file:///tmp/report", &extra)
    });
    let uploads = (2880..2940).map(|m| {
        let extra = r#","agent_role":"data","bytes_written":40000"#;
        ev(&format!("x{m}"), m * 60_000 + 40_000, "d1", "api.call", "https://paste.example/upload", extra)
    });
    let input = merged(vec![warehouse_reads("r", |_| 1), writes.collect(), uploads.collect()]);
    // The upload endpoint is new to the agent (scope drift); the bytes written are found 6 minutes in
    // (8 before the baselines learned a reported outlier as its threshold). The tenth more bytes moved
    // add up too, later: the same incident (both are data), updated to high an hour after it opened.
    check(
        "rate_limit_per_minute = 0\n",
        &input,
        r#"
scope_drift medium d1 @172860000 [x2880] d1 touched 1 thing new to it and rare among its 0 peers: "https://paste.example/upload"
data_spike medium d1 @173220000 [r2886-0,r2886-1,r2886-2,x2886,r2886-3] d1: a sustained rise in bytes written or sent, window after window above its baseline (cumulative surprise 20.0 >= 20); this window 40.0 KB, its usual high 11.6 KB
data_spike high d1 @176400000 [r2939-0,r2939-1,r2939-2,x2939,r2939-3] d1: a sustained rise in bytes moved, window after window above its baseline (cumulative surprise 34.0 >= 20); this window 460.0 KB, its usual high 370.7 KB; still rising 1 h after its incident opened
"#,
    );
}

#[test]
fn a_token_burning_loop_is_a_token_spike() {
    // A day of a model call a minute at 400 to 600 tokens, then one minute of a loop: 9 calls of 2,000
    // tokens. The calls alone are no volume spike (min_count), the tokens are.
    let mut lines = Vec::new();
    for m in 0..1440 {
        let tokens = 400 + (m * 37) % 200;
        let extra = format!(r#","agent_role":"coding","input_tokens":{tokens}"#);
        lines.push(ev(
            &format!("t{m}"),
            m * 60_000 + 500,
            "c1",
            "model.call",
            "https://api.example/v1",
            &extra,
        ));
    }
    for i in 0..9 {
        let extra = r#","agent_role":"coding","input_tokens":1500,"output_tokens":500"#;
        lines.push(ev(
            &format!("loop{i}"),
            1440 * 60_000 + 1000 + i,
            "c1",
            "model.call",
            "https://api.example/v1",
            extra,
        ));
    }
    check(
        BASELINE,
        &lines.join("\n"),
        "token_spike high c1 @86460000 [loop0,loop1,loop2,loop3,loop4] c1 used 18000 model tokens in 60s, 35x its usual high of 512 (p = 9.4e-8)",
    );
}

#[test]
fn budgets_warn_then_stop_per_period_and_only_for_the_agents_they_cover() {
    let cfg = r#"
rate_limit_per_minute = 0
[[budget]]
name = "loop-guard"
agents = ["b*"]
per = "minute"
tokens_warn = 5000
tokens_limit = 10000
cost_limit_usd = 1.0
"#;
    let call = |id: &str, ts: i64, agent: &str, extra: &str| {
        ev(id, ts, agent, "model.call", "https://api.example/v1", extra)
    };
    let t = r#","input_tokens":2000"#;
    let input = [
        // b1: 2,000 tokens a call; the third passes the warn level, the fifth the hard one.
        call("b1-1", 1_000, "b1", t),
        call("b1-2", 2_000, "b1", t),
        call("b1-3", 3_000, "b1", t),
        call("b1-4", 4_000, "b1", t),
        call("b1-5", 5_000, "b1", t),
        call("b1-6", 6_000, "b1", t),
        // The next minute starts afresh: one call is under every level.
        call("b1-7", 61_000, "b1", t),
        // Money: $0.70 twice passes the $1 hard level.
        call("b2-1", 1_000, "b2", r#","cost_usd":0.7"#),
        call("b2-2", 2_000, "b2", r#","cost_usd":0.7"#),
        // Not covered.
        call("x1-1", 1_000, "x1", r#","input_tokens":50000"#),
    ]
    .join("\n");
    check(
        cfg,
        &input,
        r#"
budget_limit medium b1 @3000 [b1-3] b1 spent 6000 tokens this minute under budget "loop-guard", at or over its warn level of 5000 tokens
budget_limit high b1 @5000 [b1-5] b1 spent 10000 tokens this minute under budget "loop-guard", at or over its hard level of 10000 tokens
budget_limit high b2 @2000 [b2-2] b2 spent $1.40 this minute under budget "loop-guard", at or over its hard level of $1.00
"#,
    );
}

#[test]
fn a_data_spike_names_the_bytes_and_the_baseline() {
    let role = r#","agent_role":"data","bytes_read":200000"#;
    let big = r#","agent_role":"data","bytes_read":900000000"#;
    let input = merged(vec![
        steady("d1", 0, 30, 4, &["postgres://warehouse/orders"], role),
        vec![ev("exfil", 30 * 60_000 + 5, "d1", "data.read", "postgres://warehouse/orders", big)],
        steady("d1", 31, 3, 4, &["postgres://warehouse/orders"], role),
    ]);
    check(
        BASELINE,
        &input,
        "data_spike high d1 @1860000 [exfil] d1 moved 900.0 MB in 60s, 1214x its usual high of 741.5 KB (p = 6.4e-8)",
    );
}

#[test]
fn denied_probing_is_a_burst() {
    let role = r#","agent_role":"support""#;
    let denied = r#","agent_role":"support","outcome":"denied""#;
    let input = merged(vec![
        steady("s1", 0, 30, 3, TICKETS, role),
        (0..12)
            .map(|i| ev(&format!("no{i:02}"), 30 * 60_000 + 100 + i, "s1", "data.read", TICKETS[0], denied))
            .collect(),
        // Two denials in a minute is everyday friction, not probing.
        (0..2)
            .map(|i| ev(&format!("meh{i}"), 40 * 60_000 + 100 + i, "s1", "data.read", TICKETS[0], denied))
            .collect(),
        steady("s1", 31, 12, 3, TICKETS, role),
    ]);
    // The twelve are also four times the three actions s1 made in each of its 30 minutes: under the
    // volume detector's p-value, beyond a ceiling every window reached (a low note).
    check(
        BASELINE,
        &input,
        "volume_spike low s1 @1860000 [no00,no01,no02,no03,no04] s1 made 12 actions in 60s, beyond its ceiling: the most in a window lately was 3.0, and 30 windows came within 41% of it (4.0x it; p = 8.2e-5)
denied_burst high s1 @1860000 [no00,no01,no02,no03,no04] s1 had 12 actions denied in 60s; its recent history has none (p < 1e-16)",
    );
}

#[test]
fn scope_drift_is_new_to_the_agent_and_rare_among_its_peers() {
    let role = r#","agent_role":"support""#;
    let files = ["file:///kb/articles/a.md", "file:///kb/articles/b.md", "postgres://support/tickets"];
    let mut parts: Vec<Vec<String>> =
        (1..=4).map(|n| steady(&format!("s{n}"), 0, 30, 2, &files, role)).collect();
    // s5 uses a resource s1 never touched: common among peers, so not drift.
    parts.push(steady("s5", 0, 30, 2, &["postgres://support/users"], role));
    parts.push(vec![
        // s1: a new file in a familiar folder is the same generalised key: nothing.
        ev("newfile", 31 * 60_000, "s1", "file.read", "file:///kb/articles/c.md", role),
        // s2: a resource one peer uses (s5): 1 of 4 peers, rarity 0.75 < 0.8: nothing.
        ev("peer", 31 * 60_000 + 1, "s2", "data.read", "postgres://support/users", role),
        // s3: resources no peer uses, one of them sensitive: drift, raised.
        ev("hr", 31 * 60_000 + 2, "s3", "data.read", "postgres://hr/salaries", role),
        ev("crm", 31 * 60_000 + 3, "s3", "data.read", "postgres://crm/accounts", role),
        ev("crm2", 31 * 60_000 + 4, "s3", "data.read", "postgres://crm/accounts", role),
    ]);
    parts.push(steady("s4", 32, 2, 2, &files, role));
    let cfg = format!("{BASELINE}\nsensitive_resources = [\"postgres://hr/**\"]\n");
    let cfg = cfg.replacen(
        "rate_limit_per_minute = 0",
        "rate_limit_per_minute = 0\nsensitive_resources = [\"postgres://hr/**\"]",
        1,
    );
    let cfg = cfg.trim_end_matches("\nsensitive_resources = [\"postgres://hr/**\"]\n");
    check(
        cfg,
        &merged(parts),
        r#"scope_drift high s3 @1920000 [hr,crm] s3 touched 2 things new to it and rare among its 4 peers: "postgres://hr/salaries", "postgres://crm/accounts""#,
    );
}

#[test]
fn slow_creep_onto_familiar_ground_is_caught_by_divergence() {
    // Everyone in the role uses both tables, so nothing is new or rare; but c1 moves its work from one
    // to the other over hours, which its own history says is unusual.
    let role = r#","agent_role":"ops""#;
    let both = ["s3://logs/app", "s3://logs/db"];
    let mut parts: Vec<Vec<String>> =
        (2..=4).map(|n| steady(&format!("c{n}"), 0, 600, 1, &both, role)).collect();
    parts.push(steady("c1", 0, 300, 4, &both[..1], role));
    parts.push(
        steady("c1", 299, 1, 1, &both[1..], role)
            .into_iter()
            .map(|l| l.replace("c1-299-0", "c1-first-db"))
            .collect(),
    );
    for m in 300..600 {
        // The share on db grows a tenth every half hour.
        let share = ((m - 300) / 30 + 1).min(10);
        let rs: Vec<&str> = (0..10).map(|i| if i < share { both[1] } else { both[0] }).collect();
        parts.push(steady("c1", m, 1, 4, &rs, role));
    }
    let cfg: DetectConfig = toml::from_str(BASELINE).unwrap();
    let mut engine = Engine::new(&cfg).unwrap();
    let text = merged(parts);
    let events: Vec<_> = decoded(text.lines());
    let mut out = Output::default();
    engine.process(&events, &mut out);
    engine.finish(&mut out);
    let drift: Vec<_> = out.findings.iter().filter(|f| f.kind == crate::FindingKind::ScopeDrift).collect();
    assert!(!drift.is_empty(), "{}", render(&out));
    assert!(
        drift.iter().all(|f| f.agent_id == "c1" && f.evidence.contains_key("divergence")),
        "{}",
        render(&out)
    );
    // Caught while the creep is under way (it is complete at minute 570): with familiar keys only the
    // spread moves, and the default threshold waits for most of it. A creep onto keys the peers do not
    // use is caught at its first touch by novelty instead.
    assert!(drift[0].ts < 570 * 60_000, "{}", render(&out));
    // Reported once, then the new spread is the baseline: not a finding every cooldown period.
    assert!(drift.len() <= 2, "{}", render(&out));
    assert!(out.findings.iter().all(|f| f.kind == crate::FindingKind::ScopeDrift), "{}", render(&out));
}

#[test]
fn a_new_model_or_provider_behind_an_agent_is_a_model_change() {
    let m = |model: &str, provider: &str| {
        format!(r#","agent_role":"coding","model":"{model}","model_provider":"{provider}""#)
    };
    let input = merged(vec![
        steady("c1", 0, 20, 2, &["file:///repo/src"], &m("claude-sonnet-4", "anthropic")),
        steady("c2", 0, 20, 2, &["file:///repo/src"], &m("claude-sonnet-4", "anthropic")),
        vec![
            ev(
                "swap",
                20 * 60_000 + 7,
                "c1",
                "model.call",
                "file:///repo/src",
                &m("unknown-7b", "shadow-ai"),
            ),
            ev(
                "upgrade",
                20 * 60_000 + 9,
                "c2",
                "model.call",
                "file:///repo/src",
                &m("claude-opus-4", "anthropic"),
            ),
        ],
        steady("c1", 21, 2, 2, &["file:///repo/src"], &m("unknown-7b", "shadow-ai")),
        steady("c2", 21, 2, 2, &["file:///repo/src"], &m("claude-opus-4", "anthropic")),
    ]);
    check(
        BASELINE,
        &input,
        r#"
model_change high c1 @1260000 [swap] c1 is now backed by unknown-7b (shadow-ai), from a provider it never used
model_change medium c2 @1260000 [upgrade] c2 is now backed by claude-opus-4 (anthropic)
"#,
    );
}

#[test]
fn one_back_dated_event_does_not_frame_a_credentials_owner_as_its_thief() {
    // "ops" has used key_ops for an hour. One event for "intruder", stamped a day earlier, claims the
    // key: the intruder is the one flagged, and ops stays the owner.
    let cred = r#","credential_id":"key_ops""#;
    let mut lines: Vec<String> = (0..60)
        .map(|m| ev(&format!("o{m}"), 86_400_000 + m * 60_000, "ops", "api.call", "https://k8s/", cred))
        .collect();
    lines.push(ev("forged", 1000, "intruder", "api.call", "https://k8s/", cred));
    lines.push(ev("o60", 86_400_000 + 3_600_000, "ops", "api.call", "https://k8s/", cred));
    check(
        "rate_limit_per_minute = 0\n",
        &lines.join("\n"),
        r#"shared_credential high intruder @1000 [forged] intruder used credential "key_ops", which belongs to ops"#,
    );
}

#[test]
fn session_caps_and_borrowed_credentials_are_judged_per_event() {
    let cfg = r#"
rate_limit_per_minute = 0
session_max_bytes = 1000
[identity]
human_credentials = ["ghp_*"]
"#;
    let input = [
        ev(
            "a1",
            1000,
            "a",
            "data.read",
            "s3://x/y",
            r#","credential_id":"key_a","session_id":"s1","bytes_read":600"#,
        ),
        ev(
            "a2",
            2000,
            "a",
            "data.read",
            "s3://x/y",
            r#","credential_id":"key_a","session_id":"s1","bytes_read":600"#,
        ),
        ev(
            "a3",
            3000,
            "a",
            "data.read",
            "s3://x/y",
            r#","credential_id":"key_a","session_id":"s1","bytes_read":600"#,
        ),
        ev(
            "a4",
            4000,
            "a",
            "data.read",
            "s3://x/y",
            r#","credential_id":"key_a","session_id":"s2","bytes_read":600"#,
        ),
        ev("b1", 5000, "b", "data.read", "s3://x/y", r#","credential_id":"key_a""#),
        ev(
            "c1",
            6000,
            "c",
            "data.read",
            "s3://x/y",
            r#","credential_id":"ghp_abc","principal":"ana@example.com""#,
        ),
    ]
    .join("\n");
    check(
        cfg,
        &input,
        r#"
session_limit high a @2000 [a2] a moved 1.2 KB in session "s1", over the cap of 1.0 KB
shared_credential high b @5000 [b1] b used credential "key_a", which belongs to a
shared_credential high c @6000 [c1] c acted with "ghp_abc", a human's credential (matches identity.human_credentials)
"#,
    );
}

/// SplitMix64 for the property tests: no dependency, fixed forever.
struct Mix(u64);
impl Mix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A small fleet with a bit of everything: steady work, a loop, a data spike, drift, a model swap,
/// denied probing and a borrowed credential.
fn busy_fleet() -> Vec<String> {
    let mut parts = Vec::new();
    for n in 0..6 {
        let role = format!(
            r#","agent_role":"support","model":"m1","model_provider":"p1","credential_id":"k{n}","bytes_read":{}"#,
            1000 + n * 10
        );
        parts.push(steady(&format!("s{n}"), 0, 90, 2 + n % 3, TICKETS, &role));
    }
    let role = r#","agent_role":"support","model":"m1","model_provider":"p1""#;
    parts.push(
        (0..80)
            .map(|i| ev(&format!("loop{i}"), 40 * 60_000 + i * 700, "s0", "tool.call", TICKETS[0], role))
            .collect(),
    );
    parts.push(
        (0..3)
            .map(|i| {
                ev(
                    &format!("big{i}"),
                    50 * 60_000 + i,
                    "s1",
                    "data.read",
                    TICKETS[0],
                    r#","agent_role":"support","bytes_read":500000000"#,
                )
            })
            .collect(),
    );
    parts.push(
        (0..4)
            .map(|i| {
                ev(
                    &format!("drift{i}"),
                    55 * 60_000 + i * 5000,
                    "s2",
                    "data.read",
                    "postgres://hr/salaries",
                    role,
                )
            })
            .collect(),
    );
    parts.push(
        (0..3)
            .map(|i| {
                ev(
                    &format!("swap{i}"),
                    60 * 60_000 + i * 5000,
                    "s3",
                    "model.call",
                    TICKETS[0],
                    r#","agent_role":"support","model":"x","model_provider":"y""#,
                )
            })
            .collect(),
    );
    parts.push(
        (0..15)
            .map(|i| {
                ev(
                    &format!("deny{i}"),
                    65 * 60_000 + i * 2000,
                    "s4",
                    "data.read",
                    "vault://x",
                    r#","agent_role":"support","outcome":"denied""#,
                )
            })
            .collect(),
    );
    parts.push(
        (0..2)
            .map(|i| {
                ev(
                    &format!("borrow{i}"),
                    70 * 60_000 + i * 2000,
                    "s5",
                    "data.read",
                    TICKETS[0],
                    r#","agent_role":"support","credential_id":"k0""#,
                )
            })
            .collect(),
    );
    let text = merged(parts);
    text.lines().map(str::to_owned).collect()
}

/// The findings as a set: id to (kind, agent, final severity). What a consumer keyed by finding_id sees.
fn final_findings(out: &Output) -> BTreeMap<String, (String, String, crate::Severity)> {
    let mut m = BTreeMap::new();
    for f in &out.findings {
        let e = m.entry(f.finding_id.clone()).or_insert((
            f.kind.as_str().to_owned(),
            f.agent_id.clone(),
            f.severity,
        ));
        e.2 = e.2.max(f.severity);
    }
    m
}

fn run_batches(cfg: &DetectConfig, lines: &[String], splits: &[usize]) -> Output {
    let mut engine = Engine::new(cfg).unwrap();
    let events: Vec<_> = decoded(lines.iter());
    let mut out = Output::default();
    let mut at = 0;
    for &s in splits.iter().chain(std::iter::once(&events.len())) {
        let s = s.clamp(at, events.len());
        engine.process(&events[at..s], &mut out);
        at = s;
    }
    engine.finish(&mut out);
    assert_eq!(engine.stats().late, 0, "the shuffle stayed within the tolerance");
    out
}

/// `lines` as they might arrive: each event delayed by a random amount below the tolerance, then
/// re-sorted by arrival, so every event arrives before the watermark passes it.
fn delayed(lines: &[String], lateness_ms: i64, rng: &mut Mix) -> Vec<String> {
    let mut arrivals: Vec<(i64, u64, &String)> = lines
        .iter()
        .map(|l| {
            let ts = vigil_schemas::decode(l.as_bytes(), 1 << 20).unwrap().ts_ms;
            (ts + rng.below(lateness_ms as u64) as i64, rng.next(), l)
        })
        .collect();
    arrivals.sort();
    arrivals.into_iter().map(|(_, _, l)| l.clone()).collect()
}

/// `count` random batch boundaries in a stream of `len` events, ascending.
fn cut_points(rng: &mut Mix, count: u64, len: usize) -> Vec<usize> {
    let mut splits: Vec<usize> = (0..count).map(|_| rng.below(len as u64) as usize).collect();
    splits.sort();
    splits
}

/// The baseline config with a rate cap of 30 a minute and `vault://**` sensitive: every detector the
/// busy fleet trips.
fn capped_config() -> DetectConfig {
    toml::from_str(&BASELINE.replace(
        "rate_limit_per_minute = 0",
        "rate_limit_per_minute = 30\nsensitive_resources = [\"vault://**\"]",
    ))
    .unwrap()
}

#[test]
fn any_order_within_the_tolerance_and_any_batch_split_gives_the_same_findings() {
    let cfg = capped_config();
    let lines = busy_fleet();
    let reference = run_batches(&cfg, &lines, &[]);
    let want = final_findings(&reference);
    let kinds: std::collections::BTreeSet<&str> = want.values().map(|v| v.0.as_str()).collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            "data_spike",
            "denied_burst",
            "model_change",
            "rate_limit",
            "scope_drift",
            "shared_credential",
            "volume_spike"
        ],
        "{}",
        render(&reference)
    );
    let lateness_ms = cfg.lateness_seconds as i64 * 1000;
    let mut rng = Mix(11);
    for round in 0..40 {
        let shuffled = delayed(&lines, lateness_ms, &mut rng);
        let cuts = rng.below(20);
        let splits = cut_points(&mut rng, cuts, shuffled.len());
        let got = run_batches(&cfg, &shuffled, &splits);
        assert_eq!(final_findings(&got), want, "round {round}");
    }
}

/// Findings, statistics and state after judging `events` in batches of `batch`, the states read ahead
/// from `warm_from` agents on (`usize::MAX`: never).
fn judged_reading_ahead(
    cfg: &DetectConfig,
    events: &[vigil_schemas::Event<'_>],
    warm_from: usize,
    batch: usize,
) -> (String, String, [String; 5]) {
    let mut engine = Engine::new(cfg).unwrap();
    engine.warm_from = warm_from;
    let mut out = Output::default();
    for b in events.chunks(batch) {
        engine.process(b, &mut out);
    }
    engine.finish(&mut out);
    // The snapshot's parts in a fixed order (its fleet-wide maps come in hash order, which differs
    // between any two engines).
    let snapshot: serde_json::Value = serde_json::from_str(engine.snapshot_json().get()).unwrap();
    let state = ["agents", "max_ts", "front", "watermark", "stats"].map(|k| snapshot[k].to_string());
    (render(&out), format!("{:?}", engine.stats()), state)
}

/// Reading agents' states ahead (what a fleet of thousands does) only reads: the same events give the
/// same findings, statistics and state with it as without, whatever the batches.
#[test]
fn reading_states_ahead_changes_nothing() {
    let cfg = capped_config();
    let lines = busy_fleet();
    let events: Vec<_> = decoded(lines.iter());
    let judge = |warm_from: usize, batch: usize| judged_reading_ahead(&cfg, &events, warm_from, batch);
    let without = judge(usize::MAX, 4096);
    assert!(without.0.contains("volume_spike"), "{}", without.0);
    for batch in [1, 7, 16, 4096] {
        assert_eq!(judge(0, batch), without, "batches of {batch}");
    }
}

/// Judging a group of events read ahead reuses the slots looked up for it; an agent forgotten in the
/// middle of a group (and its slot taken by a newcomer) must not have its later events judged as the
/// newcomer's. Agents come and go all through, each returning after it was forgotten, with new ones
/// arriving beside it: the same findings, statistics and state with reading ahead as without.
#[test]
fn agents_forgotten_and_slots_reused_mid_group_are_judged_as_themselves() {
    let cfg: DetectConfig = toml::from_str("forget_idle_hours = 1\nrate_limit_per_minute = 1\n").unwrap();
    let mut parts = vec![steady("steady", 0, 400, 4, TICKETS, "")];
    for i in 0..60 {
        // "r{i}" works two minutes, then comes back a little over an hour later, at an offset that walks
        // through the forget scan's period (every 7.5 minutes): some come back in the very group of
        // events in which the scan forgets them, a newcomer "n{i}" just before them.
        let first = i * 3;
        parts.push(steady(&format!("r{i}"), first, 2, 2, TICKETS, ""));
        let back = (first + 2) * 60_000 + 3_600_000 + i * 9_000;
        parts.push(vec![
            ev(&format!("n{i}-a"), back - 1, &format!("n{i}"), "data.read", TICKETS[0], ""),
            ev(&format!("r{i}-a"), back, &format!("r{i}"), "data.read", TICKETS[0], ""),
            ev(&format!("r{i}-b"), back + 1, &format!("r{i}"), "data.read", TICKETS[0], ""),
        ]);
    }
    let lines = merged(parts);
    let events: Vec<_> = decoded(lines.lines());
    let judge = |warm_from: usize, batch: usize| judged_reading_ahead(&cfg, &events, warm_from, batch);
    let without = judge(usize::MAX, 4096);
    // Each "r" agent found by the hard cap before it was forgotten and after it came back.
    assert!(without.1.contains("forgotten: 152"), "{}", without.1);
    assert!(
        without.0.contains("r59 @10650000") && without.0.contains("r59 @14871001 [r59-b]"),
        "{}",
        without.0
    );
    for batch in [16, 100, 4096] {
        assert_eq!(judge(0, batch), without, "batches of {batch}");
    }
}

#[test]
fn snapshots_carry_open_windows_and_baselines() {
    let cfg: DetectConfig = toml::from_str(BASELINE).unwrap();
    let lines = busy_fleet();
    let whole = run_batches(&cfg, &lines, &[]);
    for cut in [lines.len() / 3, lines.len() / 2, lines.len() - 5] {
        let events: Vec<_> = decoded(lines.iter());
        let mut first = Engine::new(&cfg).unwrap();
        let mut out = Output::default();
        first.process(&events[..cut], &mut out);
        let snap = serde_json::to_string(&first.snapshot()).unwrap();
        let mut second = Engine::new(&cfg).unwrap();
        second.restore(serde_json::from_str(&snap).unwrap());
        second.process(&events[cut..], &mut out);
        second.finish(&mut out);
        assert_eq!(out, whole, "cut at {cut}");
    }
}

#[test]
fn an_idle_agent_stays_under_a_kibibyte_whatever_it_touched() {
    let cfg: DetectConfig = toml::from_str(BASELINE).unwrap();
    let mut engine = Engine::new(&cfg).unwrap();
    // One agent touches 500 distinct resources, 8 models and 10 sessions, then goes quiet.
    let lines: Vec<String> = (0..500)
        .map(|i| {
            ev(
                &format!("e{i}"),
                i * 10_000,
                "busy-agent-0001",
                "data.read",
                &format!("s3://bucket-{i}/k"),
                &format!(r#","agent_role":"data","scope":"scope:{}","model":"m{}","session_id":"s{}","bytes_read":10"#, i % 40, i % 9, i % 10),
            )
        })
        .collect();
    let events: Vec<_> = decoded(lines.iter());
    let mut out = Output::default();
    engine.process(&events, &mut out);
    engine.finish(&mut out);
    let bytes = engine.state_bytes();
    eprintln!("idle agent state: {bytes} bytes");
    assert!(bytes <= 1024, "{bytes} bytes for one idle agent");
    assert!(bytes >= 400, "{bytes}: the estimate counts the key table");
}

#[test]
fn the_baseline_summary_says_what_is_normal_for_an_agent() {
    let role = r#","agent_role":"support""#;
    let cfg: DetectConfig = toml::from_str(BASELINE).expect("test config parses");
    let mut engine = Engine::new(&cfg).expect("test config builds");
    let lines = merged(vec![steady("s1", 0, 40, 3, TICKETS, role)]);
    let events: Vec<_> = lines
        .lines()
        .map(|l| vigil_schemas::decode(l.as_bytes(), 1 << 20).expect("fixture event is valid"))
        .collect();
    assert_eq!(engine.baseline("s1"), None, "an agent not seen yet has no baseline");
    let mut out = Output::default();
    engine.process(&events[..9], &mut out);
    let early = engine.baseline("s1").expect("seen");
    assert!(!early.warm, "two closed windows are not a baseline: {early:?}");
    engine.process(&events[9..], &mut out);
    let b = engine.baseline("s1").expect("seen");
    assert!(b.warm, "{b:?}");
    assert_eq!(b.role, "support");
    assert!(b.windows >= 38 && b.events >= 114, "{b:?}");
    assert_eq!(b.keys_learned, 2);
    let actions = &b.per_window[0];
    assert_eq!(actions.measure, "actions");
    // Three actions every minute: the median is three (to the histogram's bin), and a finding needs
    // clearly more than the usual high.
    assert!((2.5..=3.5).contains(&actions.median), "{actions:?}");
    assert!(actions.threshold > 2.0 * actions.median.max(actions.usual_high), "{actions:?}");
    assert!((2.0..=3.5).contains(&actions.usual_high), "{actions:?}");
    assert_eq!(actions.most_lately, Some(3.0), "{actions:?}");
    assert_eq!(b.per_window[2].measure, "denials");
    assert_eq!(b.per_window[2].most_lately, None, "the ceiling detector does not follow denials");
    assert_eq!(b.per_window[2].median, 0.0, "no denials seen: {b:?}");
    assert!(b.state_bytes > 0 && b.state_bytes < 4096, "{b:?}");
}

#[test]
fn an_agent_no_policy_covers_is_reported_once() {
    let cfg: DetectConfig = toml::from_str(SUPPORT_POLICY).expect("test config parses");
    let mut engine = Engine::new(&cfg).expect("test config builds");
    let lines = [
        ev("1", 0, "s1", "data.read", "postgres://support/t", r#","agent_role":"support""#),
        ev("2", 1, "x1", "data.read", "postgres://support/t", ""),
        ev("3", 2, "x1", "data.read", "postgres://support/t", ""),
        ev("4", 3, "s1", "data.read", "postgres://support/t", r#","agent_role":"support""#),
    ];
    let events: Vec<_> = decoded(lines.iter());
    let mut out = Output::default();
    engine.process(&events, &mut out);
    assert_eq!(out.uncovered, ["x1"]);
    out.clear();
    engine.process(&events, &mut out);
    assert!(out.uncovered.is_empty(), "said once: {:?}", out.uncovered);
}

#[test]
fn one_sender_stamping_events_ahead_does_not_make_the_fleet_late() {
    // Four agents at work for an hour; s1 runs away in minute 40. Every ten minutes a fifth sender
    // posts one event stamped fourteen minutes ahead (inside the accepted skew). Listed in the order
    // they arrive, not by stamp.
    let role = r#","agent_role":"support""#;
    let mut arrivals: Vec<(i64, String)> = Vec::new();
    for a in ["s1", "s2", "s3", "s4"] {
        for line in steady(a, 0, 60, 3, TICKETS, role) {
            let ts = vigil_schemas::decode(line.as_bytes(), 1 << 20).unwrap().ts_ms;
            arrivals.push((ts, line));
        }
    }
    for i in 0..60 {
        let ts = 40 * 60_000 + i * 900;
        arrivals.push((ts, ev(&format!("loop{i:02}"), ts, "s1", "tool.call", TICKETS[0], role)));
    }
    for m in (0..60).step_by(10) {
        let at = m * 60_000 + 1;
        arrivals.push((at, ev(&format!("ahead{m}"), at + 14 * 60_000, "x", "data.read", TICKETS[0], role)));
    }
    arrivals.sort();
    let cfg: DetectConfig = toml::from_str(BASELINE).unwrap();
    let mut engine = Engine::new(&cfg).unwrap();
    let events: Vec<_> =
        arrivals.iter().map(|(_, l)| vigil_schemas::decode(l.as_bytes(), 1 << 20).unwrap()).collect();
    let mut out = Output::default();
    engine.process(&events, &mut out);
    engine.finish(&mut out);
    assert_eq!(engine.stats().late, 0, "honest events were made late by one sender's clock");
    let spikes: Vec<_> = out.findings.iter().filter(|f| f.kind.as_str() == "volume_spike").collect();
    assert_eq!(spikes.len(), 1, "{}", render(&out));
    assert_eq!((spikes[0].agent_id.as_str(), spikes[0].window_start), ("s1", 40 * 60_000));
}

#[test]
fn with_one_agent_busy_windows_still_close_at_most_the_skew_late() {
    // s2 falls silent after a minute; s1 works on. The watermark follows the second newest agent (s2)
    // only until s1 is `max_skew_seconds` ahead, then it trails s1 by that.
    let cfg: DetectConfig = toml::from_str("max_skew_seconds = 300\n").unwrap();
    let mut engine = Engine::new(&cfg).unwrap();
    let lines = merged(vec![steady("s1", 0, 30, 2, TICKETS, ""), steady("s2", 0, 1, 2, TICKETS, "")]);
    let events: Vec<_> = decoded(lines.lines());
    let mut out = Output::default();
    engine.process(&events, &mut out);
    // s1's newest is 29.5 minutes: the watermark is 29.5 - 5 minutes - 30 s of lateness.
    assert_eq!(engine.watermark(), Some(29 * 60_000 + 30_000 - 300_000 - 30_000));
    // s1's windows up to minute 24 and s2's one window are closed.
    assert_eq!(engine.stats().windows, 24 + 1);
}

#[test]
fn a_flood_of_made_up_agent_ids_is_capped_and_said_once() {
    // Ten real agents, then 1,000 made-up ids, then a real agent breaking its allow-list: state stays
    // at the cap, the flood is one finding, and the real agents are still judged.
    let cfg = format!("max_agents = 100\n{SUPPORT_POLICY}");
    let role = r#","agent_role":"support""#;
    let mut lines: Vec<String> = (0..10)
        .map(|i| ev(&format!("r{i}"), i, &format!("s{i}"), "data.read", "postgres://support/t", role))
        .collect();
    lines.extend((0..1000).map(|i| {
        ev(&format!("f{i}"), 100 + i, &format!("flood-{i}"), "data.read", "postgres://support/t", role)
    }));
    lines.push(ev("bad", 2000, "s3", "data.read", "postgres://hr/salaries", role));
    let parsed: DetectConfig = toml::from_str(&cfg).unwrap();
    let mut engine = Engine::new(&parsed).unwrap();
    let events: Vec<_> = decoded(lines.iter());
    let mut out = Output::default();
    engine.process(&events, &mut out);
    assert_eq!((engine.agents(), engine.stats().overflow), (100, 910));
    let kinds: Vec<_> = out.findings.iter().map(|f| (f.kind.as_str(), f.agent_id.as_str())).collect();
    assert_eq!(kinds, [("agent_overflow", "flood-90"), ("policy_violation", "s3")], "{}", render(&out));
}

#[test]
fn agents_idle_past_forget_idle_hours_are_forgotten_and_start_afresh() {
    let cfg: DetectConfig = toml::from_str("forget_idle_hours = 1\n").unwrap();
    let mut engine = Engine::new(&cfg).unwrap();
    // "brief" works for two minutes; "busy" for three hours.
    let lines = merged(vec![steady("brief", 0, 2, 2, TICKETS, ""), steady("busy", 0, 180, 2, TICKETS, "")]);
    let events: Vec<_> = decoded(lines.lines());
    let mut out = Output::default();
    engine.process(&events, &mut out);
    assert_eq!((engine.agents(), engine.stats().forgotten), (1, 1));
    assert!(engine.baseline("brief").is_none() && engine.baseline("busy").is_some());
    // The snapshot holds only who is remembered, and restores to the same.
    let snap = serde_json::to_string(&engine.snapshot()).unwrap();
    assert!(!snap.contains("\"brief\""), "{snap}");
    let mut again = Engine::new(&cfg).unwrap();
    again.restore(serde_json::from_str(&snap).unwrap());
    assert_eq!(again.agents(), 1);
    // Back after three hours: a new agent in the forgotten one's slot.
    let back = ev("back", 180 * 60_000, "brief", "data.read", TICKETS[0], "");
    engine.process(&[vigil_schemas::decode(back.as_bytes(), 1 << 20).unwrap()], &mut out);
    assert_eq!(engine.agents(), 2);
    assert_eq!(engine.baseline("brief").map(|b| b.events), Some(0));
}

#[test]
fn the_snapshot_written_straight_from_the_engine_reads_back_as_its_snapshot() {
    let cfg: DetectConfig = toml::from_str(BASELINE).unwrap();
    let mut engine = Engine::new(&cfg).unwrap();
    let lines = busy_fleet();
    let events: Vec<_> = decoded(lines.iter());
    let mut out = Output::default();
    engine.process(&events, &mut out);
    let raw = engine.snapshot_json();
    let back: crate::Snapshot = serde_json::from_str(raw.get()).unwrap();
    // Compared as what they store (fields kept out of snapshots, like cached coverage, aside).
    assert_eq!(serde_json::to_value(back).unwrap(), serde_json::to_value(engine.snapshot()).unwrap());
    assert!(raw.get().contains("\"front\"") && raw.get().contains("\"credentials\""));
}

#[test]
fn a_frozen_copy_writes_later_what_the_engine_wrote_when_it_was_taken() {
    let cfg: DetectConfig = toml::from_str(BASELINE).unwrap();
    let mut engine = Engine::new(&cfg).unwrap();
    let lines = busy_fleet();
    let events: Vec<_> = decoded(lines.iter());
    let (first, rest) = events.split_at(events.len() / 2);
    let mut out = Output::default();
    engine.process(first, &mut out);
    let (now, frozen) = (engine.snapshot_json(), engine.freeze());
    // The engine goes on judging; the copy stays what it was, text for text.
    engine.process(rest, &mut out);
    assert_ne!(engine.snapshot_json().get(), now.get(), "the second half changed the state");
    assert_eq!(frozen.to_json().get(), now.get());
    let mut streamed = Vec::new();
    frozen.write_json(&mut streamed).unwrap();
    assert_eq!(std::str::from_utf8(&streamed).unwrap(), now.get());
}

/// Three weeks of a day-shift agent (three actions a minute from 08:00 to 20:00 UTC, one every four
/// minutes at night), then a day whose 10:00 to 14:00 is as quiet as a night, and a night with half an
/// hour of daytime load. `quiet_day` and `busy_night` choose which of the two happen.
fn day_shift(quiet_day: bool, busy_night: bool) -> Vec<String> {
    const DAY_MIN: i64 = 1440;
    let role = r#","agent_role":"ops""#;
    let mut lines = Vec::new();
    for m in 0..22 * DAY_MIN {
        let (day, minute) = (m / DAY_MIN, m % DAY_MIN);
        let mut busy = (8 * 60..20 * 60).contains(&minute);
        if day == 21 && quiet_day && (10 * 60..14 * 60).contains(&minute) {
            busy = false;
        }
        if day == 21 && busy_night && (2 * 60..2 * 60 + 30).contains(&minute) {
            busy = true;
        }
        let n = if busy { 3 } else { i64::from(m % 4 == 0) };
        for i in 0..n {
            lines.push(ev(
                &format!("o{m}-{i}"),
                m * 60_000 + i * 20_000,
                "o1",
                "api.call",
                "https://ops.example/q",
                role,
            ));
        }
    }
    lines
}

fn rhythm_findings(lines: &[String]) -> Vec<(String, i64, String)> {
    let cfg: DetectConfig = toml::from_str("rate_limit_per_minute = 0").unwrap();
    let mut engine = Engine::new(&cfg).unwrap();
    let mut out = Output::default();
    for chunk in decoded(lines.iter()).chunks(4096) {
        engine.process(chunk, &mut out);
    }
    engine.finish(&mut out);
    out.findings
        .iter()
        .map(|f| (format!("{} {}", f.kind.as_str(), f.severity.as_str()), f.ts, f.summary.clone()))
        .collect()
}

#[test]
fn a_quiet_working_day_is_a_volume_drop_and_daytime_load_at_night_a_rise() {
    // Three ordinary weeks and an ordinary day: nothing at all.
    assert_eq!(rhythm_findings(&day_shift(false, false)), vec![]);
    let found = rhythm_findings(&day_shift(true, true));
    let day21 = 21 * 86_400_000;
    let kinds: Vec<_> = found.iter().map(|(k, ts, _)| (k.as_str(), (ts - day21) / 60_000)).collect();
    // 02:00 falls in the span 01:52-02:08 (spans are 16 minutes on the epoch); its end is the finding's
    // time. The quiet day shows in the first span wholly after 10:00 that is far enough below, and is
    // said once for the four hours.
    assert_eq!(kinds.len(), 2, "{found:#?}");
    assert_eq!(kinds[0].0, "volume_spike high", "{found:#?}");
    assert!((128..=160).contains(&kinds[0].1), "{found:#?}");
    assert_eq!(kinds[1].0, "volume_drop low", "{found:#?}");
    assert!((608..=640).contains(&kinds[1].1), "{found:#?}");
    assert!(found[1].2.contains("hour of the week"), "{}", found[1].2);
}

#[test]
fn a_level_shift_is_one_incident_and_then_the_baseline() {
    // Two days of reads, then twelve hours at three times the size: one incident (the sustained rise,
    // updated to high when it has gone on for an hour), and after that the new level is the baseline,
    // although the baselines learn reported windows only at their thresholds.
    let lines = warehouse_reads("x", |m| if m >= 2880 { 3 } else { 1 });
    let more = (2940..3600).flat_map(|m| {
        (0..4).map(move |i| {
            let extra = format!(
                r#","agent_role":"data","bytes_read":{}"#,
                (80_000 + (m * 7 + i * 13) % 5 * 10_000) * 3
            );
            ev(
                &format!("y{m}-{i}"),
                m * 60_000 + i * 15_000,
                "d1",
                "data.read",
                "postgres://warehouse/orders",
                &extra,
            )
        })
    });
    let input = merged(vec![lines, more.collect()]);
    let out = run("rate_limit_per_minute = 0\n[data]\nmin_bytes = 100000\n", &input);
    let got = render(&out);
    let ids: std::collections::BTreeSet<_> = out.findings.iter().map(|f| f.finding_id.as_str()).collect();
    assert_eq!(ids.len(), 1, "{got}");
    assert!(out.findings.iter().all(|f| f.ts <= 2941 * 60_000), "nothing after the first hour: {got}");
}

/// Two days and an hour of `d1` writing to its lake once a minute, heavy-tailed and bursty at both time
/// scales: 25 KB to 35 KB a write, five times that one minute in eight and twenty times one in
/// thirty-three; a quarter-hour's writes four times larger one quarter in seven and ten times one in
/// thirty-three; times `level(minute)`. With `upload` bytes a minute sent to a paste endpoint from
/// minute `from` on.
fn bursty_writer(upload: i64, from: i64, level: impl Fn(i64) -> i64) -> String {
    let writes = (0..2940).map(|m| {
        let span = match (m / 16 * 7919) % 100 {
            0..=2 => 10,
            3..=16 => 4,
            _ => 1,
        };
        let minute = match (m * 7907) % 100 {
            0..=2 => 20,
            3..=14 => 5,
            _ => 1,
        };
        let bytes = (25_000 + (m * 37) % 11 * 1_000) * span * minute * level(m);
        let extra = format!(r#","agent_role":"data","bytes_written":{bytes}"#);
        ev(&format!("w{m}"), m * 60_000 + 30_000, "d1", "file.write", "s3://lake/exports", &extra)
    });
    let uploads = (from..2940).filter(|_| upload > 0).map(|m| {
        let extra = format!(r#","agent_role":"data","bytes_written":{upload}"#);
        ev(&format!("x{m}"), m * 60_000 + 45_000, "d1", "api.call", "https://paste.example/upload", &extra)
    });
    merged(vec![writes.collect(), uploads.collect()])
}

#[test]
fn a_trickle_under_a_bursty_writers_usual_high_piles_up_as_bytes() {
    // The last two hours, d1 also sends a megabyte a minute to a paste endpoint. Its own minutes reach
    // 5 MB and its quarter-hours 40 MB, with a tail heavy enough that no window and no span of the
    // uploads is surprising, and none adds to the cumulative surprise. But most of its quarter-hours
    // now carry more than its usual high, and the bytes beyond it pile up: 28 MB within 80 minutes,
    // sixteen times how far its own busy quarter-hours go beyond that high. (Scope drift, which would
    // name the new endpoint, is off: this is about the bytes.)
    let config = "rate_limit_per_minute = 0\n[scope]\nenabled = false\n";
    let input = bursty_writer(1_000_000, 2820, |_| 1);
    check(
        config,
        &input,
        "data_spike medium d1 @173760000 [w2895,x2895] d1 wrote or sent 28.0 MB beyond its usual high of 11.9 MB per 16 min over 80 min (5 spans of 16 min): 16 times the 1.7 MB its spans above that high usually carry beyond it",
    );
    let out = run(config, &input);
    let e = &out.findings[0].evidence;
    assert_eq!((e["detector"].as_str(), e["spans"].as_i64()), (Some("excess"), Some(5)));
    assert_eq!(out.findings[0].window_start, 2816 * 60_000, "the run began in the span the trickle began in");
    // A run survives a snapshot: stopped half-way through it (minute 2870) and resumed in a fresh
    // engine, the same finding.
    let cfg: DetectConfig = toml::from_str(config).unwrap();
    let lines: Vec<&str> = input.lines().collect();
    let events: Vec<_> = decoded(lines.iter().copied());
    let half = events.iter().position(|e| e.ts_ms >= 2870 * 60_000).unwrap();
    let mut first = Engine::new(&cfg).unwrap();
    let mut resumed = Output::default();
    first.process(&events[..half], &mut resumed);
    let snap = serde_json::to_string(&first.snapshot()).unwrap();
    assert!(snap.contains(r#""excess":{"#), "the run is in the snapshot");
    let mut second = Engine::new(&cfg).unwrap();
    second.restore(serde_json::from_str(&snap).unwrap());
    second.process(&events[half..], &mut resumed);
    second.finish(&mut resumed);
    assert_eq!(resumed.findings, out.findings);
    // The writer alone raises nothing, and without the excess detector neither does the trickle.
    check(config, &bursty_writer(0, 2820, |_| 1), "");
    check(&format!("{config}[slow]\nexcess = false\n"), &input, "");
}

#[test]
fn an_excess_run_reports_a_new_level_once_and_the_learned_level_ends_it() {
    // A bursty writer whose writes are eight times larger for good from minute 2400: the new level's
    // spans pile up beyond the old high and are reported, once; by then the baseline has learned the
    // level (robustly, a span at a time), the run drains, and the six hours that follow raise nothing.
    let config = "rate_limit_per_minute = 0\n[scope]\nenabled = false\n";
    let out = run(config, &bursty_writer(0, 0, |m| if m >= 2400 { 8 } else { 1 }));
    let got = render(&out);
    assert_eq!(out.findings.len(), 1, "{got}");
    let f = &out.findings[0];
    assert_eq!(f.evidence["detector"], "excess", "{got}");
    assert!(f.ts < 2600 * 60_000, "{got}");
}

#[test]
fn an_excess_run_is_the_same_in_any_order_within_the_tolerance_and_any_batch_split() {
    let cfg: DetectConfig = toml::from_str("rate_limit_per_minute = 0\n[scope]\nenabled = false\n").unwrap();
    let lines: Vec<String> = bursty_writer(1_000_000, 2820, |_| 1).lines().map(str::to_owned).collect();
    let want = final_findings(&run_batches(&cfg, &lines, &[]));
    assert_eq!(want.len(), 1, "{want:?}");
    let lateness_ms = cfg.lateness_seconds as i64 * 1000;
    let mut rng = Mix(5);
    for round in 0..5 {
        let shuffled = delayed(&lines, lateness_ms, &mut rng);
        let splits = cut_points(&mut rng, 8, shuffled.len());
        assert_eq!(final_findings(&run_batches(&cfg, &shuffled, &splits)), want, "round {round}");
    }
}

#[test]
fn a_window_beyond_a_ceiling_the_agent_kept_reaching_is_a_low_finding() {
    // Two days of windows of 32 to 48 MB, then one of 60 MB: 1.4 times the most of any window, a most
    // that thousands of windows came close to. The tail, whose bins are 19% wide, puts it at p = 9.5e-4,
    // far from the data detector's 1e-5; beyond a ceiling, that is news.
    let config = "rate_limit_per_minute = 0\n[data]\nmin_bytes = 100000\n";
    let at = |factor: i64| warehouse_reads("x", |m| if m == 2900 { factor } else { 100 }).join("\n");
    check(
        config,
        &at(150),
        "data_spike low d1 @174060000 [x2900-0,x2900-1,x2900-2,x2900-3] d1 moved 60.0 MB in 60s, beyond its \
         ceiling: the most in a window lately was 42.0 MB, and 2113 windows came within 41% of it (1.4x it; \
         p = 9.5e-4)",
    );
    let out = run(config, &at(150));
    let e = &out.findings[0].evidence;
    let ceiling = e["ceiling"].as_f64().unwrap();
    assert!((42e6..42e6 * 1.0007).contains(&ceiling), "the most, to within 0.07% above: {ceiling}");
    assert_eq!(
        (&e["detector"], &e["ceiling_ratio"]),
        (&serde_json::json!("ceiling"), &serde_json::json!(1.428))
    );
    // Under the data detector's own floor (1.5 times the usual high of 39.9 MB) it is nothing.
    check(config, &at(130), "");
    // A most that few windows came near is a peak, not a ceiling; and the detector can be turned off.
    check(&format!("{config}[ceiling]\nmin_windows = 5000.0\n"), &at(150), "");
    check(&format!("{config}[ceiling]\nenabled = false\n"), &at(150), "");
}

#[test]
fn only_a_window_beyond_the_recent_most_breaks_the_ceiling() {
    // Any window in the tail counts here (p_value 0.9, one window near the most is a ceiling), so what
    // is found is what goes beyond the most: 72 MB at minute 800; 68 MB at 1000 is under it; 74 MB at
    // 1500 is beyond it. (Each is at least 1.5 times the usual high of 39.9 MB, the data floor.)
    let config = "rate_limit_per_minute = 0\n[data]\nmin_bytes = 100000\n[ceiling]\np_value = 0.9\nmin_windows = 1.0\n";
    let lines = warehouse_reads("x", |m| match m {
        800 => 180,
        1000 => 170,
        1500 => 185,
        _ => 100,
    });
    let out = run(config, &lines.join("\n"));
    let found: Vec<(i64, &str)> = out
        .findings
        .iter()
        .map(|f| (f.ts / 60_000 - 1, f.evidence.get("detector").and_then(|d| d.as_str()).unwrap_or("")))
        .collect();
    assert_eq!(found, [(800, "ceiling"), (1500, "ceiling")], "{}", render(&out));
}

/// The key tables' decay looked up from a table is `powf`'s to the bit, inside the table and past it,
/// for the default memories and odd ones.
#[test]
fn key_decay_looked_up_is_powf_to_the_bit() {
    for memory in [1u64, 2, 7, 200, 5_000, 50_000, u64::from(u32::MAX)] {
        let decay = crate::config::Decay::new(memory);
        let base = 1.0 - 1.0 / memory as f64;
        for n in (0..600u32).chain([1_000, 65_535, u32::MAX]) {
            let want = base.powf(f64::from(n));
            assert_eq!(decay.over(n).to_bits(), want.to_bits(), "memory {memory}, n {n}");
        }
    }
}

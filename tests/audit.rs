//! `vigil audit`: the least-privilege review, from an archive written by `vigil run`.

mod common;

use std::fs;

fn ev(id: &str, ts: &str, agent: &str, resource: &str, extra: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","ts":"{ts}","agent_id":"{agent}","action":"data.read","resource":"{resource}"{extra}}}"#
    )
}

const CONFIG: &str = r#"
[detect]
rate_limit_per_minute = 0

[[detect.policy]]
name = "support"
roles = ["support"]
resources = ["postgres://support/*", "https://api.zendesk.com/**"]
scopes = ["tickets:*"]
"#;

#[test]
fn the_review_lists_unused_undeclared_shared_unowned_and_human_backed() {
    let dir = common::scratch();
    let input = dir.path().join("events.ndjson");
    let lines = [
        ev(
            "a",
            "2026-03-02T10:00:00Z",
            "s1",
            "postgres://support/tickets",
            r#","agent_role":"support","scope":"tickets:read","credential_id":"k1","principal":"ana@example.com""#,
        ),
        ev(
            "b",
            "2026-03-02T10:01:00Z",
            "s2",
            "postgres://hr/salaries",
            r#","agent_role":"support","credential_id":"k1""#,
        ),
        ev("c", "2026-03-02T10:02:00Z", "x1", "s3://anything/at,all", ""),
        // Before the reviewed period: not counted.
        ev(
            "d",
            "2026-02-01T10:00:00Z",
            "s1",
            "https://api.zendesk.com/v2/tickets",
            r#","agent_role":"support""#,
        ),
    ];
    fs::write(&input, lines.join("\n") + "\n").unwrap();
    let config = dir.path().join("vigil.toml");
    fs::write(&config, CONFIG).unwrap();
    let archive = dir.path().join("archive");
    common::run_json(&input, &archive, Some(&config));

    let audit_args = |extra: &[&str]| {
        let out = common::ok(
            common::vigil()
                .arg("audit")
                .arg("--archive")
                .arg(&archive)
                .arg("--config")
                .arg(&config)
                .args(extra)
                .output()
                .unwrap(),
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let audit = |format: &str| audit_args(&["--since", "2026-03-01T00:00:00Z", "--format", format]);
    let review: serde_json::Value = serde_json::from_str(&audit("json")).unwrap();
    assert_eq!(review["scanned"]["events"], 3, "{review:#}");
    assert_eq!(review["agents"], 3);
    assert_eq!(review["agents_without_policy"], 1);
    assert_eq!(review["shared_credentials"], 1);
    assert_eq!(review["agents_acting_for_humans"], 1);
    assert_eq!(review["unrestricted"], serde_json::json!([["support", "action"]]));
    let items: Vec<String> = review["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            format!(
                "{} {} {} {} {}",
                i["agent_id"].as_str().unwrap(),
                i["check"].as_str().unwrap(),
                i["dimension"].as_str().unwrap_or("-"),
                i["value"].as_str().unwrap_or("-"),
                i["detail"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        items,
        [
            "s1 unused_allowed resource https://api.zendesk.com/** never used by any agent the policy covers (revoke candidate)",
            "s1 shared_credential credential k1 s2",
            "s1 acts_for_human principal ana@example.com ",
            // s1 used these two: not revoke candidates for the role's policy.
            "s2 unused_allowed resource postgres://support/* never used; 1 other agent(s) of the policy did",
            "s2 unused_allowed resource https://api.zendesk.com/** never used by any agent the policy covers (revoke candidate)",
            "s2 unused_allowed scope tickets:* never used; 1 other agent(s) of the policy did",
            "s2 used_undeclared resource postgres://hr/salaries 1 uses",
            "s2 shared_credential credential k1 s1",
            "x1 no_policy - - 1 events",
        ],
        "{review:#}"
    );

    // CSV: a header, the policy-level row, one row per item; a value with a comma is quoted.
    let csv = audit("csv");
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "agent_id,agent_role,check,policy,dimension,value,detail");
    assert_eq!(rows[1], ",,unrestricted,support,action,,allows any value");
    assert_eq!(rows.len(), 2 + items.len());
    assert!(rows.contains(&"s2,support,used_undeclared,,resource,postgres://hr/salaries,1 uses"), "{csv}");

    // The table names the period and the totals.
    let table = audit("table");
    assert!(table.contains("3 events from 3 agents"), "{table}");
    assert!(table.contains("1 agents without a policy"), "{table}");

    // The whole archive when no period is given: the February event makes zendesk used by s1.
    let all: serde_json::Value = serde_json::from_str(&audit_args(&["--format", "json"])).unwrap();
    assert_eq!(all["scanned"]["events"], 4);
    assert_eq!(all["unused_allowed"], 3);
}

#[test]
fn a_folder_that_is_not_an_archive_is_refused() {
    let dir = common::scratch();
    let out = common::vigil().arg("audit").arg("--archive").arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no events/ table"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Issue 18: least privilege from evidence. The policy suggested from a clean first day, with the
/// second day run under it: the agents with policy violations are exactly the ones whose injected
/// incident left what their role did on the first day.
#[test]
fn a_policy_suggested_from_a_clean_day_flags_exactly_the_injected_incidents_of_the_next() {
    let dir = common::scratch();
    let p = |n: &str| dir.path().join(n);
    let sim = |out: &str, start: &str, seed: &str, incidents: &str, labels: Option<&str>| {
        let mut c = common::vigil();
        c.args(["simulate", "--agents", "60", "--duration", "1d", "--rate", "3", "--start", start])
            .args(["--seed", seed, "--incidents", incidents, "--out"])
            .arg(p(out));
        if let Some(l) = labels {
            c.arg("--labels").arg(p(l));
        }
        common::ok(c.output().unwrap());
    };
    sim("day1.ndjson", "2026-01-05T00:00:00Z", "5", "0", None);
    sim("day2.ndjson", "2026-01-06T00:00:00Z", "6", "8", Some("labels.ndjson"));
    common::run_json(&p("day1.ndjson"), &p("a1"), None);
    // `vigil policy suggest --archive ARCHIVE FLAG FILE`, which must succeed.
    let suggest = |archive: &str, flag: &str, file: &str| {
        common::ok(
            common::vigil()
                .args(["policy", "suggest", "--archive"])
                .arg(p(archive))
                .arg(flag)
                .arg(p(file))
                .output()
                .unwrap(),
        )
    };

    let out = suggest("a1", "--out", "policy.toml");
    assert!(String::from_utf8_lossy(&out.stderr).contains("review it"), "{out:?}");
    let text = fs::read_to_string(p("policy.toml")).unwrap();
    // One policy per role, entries with their evidence, resources generalised.
    assert_eq!(text.matches("[[detect.policy]]").count(), 5, "{text}");
    assert!(text.contains("roles = [\"coding\"]") && text.contains("\"file:///repo/src/**\","), "{text}");
    assert!(text.contains(" events, ") && text.contains(" agents, 2026-01-05T"), "{text}");

    // Grants to what the config calls sensitive are marked for the reviewer.
    fs::write(p("sensitive.toml"), "[detect]\nsensitive_resources = [\"file:///repo/**\"]\n").unwrap();
    let out = suggest("a1", "--config", "sensitive.toml");
    let marked = String::from_utf8_lossy(&out.stdout);
    let line = marked.lines().find(|l| l.contains("\"file:///repo/src/**\",")).expect("the repo grant");
    assert!(line.ends_with("<- SENSITIVE"), "{line}");
    assert!(!marked.lines().any(|l| l.contains("mcp://github") && l.contains("SENSITIVE")), "{marked}");
    // The suggested file loads as it is, and judges the second day.
    common::ok(common::vigil().arg("check-config").arg(p("policy.toml")).output().unwrap());
    let findings = p("f2.ndjson");
    let out = common::ok(
        common::vigil()
            .args(["run", "--json", "--input"])
            .arg(p("day2.ndjson"))
            .arg("--archive")
            .arg(p("a2"))
            .args(["--config"])
            .arg(p("policy.toml"))
            .arg("--findings")
            .arg(&findings)
            .output()
            .unwrap(),
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["balanced"], true, "{summary}");
    let flagged: std::collections::BTreeSet<String> = lines(&findings)
        .iter()
        .filter(|f| f["kind"] == "policy_violation")
        .map(|f| f["agent_id"].as_str().unwrap().to_owned())
        .collect();
    // What each role did on day 1, to know which incidents leave it: a runaway loop repeats `tool.call`,
    // new to a role that never called a tool; a stolen credential and a swapped model act in scope.
    let mut actions: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for l in fs::read_to_string(p("day1.ndjson")).unwrap().lines() {
        let e: serde_json::Value = serde_json::from_str(l).unwrap();
        if e["outcome"].as_str().unwrap_or("success") == "success" {
            let role = e["agent_role"].as_str().unwrap().to_owned();
            actions.entry(role).or_default().insert(e["action"].as_str().unwrap().to_owned());
        }
    }
    let labels = lines(&p("labels.ndjson"));
    assert_eq!(labels.len(), 8, "{labels:?}");
    let expected: std::collections::BTreeSet<String> = labels
        .iter()
        .filter(|l| match l["kind"].as_str().unwrap() {
            "shared_credential" | "model_swap" => false,
            "runaway_loop" => {
                let agent = l["agent_id"].as_str().unwrap();
                let role = agent.split("-agent-").next().unwrap();
                !actions[role].contains("tool.call")
            }
            _ => true,
        })
        .map(|l| l["agent_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(expected.len() >= 5, "{expected:?}");
    assert_eq!(flagged, expected, "policy violations on day 2 against the injected incidents: {labels:?}");

    // Against the policy it suggested, day 1 has nothing to revoke and nothing ungranted.
    let diff = suggest("a1", "--against", "policy.toml");
    let said = String::from_utf8_lossy(&diff.stdout);
    assert!(
        said.contains(
            "0 grants never used (revoke candidates), 0 uses never granted, 0 agents without a policy"
        ),
        "{said}"
    );
    // Day 2 against it: the incidents' uses are listed as never granted.
    let diff = suggest("a2", "--against", "policy.toml");
    let said = String::from_utf8_lossy(&diff.stdout);
    assert!(said.lines().any(|l| l.starts_with("+ agent ") && l.contains("never granted")), "{said}");
}

/// Issue 18: a run where no policy covers an agent says so once, loudly, and counts those agents; the
/// allow-list checks are off for them, which nobody should learn from silence.
#[test]
fn agents_no_policy_covers_are_counted_and_said_once() {
    let dir = common::scratch();
    let input = dir.path().join("events.ndjson");
    let lines: Vec<String> = (0..30)
        .map(|i| {
            ev(
                &format!("e{i}"),
                &format!("2026-03-02T10:{:02}:00Z", i),
                &format!("agent-{}", i % 3),
                "postgres://x/y",
                "",
            )
        })
        .collect();
    fs::write(&input, lines.join("\n") + "\n").unwrap();
    let out = common::ok(
        common::vigil()
            .args(["run", "--json", "--input"])
            .arg(&input)
            .arg("--archive")
            .arg(dir.path().join("a"))
            .output()
            .unwrap(),
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["agents_without_policy"], 3, "{summary}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(said.matches("no policy covers agent").count(), 1, "once: {said}");
    assert!(said.contains("allow-list checks are OFF"), "{said}");
    // The text summary repeats it where a person looks.
    let out = common::ok(
        common::vigil()
            .args(["run", "--input"])
            .arg(&input)
            .arg("--archive")
            .arg(dir.path().join("b"))
            .output()
            .unwrap(),
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("WARNING: 3 agents are covered by no policy"),
        "{out:?}"
    );
    // Covered by a policy: nothing said.
    let cfg = dir.path().join("vigil.toml");
    fs::write(&cfg, "[[detect.policy]]\nname = \"all\"\nagents = [\"agent-*\"]\n").unwrap();
    let out = common::ok(
        common::vigil()
            .args(["run", "--json", "--input"])
            .arg(&input)
            .arg("--archive")
            .arg(dir.path().join("c"))
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap(),
    );
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["agents_without_policy"], 0, "{summary}");
    assert!(!String::from_utf8_lossy(&out.stderr).contains("no policy covers"), "{out:?}");
}

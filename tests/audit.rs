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
            "s1 unused_allowed resource https://api.zendesk.com/** never used",
            "s1 shared_credential credential k1 s2",
            "s1 acts_for_human principal ana@example.com ",
            "s2 unused_allowed resource postgres://support/* never used",
            "s2 unused_allowed resource https://api.zendesk.com/** never used",
            "s2 unused_allowed scope tickets:* never used",
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

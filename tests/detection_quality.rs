//! Detection quality on simulated fleets: 500 agents over 7 days, incidents of every kind at three
//! strengths, several seeds. The bar (issues 4 and 14): recall at least 0.95 per incident kind over its
//! medium and strong incidents (weak ones are reported), at most 1 false finding of severity high or
//! above per 100 agent-days, a runaway loop found within two windows of its start, a slow exfiltration
//! within an hour, a slow scope creep within a day.

mod common;

use std::collections::BTreeMap;

use vigil::cli::demo_config;
use vigil::eval::{Judge, Report, score};
use vigil::simulate::{SimConfig, simulate};

const AGENTS: usize = 500;
const DAYS: i64 = 7;

/// Simulates one seed and scores the demo config's detection against its labels, in process.
fn evaluate(seed: u64) -> Report {
    let cfg = demo_config(std::path::Path::new("."));
    let sim = SimConfig {
        agents: AGENTS,
        duration_ms: DAYS * 86_400_000,
        start_ms: 1_767_571_200_000, // 2026-01-05, a Monday
        seed,
        rate: 10.0,
        incidents: 40,
        bad_model: false,
    };
    let mut judge = Judge::new(&cfg).unwrap();
    let mut batch: Vec<String> = Vec::with_capacity(4096);
    let flush = |judge: &mut Judge, batch: &mut Vec<String>| {
        judge.push(batch).unwrap();
        batch.clear();
    };
    let labels = simulate(
        &sim,
        |line| {
            batch.push(line.to_owned());
            if batch.len() == 4096 {
                flush(&mut judge, &mut batch);
            }
            Ok(())
        },
        |_| {},
    )
    .unwrap();
    flush(&mut judge, &mut batch);
    let detected = judge.finish().unwrap();
    assert_eq!(detected.invalid, 0, "simulated events are valid");
    assert_eq!(detected.agents, AGENTS);
    let agent_days = AGENTS as f64 * DAYS as f64;
    score(&detected.findings, &labels, agent_days, 600_000).unwrap()
}

#[test]
fn a_week_of_500_agents_meets_the_bar_on_three_seeds() {
    let window_s = demo_config(std::path::Path::new(".")).detect.window_seconds as f64;
    // (kind, strength) -> (incidents, detected, worst seconds to detect)
    let mut per_kind: BTreeMap<(&str, &str), (usize, usize, f64)> = BTreeMap::new();
    let (mut false_high, mut agent_days) = (0usize, 0.0);
    for seed in [1, 2, 3] {
        let r = evaluate(seed);
        eprintln!("seed {seed}:\n{}", vigil::eval::render(&r));
        for i in &r.incidents {
            for s in &i.by_strength {
                let e = per_kind.entry((i.kind, s.strength)).or_default();
                e.0 += s.recall.incidents;
                e.1 += s.recall.detected;
                e.2 = e.2.max(s.recall.max_seconds_to_detect.unwrap_or(0.0));
            }
        }
        false_high += r.false_high;
        agent_days += r.agent_days;
    }
    let kinds: std::collections::BTreeSet<&str> = per_kind.keys().map(|(k, _)| *k).collect();
    assert_eq!(kinds.len(), 10, "every incident kind was injected: {per_kind:?}");
    let mut worst = BTreeMap::new();
    for kind in kinds {
        let at = |s: &str| per_kind.get(&(kind, s)).copied().unwrap_or_default();
        let (weak, medium, strong) = (at("weak"), at("medium"), at("strong"));
        let (n, found) = (medium.0 + strong.0, medium.1 + strong.1);
        assert!(medium.0 >= 6 && strong.0 >= 3 && weak.0 >= 3, "{kind}: too few incidents: {per_kind:?}");
        let recall = found as f64 / n as f64;
        eprintln!(
            "{kind}: recall {recall:.3} over medium and strong ({found} of {n}); weak {} of {}",
            weak.1, weak.0
        );
        assert!(recall >= 0.95, "{kind}: recall {recall:.3} ({found} of {n})");
        worst.insert(kind, medium.2.max(strong.2));
    }
    let per100 = false_high as f64 * 100.0 / agent_days;
    assert!(
        per100 <= 1.0,
        "{false_high} false high findings in {agent_days} agent-days: {per100:.2} per 100"
    );
    let worst_loop = worst["runaway_loop"];
    assert!(
        worst_loop <= 2.0 * window_s,
        "a runaway loop took {worst_loop}s to find (two windows: {}s)",
        2.0 * window_s
    );
    let worst_exfil = worst["slow_exfiltration"];
    assert!(worst_exfil <= 3600.0, "a slow exfiltration took {worst_exfil}s to find");
    assert!(worst["scope_creep"] <= 86_400.0, "a scope creep took {}s to find", worst["scope_creep"]);
}

#[test]
fn vigil_eval_scores_files_from_vigil_simulate() {
    let dir = common::scratch();
    let events = dir.path().join("fleet.ndjson");
    let labels = dir.path().join("labels.ndjson");
    common::ok(
        common::vigil()
            .args([
                "simulate",
                "--agents",
                "60",
                "--duration",
                "1d",
                "--rate",
                "3",
                "--incidents",
                "8",
                "--seed",
                "5",
            ])
            .arg("--out")
            .arg(&events)
            .arg("--labels")
            .arg(&labels)
            .output()
            .unwrap(),
    );
    let eval = |extra: &[&str]| {
        let mut cmd = common::vigil();
        cmd.arg("eval").arg("--events").arg(&events).arg("--labels").arg(&labels).args(extra);
        cmd.output().unwrap()
    };
    let out = common::ok(eval(&["--json"]));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let incidents = report["incidents"].as_array().unwrap();
    assert_eq!(incidents.len(), 10, "a row for every kind");
    let total: u64 = incidents.iter().map(|i| i["incidents"].as_u64().unwrap()).sum();
    assert_eq!(total, 8, "{report:#}");
    let detected: u64 = incidents.iter().map(|i| i["detected"].as_u64().unwrap()).sum();
    assert!(detected >= 7, "{report:#}");
    assert!((report["agent_days"].as_f64().unwrap() - 60.0).abs() < 1.0, "{report:#}");
    // The table form names every incident kind.
    let out = common::ok(eval(&[]));
    let text = String::from_utf8_lossy(&out.stdout);
    for kind in ["runaway_loop", "data_exfiltration", "scope_creep", "model_swap", "per 100 agent-days"] {
        assert!(text.contains(kind), "{kind} missing from:\n{text}");
    }
    // Kinds with no incident show `-` for recall, not a perfect 1.000 (issue 18, item 4).
    let all = std::fs::read_to_string(&labels).unwrap();
    let first = all.lines().next().unwrap();
    let kind = serde_json::from_str::<serde_json::Value>(first).unwrap()["kind"].as_str().unwrap().to_owned();
    std::fs::write(&labels, format!("{first}\n")).unwrap();
    let out = common::ok(eval(&[]));
    let text = String::from_utf8_lossy(&out.stdout);
    for row in text.lines().take_while(|l| !l.trim().is_empty()).skip(1) {
        let recall = row.split_whitespace().nth(3).unwrap();
        if row.starts_with(&format!("{kind} ")) {
            assert_ne!(recall, "-", "{text}");
        } else {
            assert_eq!(recall, "-", "a kind with no incident: {row}\n{text}");
        }
    }
    let json: serde_json::Value = serde_json::from_slice(&common::ok(eval(&["--json"])).stdout).unwrap();
    assert!(json["incidents"].as_array().unwrap().iter().any(|i| i["recall"].is_null()), "{json}");
    // A labels file that is not one is refused with the line.
    std::fs::write(&labels, "{\"agent_id\":\"a\"}\n").unwrap();
    let out = eval(&[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("labels.ndjson:1: not a label"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

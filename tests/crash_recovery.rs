//! Kill -9 in the middle of a large run, run again: every valid event in the archive exactly once, and
//! no partial Parquet file readable under a final name. Running the same input again adds nothing.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn kill_9_mid_run_then_rerun_leaves_every_event_exactly_once() {
    let dir = scratch();
    let input = dir.path().join("big.ndjson");
    // About 400k events (~190 MB): long enough to be killed mid-run several times.
    let n = simulate(&input, 300, "3h", 120.0, 3, 11);
    assert!(n > 300_000, "{n}");
    let config = dir.path().join("v.toml");
    // Small flushes, so kills land between, during and after commits; parts of each flush go to the
    // writer ahead of it, so kills also land while files opened by parts are half written.
    std::fs::write(&config, "[archive]\nflush_rows = 15000\npart_rows = 2500\n").unwrap();
    let archive = dir.path().join("archive");

    // Kill at growing delays; each restart resumes from the last commit.
    let mut kills = 0;
    // Short delays: each restart resumes where the last commit left off, so every run has less to do.
    for delay_ms in [90u64, 150, 60, 200, 120, 80, 170, 100] {
        let mut cmd = vigil();
        cmd.args(["run", "--json", "--input"])
            .arg(&input)
            .arg("--archive")
            .arg(&archive)
            .arg("--config")
            .arg(&config);
        kills += u32::from(kill_after(cmd, Duration::from_millis(delay_ms)));
        // Whatever the moment, every file under a final name opens and nothing is counted twice.
        let files = archive_py("open-all", &archive, &[]);
        let counts = archive_py("event-counts", &archive, &[]);
        assert_eq!(counts["rows"], counts["distinct"], "after a kill at {delay_ms} ms: {counts} {files}");
    }
    assert!(kills >= 5, "the run finished too fast to be killed mid-way ({kills} kills)");

    let summary = run_json(&input, &archive, Some(&config));
    assert_eq!(summary["balanced"], true, "{summary}");
    let counts = archive_py("event-counts", &archive, &[]);
    assert_eq!(counts["rows"], n, "{counts}");
    assert_eq!(counts["distinct"], n, "{counts}");
    let files = archive_py("open-all", &archive, &[]);
    assert_eq!(files["tmp"], 0, "recovery removes temporary files: {files}");

    // Detection state travels with each checkpoint, so the killed-and-resumed runs found what one clean
    // run finds: the same finding ids, each at the same final severity.
    let clean = dir.path().join("clean");
    run_json(&input, &clean, Some(&config));
    let findings = |root: &std::path::Path| {
        let rows = archive_py("rows", root, &["findings", "finding_id"]);
        let mut m = std::collections::BTreeMap::new();
        for r in rows["duckdb"].as_array().unwrap() {
            let sev = match r["severity"].as_str().unwrap() {
                "low" => 0,
                "medium" => 1,
                "high" => 2,
                _ => 3,
            };
            let e = m.entry(r["finding_id"].as_str().unwrap().to_owned()).or_insert((r["kind"].clone(), sev));
            e.1 = e.1.max(sev);
        }
        m
    };
    let want = findings(&clean);
    assert!(want.len() >= 3, "the fleet's incidents give findings: {want:?}");
    assert_eq!(findings(&archive), want);

    // The same input again: everything is already archived, nothing is added.
    let again = run_json(&input, &archive, Some(&config));
    assert_eq!(again["skipped"], n);
    assert_eq!(again["files"], 0);
    assert_eq!(archive_py("event-counts", &archive, &[])["rows"], n);
    assert_eq!(archive_py("open-all", &archive, &[])["files"], files["files"]);
}

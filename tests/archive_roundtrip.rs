//! Events → `vigil run` → Parquet → read back by DuckDB and by pyarrow: every field equal.

mod common;

use std::fmt::Write as _;

use common::*;
use serde_json::Value;

/// Hand-written events that exercise every field, escapes, Unicode, both `ts` forms and unknown fields.
const EXTRA: &str = r#"{"event_id":"x-1","ts":"2026-01-05T10:15:00.123+02:00","agent_id":"agent \"quoted\" ü","action":"x-custom.verb","resource":"s3://bucket/ключ/😀.csv","scope":"s3:read","outcome":"denied","bytes_read":0,"bytes_written":18446744073709551615,"records":7,"session_id":"s-1","agent_role":"data","principal":"ann@example.com","credential_id":"key_abc","model":"m-1","model_provider":"p-1","input_tokens":10,"output_tokens":20,"cost_usd":0.125,"intent":"line1\nline2\ttab","trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","span_id":"00f067aa0ba902b7","source":"svc","attributes":{"k":[1,{"n":null}]},"unknown_top":true}
{"event_id":"x-2","ts":1767607200000,"agent_id":"a2","action":"api.call","resource":"https://api.example.com/v1/charges"}
"#;

#[test]
fn every_field_survives_the_archive_for_both_readers() {
    let dir = scratch();
    let input = dir.path().join("events.ndjson");
    simulate(&input, 15, "10m", 15.0, 2, 3);
    let mut text = std::fs::read_to_string(&input).unwrap();
    text.push_str(EXTRA);
    std::fs::write(&input, &text).unwrap();
    let archive = dir.path().join("archive");
    let summary = run_json(&input, &archive, None);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(summary["valid"], lines.len() as u64, "{summary}");
    assert_eq!(summary["balanced"], true);

    let rows = archive_py("rows", &archive, &["events", "_position"]);
    for reader in ["duckdb", "pyarrow"] {
        let rows = rows[reader].as_array().unwrap();
        assert_eq!(rows.len(), lines.len(), "{reader}: row count");
        let mut mismatches = String::new();
        for (row, line) in rows.iter().zip(&lines) {
            let ev = vigil_schemas::decode(line.as_bytes(), 1 << 20).unwrap();
            let want = expected_row(&ev);
            for (k, v) in want.as_object().unwrap() {
                let got = if k == "attributes" {
                    row[k].as_str().map_or(Value::Null, |s| serde_json::from_str(s).unwrap())
                } else {
                    row[k].clone()
                };
                if &got != v {
                    let _ = writeln!(mismatches, "{reader} {} {k}: got {got} want {v}", ev.event_id);
                }
            }
            assert_eq!(row["_source"], "events");
            assert_eq!(row["dt"].to_string().trim_matches('"').len(), 10, "{reader}: hive dt column");
        }
        assert!(mismatches.is_empty(), "{mismatches}");
    }
    // Positions are the 1-based line numbers: the way back from a row to the input.
    assert_eq!(rows["duckdb"][lines.len() - 1]["_position"], lines.len() as u64);
}

fn expected_row(ev: &vigil_schemas::Event<'_>) -> Value {
    serde_json::json!({
        "event_id": ev.event_id, "ts": ev.ts_ms, "agent_id": ev.agent_id, "action": ev.action,
        "resource": ev.resource, "scope": ev.scope, "outcome": ev.outcome.as_str(),
        "bytes_read": ev.bytes_read, "bytes_written": ev.bytes_written, "records": ev.records,
        "session_id": ev.session_id, "agent_role": ev.agent_role, "principal": ev.principal,
        "credential_id": ev.credential_id, "model": ev.model, "model_provider": ev.model_provider,
        "input_tokens": ev.input_tokens, "output_tokens": ev.output_tokens, "cost_usd": ev.cost_usd,
        "intent": ev.intent, "trace_id": ev.trace_id, "span_id": ev.span_id, "source": ev.source,
        "attributes": ev.attributes.as_deref().map(|a| serde_json::from_str::<Value>(a).unwrap()),
    })
}

#[test]
fn the_extra_events_land_where_their_time_says() {
    let dir = scratch();
    let input = dir.path().join("extra.ndjson");
    std::fs::write(&input, EXTRA).unwrap();
    let archive = dir.path().join("a");
    run_json(&input, &archive, None);
    // 10:15+02:00 is 08:15 UTC; 1767607200000 is 2026-01-05T10:00Z.
    assert!(archive.join("events/dt=2026-01-05/hour=08/extra-0-1-2.parquet").exists());
    assert!(archive.join("events/dt=2026-01-05/hour=10/extra-0-1-2.parquet").exists());
    let rows = archive_py("rows", &archive, &["events", "_position"]);
    assert_eq!(rows["duckdb"][0]["ts"], 1_767_600_900_123u64);
    assert_eq!(rows["duckdb"][0]["attributes"], r#"{"k":[1,{"n":null}],"unknown_top":true}"#);
}

#[test]
fn files_are_zstd_with_dictionaries_only_where_values_repeat() {
    let dir = scratch();
    let input = dir.path().join("fleet.ndjson");
    // Half an hour (about 4,900 events, one file): files under `zstd_min_rows` (1,000) are Snappy.
    simulate(&input, 10, "30m", 10.0, 0, 1);
    let archive = dir.path().join("a");
    run_json(&input, &archive, None);
    let cols = archive_py("compression", &archive, &["events"]);
    for (name, c) in cols.as_object().unwrap() {
        assert_eq!(c["compression"], "ZSTD", "{name}");
    }
    let has_dict = |c: &str| {
        cols[c]["encodings"].as_array().unwrap().iter().any(|e| e.as_str().unwrap().contains("DICTIONARY"))
    };
    assert!(has_dict("agent_id") && has_dict("action") && has_dict("agent_role"));
    assert!(!has_dict("event_id") && !has_dict("trace_id"));
}

#[test]
fn findings_and_transitions_are_archived_and_match_the_ndjson_output() {
    let dir = scratch();
    let demo = dir.path().join("demo");
    ok(vigil()
        .args(["demo", "--agents", "40", "--duration", "1h", "--rate", "10", "--dir"])
        .arg(&demo)
        .output()
        .unwrap());
    let archive = demo.join("archive");
    let rows = archive_py("rows", &archive, &["findings", "finding_id"]);
    let ndjson: Vec<Value> = std::fs::read_to_string(demo.join("findings.ndjson"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!ndjson.is_empty(), "the demo's incidents produce findings");
    let mut ids: Vec<&str> = ndjson.iter().map(|f| f["finding_id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    for reader in ["duckdb", "pyarrow"] {
        let got: Vec<&str> =
            rows[reader].as_array().unwrap().iter().map(|r| r["finding_id"].as_str().unwrap()).collect();
        assert_eq!(got, ids, "{reader}");
    }
    // Breaker transitions: each one a rule made on findings names them; its action says its mode.
    let control = archive_py("rows", &archive, &["control", "ts"]);
    let rows = control["duckdb"].as_array().unwrap();
    assert!(
        rows.iter().any(|r| r["record"] == "transition"),
        "the demo's incidents trip breakers: {control}"
    );
    for row in rows.iter().filter(|r| r["record"] == "transition") {
        let (action, mode, actor) =
            (row["action"].as_str().unwrap(), row["mode"].as_str().unwrap(), row["actor"].as_str().unwrap());
        assert_eq!(action.ends_with(".warn"), mode == "warn", "{row}");
        assert!(["shadow", "warn", "enforce"].contains(&mode), "{row}");
        if actor.starts_with("rule:") && !["rule:cooldown", "rule:quiet", "rule:fleet_trips"].contains(&actor)
        {
            assert!(!row["finding_ids"].as_array().unwrap().is_empty(), "{row}");
        }
    }
    // The same rows for both readers (rows with the same ts may come in either order).
    let ids = |reader: &str| -> Vec<String> {
        let mut v: Vec<String> = control[reader]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| format!("{}{}", r["record"], r["transition_id"]))
            .collect();
        v.sort();
        v
    };
    assert_eq!(ids("duckdb"), ids("pyarrow"));
}

/// Issue 13, item 2: with `_vigil/` moved aside (as an old error message advised), a rerun treated every
/// archived file of the source as uncommitted and deleted it. Now only a checkpoint may disown a file:
/// without one the run refuses, says why, and the archive is untouched.
#[test]
fn a_missing_checkpoint_never_deletes_archived_history() {
    let dir = scratch();
    let input = dir.path().join("fleet.ndjson");
    let n = simulate(&input, 20, "30m", 5.0, 0, 4);
    let archive = dir.path().join("archive");
    let first = run_json(&input, &archive, None);
    assert_eq!(first["valid"], n, "{first}");
    let files = parquet_files(&archive.join("events"));
    assert!(files > 0);
    let rows = archive_py("event-counts", &archive, &[])["rows"].clone();
    assert_eq!(rows, n);

    std::fs::rename(archive.join("_vigil"), dir.path().join("_vigil.aside")).unwrap();
    let out = vigil()
        .args(["run", "--json", "--input"])
        .arg(&input)
        .arg("--archive")
        .arg(&archive)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a run without the checkpoint must refuse: {out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("but no checkpoint") && said.contains("neither deletes nor duplicates"), "{said}");
    assert_eq!(parquet_files(&archive.join("events")), files, "archived files were deleted");
    assert_eq!(archive_py("event-counts", &archive, &[])["rows"], rows);

    // Put back, the checkpoint says all of it is archived: the rerun skips every line.
    std::fs::remove_dir_all(archive.join("_vigil")).unwrap();
    std::fs::rename(dir.path().join("_vigil.aside"), archive.join("_vigil")).unwrap();
    let again = run_json(&input, &archive, None);
    assert_eq!((again["skipped"].as_u64(), again["valid"].as_u64()), (Some(n), Some(0)), "{again}");
    assert_eq!(archive_py("event-counts", &archive, &[])["rows"], rows);
}

/// Issue 13, item 3: `a/events.ndjson`, then `b/events.ndjson`, then `events.jsonl` into one archive
/// shared the source name `events`: the later runs skipped their first lines as "already archived" and
/// exited 0 (180 of 230 events never archived). Now another input under a used name is refused, and
/// the same input is still resumed.
#[test]
fn different_files_with_the_same_stem_do_not_share_a_checkpoint() {
    let dir = scratch();
    let archive = dir.path().join("archive");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    let (fa, fb) = (a.join("events.ndjson"), b.join("events.ndjson"));
    let na = simulate(&fa, 10, "20m", 3.0, 0, 1);
    let nb = simulate(&fb, 10, "10m", 3.0, 0, 2);
    assert_eq!(run_json(&fa, &archive, None)["valid"], na);
    let out =
        vigil().args(["run", "--json", "--input"]).arg(&fb).arg("--archive").arg(&archive).output().unwrap();
    assert!(!out.status.success(), "another file under the same name must be refused: {out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("source events in this archive was another input"), "{said}");
    assert_eq!(archive_py("event-counts", &archive, &[])["rows"], na, "nothing of b was archived or lost");
    // Under its own name it is archived whole; a rerun of a is still a resume that adds nothing.
    let out = ok(vigil()
        .args(["run", "--json", "--source-name", "events-b", "--input"])
        .arg(&fb)
        .arg("--archive")
        .arg(&archive)
        .output()
        .unwrap());
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["valid"], nb, "{s}");
    let again = run_json(&fa, &archive, None);
    assert_eq!((again["skipped"].as_u64(), again["valid"].as_u64()), (Some(na), Some(0)), "{again}");
    assert_eq!(archive_py("event-counts", &archive, &[])["rows"], na + nb);
}

/// Issue 18: every SQL statement in the README runs on the demo's archive, as a newcomer would paste it
/// after `cargo run --release -- demo`, and returns rows (the demo's bad lines make `dead-letters/`).
#[test]
fn every_sql_block_of_the_readme_runs_on_the_demo_archive() {
    let dir = scratch();
    let out = ok(vigil().args(["demo", "--dir"]).arg(dir.path().join("vigil-demo")).output().unwrap());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("findings: ") && said.contains(" on ") && said.contains("dead-lettered 4"),
        "{said}"
    );
    let readme = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let got = archive_py("readme-sql", dir.path(), &[readme.to_str().unwrap()]);
    let statements = got["statements"].as_array().unwrap();
    assert!(statements.len() >= 6, "{got}");
    for s in statements {
        assert!(s["rows"].as_u64().unwrap() > 0, "no rows on the demo's archive: {}", s["sql"]);
    }
}

/// Issue 13, item 5: the detector state belonged to the source, so a fleet's log split into hourly (or
/// daily) files warmed its baselines up again with every file and lost the findings that need them. A
/// new file in the same archive now starts from the baselines the previous one left: the two halves
/// find what the whole finds.
#[test]
fn baselines_carry_from_one_dated_file_to_the_next_in_the_same_archive() {
    let dir = scratch();
    let all = dir.path().join("all.ndjson");
    simulate(&all, 40, "2h", 2.0, 8, 7);
    let text = std::fs::read_to_string(&all).unwrap();
    let split =
        vigil_schemas::decode(text.lines().next().unwrap().as_bytes(), 1 << 20).unwrap().ts_ms + 3_600_000;
    let split = split - split.rem_euclid(3_600_000);
    let (mut first, mut second) = (String::new(), String::new());
    for line in text.lines() {
        let ts = vigil_schemas::decode(line.as_bytes(), 1 << 20).unwrap().ts_ms;
        let half = if ts < split { &mut first } else { &mut second };
        half.push_str(line);
        half.push('\n');
    }
    let hours = [dir.path().join("2026-01-05T00.ndjson"), dir.path().join("2026-01-05T01.ndjson")];
    std::fs::write(&hours[0], &first).unwrap();
    std::fs::write(&hours[1], &second).unwrap();
    // What one run over the whole log finds, and what two runs over its halves find in one archive.
    let findings = |inputs: &[&std::path::Path], archive: &std::path::Path| {
        let mut found = std::collections::BTreeSet::new();
        let mut said = String::new();
        for (i, input) in inputs.iter().enumerate() {
            let out_file = dir
                .path()
                .join(format!("findings-{}-{i}.ndjson", archive.file_name().unwrap().to_string_lossy()));
            let out = ok(vigil()
                .args(["run", "--json", "--input"])
                .arg(input)
                .arg("--archive")
                .arg(archive)
                .arg("--findings")
                .arg(&out_file)
                .output()
                .unwrap());
            said.push_str(&String::from_utf8_lossy(&out.stderr));
            for line in std::fs::read_to_string(&out_file).unwrap().lines() {
                let f: Value = serde_json::from_str(line).unwrap();
                found.insert((
                    f["kind"].as_str().unwrap().to_owned(),
                    f["agent_id"].as_str().unwrap().to_owned(),
                    f["window_start"].as_str().unwrap().to_owned(),
                ));
            }
        }
        (found, said)
    };
    let (whole, _) = findings(&[&all], &dir.path().join("whole"));
    let (halves, said) = findings(&[&hours[0], &hours[1]], &dir.path().join("halves"));
    assert!(
        whole.iter().any(|f| f.0 == "volume_spike" || f.0 == "data_spike" || f.0 == "scope_drift"),
        "{whole:?}"
    );
    assert_eq!(halves, whole, "the second hour judged without the first hour's baselines");
    assert!(
        said.contains("2026-01-05T01 starts from the baselines 2026-01-05T00 left (40 agents)"),
        "{said}"
    );
}

/// Rows handed to the writer in parts before their flush (`part_rows`) land in the same files, with the
/// same rows, as rows written all at the flush; nothing temporary is left behind, and both readers
/// read every file.
#[test]
fn rows_written_in_parts_before_their_flush_are_the_rows_written_at_it() {
    let dir = scratch();
    let input = dir.path().join("events.ndjson");
    let n = simulate(&input, 20, "3h", 4.0, 2, 11);
    let mut relative_files = Vec::new();
    let mut rows_by_reader = Vec::new();
    for (label, part_rows) in [("whole", 0), ("parts", 150)] {
        let config = dir.path().join(format!("{label}.toml"));
        // Batches of about a hundred events, a part every second batch, a flush every 3,000 rows: files
        // opened by parts take more rows at their flush, and hours too thin for a part are written whole.
        let toml =
            format!("[input]\nbatch_bytes = 50000\n[archive]\nflush_rows = 3000\npart_rows = {part_rows}\n");
        std::fs::write(&config, toml).unwrap();
        let archive = dir.path().join(label);
        let summary = run_json(&input, &archive, Some(&config));
        assert_eq!(
            (summary["valid"].as_u64(), &summary["balanced"]),
            (Some(n), &Value::Bool(true)),
            "{summary}"
        );
        let opened = archive_py("open-all", &archive, &[]);
        assert_eq!(opened["tmp"], 0, "{label}: {opened}");
        let mut files: Vec<String> = walk(&archive, &archive);
        files.sort();
        relative_files.push(files);
        let rows = archive_py("rows", &archive, &["events", "_position"]);
        for reader in ["duckdb", "pyarrow"] {
            assert_eq!(rows[reader].as_array().map(Vec::len), Some(n as usize), "{label}, {reader}");
        }
        rows_by_reader.push(rows);
    }
    assert!(relative_files[0].len() > 10, "{:?}", relative_files[0]);
    assert_eq!(relative_files[0], relative_files[1], "the same files under the same names");
    // `_ingested_at` is the time of each run's flush; every other column is the same, for each reader.
    for reader in ["duckdb", "pyarrow"] {
        let (whole, parts) =
            (rows_by_reader[0][reader].as_array().unwrap(), rows_by_reader[1][reader].as_array().unwrap());
        let differ: Vec<_> = whole
            .iter()
            .zip(parts)
            .filter(|(a, b)| {
                let (mut a, mut b) = ((*a).clone(), (*b).clone());
                a.as_object_mut().unwrap().remove("_ingested_at");
                b.as_object_mut().unwrap().remove("_ingested_at");
                a != b
            })
            .map(|(a, _)| a["_position"].clone())
            .collect();
        assert!(
            differ.is_empty(),
            "{reader}: {} rows differ, at positions {:?}",
            differ.len(),
            &differ[..differ.len().min(5)]
        );
    }
}

/// Every Parquet file under `dir`, relative to `root`.
fn walk(root: &std::path::Path, dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(root, &p));
        } else if p.extension().is_some_and(|x| x == "parquet") {
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
    out
}

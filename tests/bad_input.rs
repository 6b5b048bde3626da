//! A corpus of bad input: nothing crashes, nothing is lost, every reason is right.

mod common;

use std::collections::BTreeMap;

use common::*;

const GOOD: &str = r#"{"event_id":"ID","ts":"2026-01-05T09:00:00Z","agent_id":"a1","action":"data.read","resource":"postgres://crm/t"}"#;

fn good(id: &str) -> Vec<u8> {
    GOOD.replace("ID", id).into_bytes()
}

/// The corpus: (line bytes, expected outcome: "ok", "blank", or a dead-letter reason code).
fn corpus() -> Vec<(Vec<u8>, &'static str)> {
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend(good("bom"));
    let mut crlf = good("crlf");
    crlf.push(b'\r');
    let mut bad_utf8 = good("utf8");
    bad_utf8[30] = 0xC3;
    bad_utf8[31] = 0x28;
    let huge = format!(r#"{{"event_id":"big","pad":"{}"}}"#, "x".repeat(10 << 20)).into_bytes();
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes();
    let deep_obj = format!("{}1{}", r#"{"a":"#.repeat(50_000), "}".repeat(50_000)).into_bytes();
    vec![
        (good("first"), "ok"),
        (GOOD.as_bytes()[..40].to_vec(), "not_json"),
        (bad_utf8, "not_utf8"),
        (huge, "too_large"),
        (GOOD.replace(r#""a1""#, "12").replace("ID", "wt").into_bytes(), "wrong_type"),
        (GOOD.replace(r#","agent_id":"a1""#, "").replace("ID", "mf").into_bytes(), "missing_field"),
        (
            GOOD.replace("2026-01-05T09:00:00Z", "05/01/2026").replace("ID", "ts").into_bytes(),
            "bad_timestamp",
        ),
        (bom, "ok"),
        (crlf, "ok"),
        (b"".to_vec(), "blank"),
        (b"   \t ".to_vec(), "blank"),
        (deep, "not_object"),
        (deep_obj, "missing_field"),
        (b"null".to_vec(), "not_object"),
        (good("first"), "duplicate_event_id"),
        (
            GOOD.replace("ID", "dupfield").replace(r#""action""#, r#""agent_id":"z","action""#).into_bytes(),
            "duplicate_field",
        ),
        (GOOD.replace("ID", "neg").replace("}", r#","bytes_read":-1}"#).into_bytes(), "invalid_value"),
        (
            GOOD.replace("2026-01-05T09:00:00Z", "2999-01-01T00:00:00Z").replace("ID", "later").into_bytes(),
            "future_timestamp",
        ),
        // Issue 13, item 17: epoch seconds were taken as milliseconds (a 1970 event). Refused live.
        (
            GOOD.replace(r#""2026-01-05T09:00:00Z""#, "1767603600").replace("ID", "secs").into_bytes(),
            "bad_timestamp",
        ),
        // And 1.8e19 bytes fits an unsigned 64-bit count.
        (GOOD.replace("ID", "big-u64").replace("}", r#","bytes_read":1.8e19}"#).into_bytes(), "ok"),
        // Refused lines do not enter the dedup window: the corrected resend is taken.
        (good("later"), "ok"),
        (good("last"), "ok"),
    ]
}

fn write_corpus(path: &std::path::Path) -> Vec<&'static str> {
    let mut bytes = Vec::new();
    let mut want = Vec::new();
    for (line, outcome) in corpus() {
        bytes.extend(line);
        bytes.push(b'\n');
        want.push(outcome);
    }
    // The last line has no newline: it still counts.
    bytes.pop();
    std::fs::write(path, bytes).unwrap();
    want
}

#[test]
fn nothing_is_lost_and_every_reason_is_right() {
    let dir = scratch();
    let input = dir.path().join("bad.ndjson");
    let want = write_corpus(&input);
    let archive = dir.path().join("archive");
    let summary = run_json(&input, &archive, None);
    let count = |o: &str| want.iter().filter(|w| **w == o).count() as u64;
    assert_eq!(summary["lines"], want.len() as u64, "{summary}");
    assert_eq!(summary["valid"], count("ok"));
    assert_eq!(summary["blank"], count("blank"));
    assert_eq!(summary["balanced"], true);

    // Every dead letter is in the archive, at its line, with its reason, readable by DuckDB.
    let rows = archive_py("rows", &archive, &["dead-letters", "_position"]);
    let got: BTreeMap<u64, String> = rows["duckdb"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["_position"].as_u64().unwrap(), r["reason"].as_str().unwrap().to_owned()))
        .collect();
    let expected: BTreeMap<u64, String> = want
        .iter()
        .enumerate()
        .filter(|(_, w)| !matches!(**w, "ok" | "blank"))
        .map(|(i, w)| (i as u64 + 1, w.to_string()))
        .collect();
    assert_eq!(got, expected);
    for r in rows["duckdb"].as_array().unwrap() {
        let size = r["size"].as_u64().unwrap();
        match r["reason"].as_str().unwrap() {
            // The 10 MiB line keeps a 64 KiB prefix and its true size.
            "too_large" => {
                assert_eq!(r["payload_truncated"], true);
                assert!(size > 10 << 20, "{size}");
                assert_eq!(r["payload"].as_str().unwrap().len(), 2 * 65536);
            }
            // Not UTF-8: the bytes are kept exactly (hex here), and there is no text form.
            "not_utf8" => {
                assert_eq!(r["payload_text"], serde_json::Value::Null);
                assert!(r["payload"].as_str().unwrap().contains("c328"));
            }
            _ => assert_eq!(r["payload"].as_str().unwrap().len() as u64, 2 * size),
        }
        assert!(!r["detail"].as_str().unwrap().is_empty());
    }
    let events = archive_py("event-counts", &archive, &[]);
    assert_eq!(events["rows"], count("ok"));
}

#[test]
fn validate_prints_each_bad_line_and_exits_1() {
    let dir = scratch();
    let input = dir.path().join("bad.ndjson");
    let want = write_corpus(&input);
    let out = vigil().arg("validate").arg(&input).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    for (i, w) in want.iter().enumerate() {
        if !matches!(*w, "ok" | "blank") {
            assert!(text.contains(&format!("line {}: {w}: ", i + 1)), "line {} {w}:\n{text}", i + 1);
        }
    }
    let bad = want.iter().filter(|w| !matches!(**w, "ok" | "blank")).count();
    let ok = want.iter().filter(|w| **w == "ok").count();
    assert!(text.contains(&format!("{} lines: {ok} valid, {bad} invalid, 2 blank", want.len())), "{text}");
    // The same as one JSON document for a script (issue 18, item 4): every bad line with its code.
    let out = vigil().args(["validate", "--json"]).arg(&input).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(
        (doc["valid"].as_u64(), doc["invalid"].as_u64()),
        (Some(ok as u64), Some(bad as u64)),
        "{doc}"
    );
    let listed: Vec<(u64, &str)> = doc["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["line"].as_u64().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    let expected: Vec<(u64, &str)> = want
        .iter()
        .enumerate()
        .filter(|(_, w)| !matches!(**w, "ok" | "blank"))
        .map(|(i, w)| (i as u64 + 1, *w))
        .collect();
    assert_eq!(listed, expected);
    // A clean file exits 0.
    std::fs::write(&input, GOOD.replace("ID", "only")).unwrap();
    assert_eq!(vigil().arg("validate").arg(&input).output().unwrap().status.code(), Some(0));
}

#[test]
fn compressed_and_stdin_inputs_read_the_same_events() {
    use std::io::Write;
    let dir = scratch();
    let plain = dir.path().join("fleet.ndjson");
    let n = simulate(&plain, 10, "5m", 10.0, 0, 9);
    let bytes = std::fs::read(&plain).unwrap();
    let gz = dir.path().join("fleet2.ndjson.gz");
    let mut enc =
        flate2::write::GzEncoder::new(std::fs::File::create(&gz).unwrap(), flate2::Compression::fast());
    enc.write_all(&bytes).unwrap();
    enc.finish().unwrap();
    let zst = dir.path().join("fleet3.ndjson.zst");
    std::fs::write(&zst, zstd::encode_all(&bytes[..], 3).unwrap()).unwrap();
    for input in [&gz, &zst] {
        let s = run_json(input, &dir.path().join("a"), None);
        assert_eq!(s["valid"], n, "{}", input.display());
    }
    let mut child = vigil()
        .args(["run", "--input", "-", "--json", "--archive"])
        .arg(dir.path().join("b"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(&bytes).unwrap();
    let out = ok(child.wait_with_output().unwrap());
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["valid"], n);
    assert!(s["source"].as_str().unwrap().starts_with("stdin-"));
}

#[test]
fn config_errors_name_file_line_and_column() {
    let dir = scratch();
    let cfg = dir.path().join("v.toml");
    std::fs::write(&cfg, "[archive]\nflush_rows = 5\nflush_sec = 1\n").unwrap();
    let out = vigil().arg("run").arg("--config").arg(&cfg).args(["--input", "-"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains(&format!("{}:3:1: unknown field `flush_sec`", cfg.display())), "{err}");
}

/// Issue 18, item 4: `--input` beside Kafka was silently ignored (the member consumed the topic); now
/// the run refuses and says why.
#[test]
fn an_input_file_beside_kafka_is_refused_not_ignored() {
    let dir = scratch();
    let input = dir.path().join("e.ndjson");
    std::fs::write(&input, "").unwrap();
    let out = vigil()
        .args(["run", "--kafka", "127.0.0.1:9", "--topic", "t", "--group", "g", "--input"])
        .arg(&input)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("two inputs"), "{out:?}");
}

#[test]
fn one_event_stamped_far_ahead_cannot_blind_the_detectors() {
    let dir = scratch();
    let clean = dir.path().join("clean.ndjson");
    simulate(&clean, 60, "4h", 20.0, 8, 11);
    // An agent's event from the year 2999, early in the stream.
    let text = std::fs::read_to_string(&clean).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let attack =
        GOOD.replace("2026-01-05T09:00:00Z", "2999-01-01T00:00:00Z").replace("ID", "from-the-future");
    lines.insert(200, &attack);
    let attacked = dir.path().join("attacked.ndjson");
    std::fs::write(&attacked, lines.join("\n")).unwrap();
    let off = dir.path().join("off.toml");
    std::fs::write(&off, "[input]\nmax_future_seconds = 0\n").unwrap();

    let baseline = run_json(&clean, &dir.path().join("a"), None);
    let guarded = run_json(&attacked, &dir.path().join("b"), None);
    let open = run_json(&attacked, &dir.path().join("c"), Some(&off));
    assert!(!baseline["findings"].as_object().unwrap().is_empty(), "{baseline}");
    // Refused, and nothing else changes: the same findings as without the attack.
    assert_eq!(guarded["dead_letters"]["future_timestamp"], 1, "{guarded}");
    assert_eq!(guarded["findings"], baseline["findings"]);
    assert_eq!(guarded["late"], baseline["late"]);
    // Without the bound, every later event is "late" and left out of the windows.
    let (valid, late) = (open["valid"].as_u64().unwrap(), open["late"].as_u64().unwrap());
    assert!(late * 10 > valid * 9, "late {late} of {valid}: {open}");
    assert_ne!(open["findings"], baseline["findings"]);
    // The refusal says when the event claims to be and what this host's clock said (issue 18, item 4).
    let out = vigil().arg("validate").arg(&attacked).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    let line = said.lines().find(|l| l.contains("future_timestamp")).expect("reported");
    assert!(
        line.contains("2999-01-01T00:00:00.000Z is ") && line.contains("ahead of this host's clock (20"),
        "{line}"
    );
}

#[test]
fn a_rerun_refuses_a_resend_of_what_an_earlier_run_archived() {
    // A log that grows between runs, as a gateway appends: the second run reads only the new lines, and
    // a resent event from before is refused as it would be in one run over the whole file.
    let dir = scratch();
    let log = dir.path().join("gateway.ndjson");
    let first: Vec<Vec<u8>> = (0..5).map(|i| good(&format!("e{i}"))).collect();
    std::fs::write(&log, [first.join(&b'\n'), b"\n".to_vec()].concat()).unwrap();
    let archive = dir.path().join("archive");
    assert_eq!(run_json(&log, &archive, None)["valid"], 5);
    let more = [good("e2"), good("e5")].join(&b'\n');
    std::fs::write(&log, [first.join(&b'\n'), b"\n".to_vec(), more].concat()).unwrap();
    let s = run_json(&log, &archive, None);
    assert_eq!((s["skipped"].as_u64(), s["valid"].as_u64()), (Some(5), Some(1)), "{s}");
    assert_eq!(s["dead_letters"]["duplicate_event_id"], 1, "{s}");
    let dead = archive_py("rows", &archive, &["dead-letters", "_position"]);
    let row = &dead["duckdb"][0];
    assert_eq!(
        (row["_position"].as_u64(), row["reason"].as_str()),
        (Some(6), Some("duplicate_event_id")),
        "{dead}"
    );
    assert!(row["detail"].as_str().unwrap().contains("first seen at line 3"), "{dead}");
}

/// A run whose stderr is gone (here a full device: every write fails) logs nothing and still archives
/// everything and exits 0. Writing a log line there made tracing-subscriber report the failure with an
/// `eprintln!`, which panicked (exit 101); on the Kafka path that panic, inside a rebalance callback,
/// left the member unable to stop.
#[test]
fn a_run_whose_stderr_is_gone_archives_everything_and_exits_0() {
    let dir = scratch();
    let log = dir.path().join("gateway.ndjson");
    let lines: Vec<Vec<u8>> = (0..20).map(|i| good(&format!("e{i}"))).collect();
    std::fs::write(&log, [lines.join(&b'\n'), b"\n".to_vec()].concat()).unwrap();
    let archive = dir.path().join("archive");
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
    let out = vigil()
        .args(["run", "--json", "--input"])
        .arg(&log)
        .arg("--archive")
        .arg(&archive)
        .stderr(full)
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}: {}", out.status, String::from_utf8_lossy(&out.stdout));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["valid"], 20, "{summary}");
    let rows = archive_py("rows", &archive, &["events", "event_id"]);
    assert_eq!(rows["duckdb"].as_array().map(Vec::len), Some(20), "{rows}");
}

/// Issue 13, item 13: a truncated `.gz` archived nothing, on every rerun, although 90,047 good lines
/// preceded the damage. Now what precedes it is archived, the unreadable tail is one dead letter with
/// its byte offset, the run exits non-zero, and a rerun adds nothing.
#[test]
fn a_truncated_gz_archives_what_precedes_the_damage_and_dead_letters_the_tail() {
    use std::io::Write as _;
    let dir = scratch();
    let plain = dir.path().join("fleet.ndjson");
    let n = simulate(&plain, 20, "2h", 10.0, 0, 6);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&std::fs::read(&plain).unwrap()).unwrap();
    let whole = gz.finish().unwrap();
    let input = dir.path().join("fleet.ndjson.gz");
    std::fs::write(&input, &whole[..whole.len() * 2 / 3]).unwrap();
    let archive = dir.path().join("archive");
    let run = || {
        vigil()
            .args(["run", "--json", "--input"])
            .arg(&input)
            .arg("--archive")
            .arg(&archive)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(!out.status.success(), "a damaged input must fail the run: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("reading"), "{out:?}");
    let counts = archive_py("event-counts", &archive, &[]);
    let archived = counts["rows"].as_u64().unwrap();
    assert!(archived > n / 3 && archived < n, "{archived} of {n} archived");
    let dead = archive_py("rows", &archive, &["dead-letters", "_position"]);
    let dead = dead["duckdb"].as_array().unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["reason"], "unreadable_input");
    assert_eq!(dead[0]["_position"].as_u64(), Some(archived + 1), "the tail is the line after the last read");
    assert!(dead[0]["detail"].as_str().unwrap().contains("decompressed byte"), "{:?}", dead[0]);
    // `validate` reports every line read before the damage, then the tail, and exits 1.
    let out = vigil().arg("validate").arg(&input).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains(&format!("line {}: unreadable_input: ", archived + 1)), "{report}");
    assert!(report.contains(&format!("{archived} lines: {archived} valid, 1 invalid")), "{report}");
    // A rerun meets the same damage: it fails again and archives nothing twice.
    assert!(!run().status.success());
    assert_eq!(archive_py("event-counts", &archive, &[]), counts);
    assert_eq!(
        archive_py("rows", &archive, &["dead-letters", "_position"])["duckdb"].as_array().unwrap().len(),
        1
    );
}

/// Issue 18, item 4: an unreachable broker's error said "Broker transport failure" and nothing of where;
/// it names the address now, within `[kafka] setup_timeout_ms`.
#[test]
fn an_unreachable_broker_is_named_in_the_error() {
    let dir = scratch();
    let cfg = dir.path().join("vigil.toml");
    // Port 1 on loopback: nothing listens there.
    std::fs::write(&cfg, "[kafka]\nbrokers = \"127.0.0.1:1\"\ntopics = [\"t\"]\nsetup_timeout_ms = 2000\n")
        .unwrap();
    let started = std::time::Instant::now();
    let out = vigil()
        .args(["run", "--idle-exit", "1s", "--config"])
        .arg(&cfg)
        .arg("--archive")
        .arg(dir.path().join("a"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("127.0.0.1:1") && said.contains("is a broker listening there?"), "{said}");
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "the setup timeout bounds the wait");
}

/// Issue 18, item 4: `vigil check-config` says whether a config would start, and why not, without
/// running anything.
#[test]
fn check_config_accepts_the_example_and_names_the_line_of_a_mistake() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vigil.toml");
    let out = vigil().arg("check-config").arg(&example).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("vigil.toml: ok") && said.contains("policies: "), "{said}");
    let dir = scratch();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[detect]\nwindow_seconds = \"x\"\n").unwrap();
    let out = vigil().arg("check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("bad.toml:2:"), "{out:?}");
    // Values checked beyond their types: an API beyond loopback with no token would be refused.
    std::fs::write(&bad, "[api]\nlisten = \"0.0.0.0:9464\"\n").unwrap();
    let out = vigil().arg("check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("no token"), "{out:?}");
    // And an event intake beyond loopback with nobody declared to send (issue 13, item 7).
    std::fs::write(&bad, "[http]\nlisten = \"0.0.0.0:8080\"\n").unwrap();
    let out = vigil().arg("check-config").arg(&bad).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("no [[http.sender]] is declared"), "{out:?}");
}

/// Issue 18, item 4: `--help` of run and serve shows what an option defaults to, and what it shows is
/// what the config's defaults are.
#[test]
fn run_and_serve_help_show_the_defaults_the_config_has() {
    let defaults = vigil::config::VigilConfig::default();
    let help = |cmd: &str| {
        let out = vigil().args([cmd, "--help"]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let run = help("run");
    let archive = format!("[default: {}]", defaults.archive.dir.display());
    assert!(run.contains(&archive), "{run}");
    let group = vigil_ingest::source::kafka::KafkaConfig::new("b", vec![]).group;
    assert!(run.contains(&format!("[default: {group}]")), "{run}");
    let serve = help("serve");
    assert!(
        serve.contains(&format!("[default: {}]", defaults.http.listen)) && serve.contains(&archive),
        "{serve}"
    );
}

//! The one server beside a run that is not `vigil serve`: `/metrics` and `/healthz` answer while a
//! stdin run is in progress, and the counters they show are the run's own.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// `GET path` on its own connection; the status and the body.
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("the server accepts");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    (head.split(' ').nth(1).unwrap().parse().unwrap(), body.to_owned())
}

/// `vigil run` reading stdin (all pipes), with a JSON summary and `extra` arguments.
fn stdin_run(extra: &[&str], config: &std::path::Path, archive: &std::path::Path) -> std::process::Child {
    vigil()
        .args(["run", "--input", "-", "--json"])
        .args(extra)
        .arg("--config")
        .arg(config)
        .arg("--archive")
        .arg(archive)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The value of one sample line (`name{labels} value`) in an exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn a_stdin_run_serves_its_own_counters_on_the_api_listener_while_it_runs() {
    let dir = scratch();
    let input = dir.path().join("fleet.ndjson");
    let events = simulate(&input, 50, "2h", 12.0, 0, 3);
    let archive = dir.path().join("archive");
    // Full batches only, so the last part of the input waits for the end of stdin.
    let config = dir.path().join("vigil.toml");
    std::fs::write(&config, "[input]\nbatch_timeout_ms = 0\n").unwrap();
    let mut child = stdin_run(&["--api-listen", "127.0.0.1:0"], &config, &archive);
    let addr = served_address(&mut child);
    // More than one batch (4 MiB) of input: the first batches are judged while stdin stays open.
    let bytes = std::fs::read(&input).unwrap();
    assert!(bytes.len() > 5 << 20, "{} bytes", bytes.len());
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&bytes).unwrap();
    let started = Instant::now();
    let accepted = loop {
        let (status, text) = get(&addr, "/metrics");
        assert_eq!(status, 200, "{text}");
        assert_eq!(sample(&text, "vigil_build_info{version=\"0.1.0\"}"), Some(1.0), "{text}");
        let n =
            sample(&text, "vigil_events_total{outcome=\"accepted\"}").expect("the counter exists at zero");
        if n > 0.0 {
            break n;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "nothing counted while running:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(accepted < events as f64, "the run is still going: {accepted} of {events}");
    assert_eq!(get(&addr, "/healthz").0, 200);
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["valid"].as_u64(), Some(events), "{summary}");
    // The server stopped with the run.
    assert!(TcpStream::connect(&addr).is_err());
}

/// Issue 13, item 14: a slow stdin stream was not judged or archived until 4 MiB had arrived, so a
/// critical event in a trickle waited hours. Now whole lines are taken after `batch_timeout_ms`, and
/// archived within `flush_seconds` while the pipe stays quiet (they waited for the next line before).
#[test]
fn a_trickle_on_stdin_is_judged_and_archived_before_a_batch_fills() {
    let dir = scratch();
    let input = dir.path().join("fleet.ndjson");
    simulate(&input, 5, "10m", 1.0, 0, 8);
    let lines: Vec<String> =
        std::fs::read_to_string(&input).unwrap().lines().take(20).map(str::to_owned).collect();
    let config = dir.path().join("vigil.toml");
    std::fs::write(&config, "[archive]\nflush_seconds = 1.0\n").unwrap();
    let archive = dir.path().join("archive");
    let mut child = vigil()
        .args(["run", "--input", "-", "--json", "--api-listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--archive")
        .arg(&archive)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // The first write lets the run open its input; the address comes after.
    stdin.write_all((lines.join("\n") + "\n").as_bytes()).unwrap();
    stdin.flush().unwrap();
    let addr = served_address(&mut child);
    let started = Instant::now();
    loop {
        let (_, text) = get(&addr, "/metrics");
        if sample(&text, "vigil_events_total{outcome=\"accepted\"}") == Some(20.0) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "20 lines on an open stdin not taken:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Nothing more comes, and the pipe stays open: the lines are archived on the flush clock anyway.
    while parquet_files(&archive.join("events")) == 0 {
        assert!(started.elapsed() < Duration::from_secs(20), "20 lines on a quiet stdin not archived");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["valid"], 20, "{summary}");
}

/// Issue 17: `[metrics] listen` serves `/metrics` and `/healthz` alone (no API behind it) for a run with
/// no `[api] listen`; with `--log-format json` vigil's own log events are one JSON object per line.
#[test]
fn a_metrics_only_listener_serves_counters_and_no_api_and_logs_can_be_json() {
    let dir = scratch();
    let archive = dir.path().join("archive");
    let config = dir.path().join("vigil.toml");
    std::fs::write(&config, "[archive]\nflush_seconds = 1.0\n").unwrap();
    let mut child =
        stdin_run(&["--log-format", "json", "--metrics-listen", "127.0.0.1:0"], &config, &archive);
    // The first log line is JSON and names the address.
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut first).unwrap();
    let log: serde_json::Value = serde_json::from_str(&first).expect("a JSON log line");
    assert_eq!(log["level"], "INFO", "{log}");
    let addr = log["addr"].as_str().expect("the address is a field").to_owned();
    assert!(log["message"].as_str().unwrap().contains("/metrics"), "{log}");
    let mut stdin = child.stdin.take().unwrap();
    let t = 1_767_225_600_000i64;
    for i in 0..20 {
        writeln!(
            stdin,
            r#"{{"event_id":"m{i}","ts":{},"agent_id":"a1","action":"tool.call","resource":"mcp://x"}}"#,
            t + i
        )
        .unwrap();
    }
    writeln!(stdin, "not json").unwrap();
    stdin.flush().unwrap();
    let started = Instant::now();
    let text = loop {
        let (status, text) = get(&addr, "/metrics");
        assert_eq!(status, 200, "{text}");
        if sample(&text, "vigil_events_total{outcome=\"accepted\"}") == Some(20.0) {
            break text;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the trickle was not counted:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(text.contains("vigil_dead_letters_total{reason=\"not_json\"} 1"), "{text}");
    // The state's size is measured when a flush snapshots it: within `flush_seconds`, the pipe quiet.
    loop {
        let (_, text) = get(&addr, "/metrics");
        if sample(&text, "vigil_state_bytes").is_some_and(|b| b > 0.0) {
            assert_eq!(sample(&text, "vigil_agents_tracked"), Some(1.0), "{text}");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no state size after a flush:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    writeln!(
        stdin,
        r#"{{"event_id":"m20","ts":{},"agent_id":"a2","action":"tool.call","resource":"mcp://x"}}"#,
        t + 20
    )
    .unwrap();
    stdin.flush().unwrap();
    loop {
        let (_, text) = get(&addr, "/metrics");
        if sample(&text, "vigil_agents_tracked") == Some(2.0) {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the second agent is not tracked:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(&addr, "/healthz").0, 200);
    assert_eq!(get(&addr, "/v1/agents").0, 404, "no API on the metrics listener");
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["valid"].as_u64(), Some(21), "{summary}");
    assert!(TcpStream::connect(&addr).is_err(), "the listener stopped with the run");
}

//! HTTP ingest end to end: `vigil serve` on a loopback port, requests written byte by byte over TCP
//! (no client library between the test and the server), the archive read back with DuckDB and pyarrow,
//! and the Kafka mode read back with confluent-kafka from a real broker (tansu).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// A running `vigil serve`, killed when dropped.
struct Server {
    child: Child,
    addr: String,
    said: Arc<Mutex<String>>,
}

impl Server {
    /// Starts `vigil serve --listen 127.0.0.1:0 --json ARGS` and waits for the address it bound.
    fn start(args: &[&str]) -> Server {
        let mut cmd = vigil();
        cmd.args(["serve", "--listen", "127.0.0.1:0", "--json"]).args(args);
        Server::spawn(cmd)
    }

    /// Starts `cmd`, which runs `vigil serve`, and waits for the address it bound.
    fn spawn(mut cmd: Command) -> Server {
        let mut child =
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("vigil serve starts");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        // What it says before serving (a recovery) comes first; the address is on the "serving" line.
        let mut said = String::new();
        let addr = loop {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap() == 0 {
                panic!("vigil serve stopped before serving: {said}");
            }
            if let Some(rest) = line.split("http://").nth(1) {
                break rest.split('/').next().unwrap().to_owned();
            }
            said.push_str(&line);
        };
        // Keep draining stderr so the server never blocks on a full pipe; keep what it says.
        let said = Arc::new(Mutex::new(said));
        let keep = said.clone();
        std::thread::spawn(move || {
            for line in stderr.lines() {
                let Ok(line) = line else { break };
                let mut k = keep.lock().unwrap();
                k.push_str(&line);
                k.push('\n');
            }
        });
        Server { child, addr, said }
    }

    /// What the server wrote to stderr so far, the "serving" line aside.
    fn said(&self) -> String {
        self.said.lock().unwrap().clone()
    }

    fn post(&self, headers: &[(&str, &str)], body: &[u8]) -> Reply {
        request(&self.addr, "POST", "/v1/events", headers, body)
    }

    /// SIGTERM, then the summary it prints as it exits (which must be 0).
    fn stop(mut self) -> serde_json::Value {
        ok(Command::new("kill").args(["-TERM", &self.child.id().to_string()]).output().unwrap());
        let started = Instant::now();
        while self.child.try_wait().unwrap().is_none() {
            assert!(started.elapsed() < Duration::from_secs(30), "vigil serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = self.child.wait().unwrap();
        let mut out = String::new();
        self.child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        assert!(status.success(), "vigil serve exited with {status}: {out}");
        serde_json::from_str(&out).expect("summary is JSON")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: serde_json::Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on its own connection (`Connection: close`), the answer read to the end.
fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    try_request(addr, method, path, headers, body).unwrap_or_else(|| panic!("no HTTP answer from {addr}"))
}

/// A request, or `None` when the server is gone (no connection, or closed without an answer).
fn try_request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Option<Reply> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("transfer-encoding")) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).ok()?;
    // A server that refuses early may close before the body is all sent; its answer still counts.
    let _ = s.write_all(body);
    try_read_reply(&mut s)
}

fn read_reply(s: &mut TcpStream) -> Reply {
    try_read_reply(s).expect("an HTTP answer")
}

fn try_read_reply(s: &mut TcpStream) -> Option<Reply> {
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let body = serde_json::from_str(body).unwrap_or(serde_json::Value::String(body.to_owned()));
    Some(Reply { status, headers, body })
}

/// A request whose headers announce all of `body` but of which only the first `sent` bytes are sent.
fn start_slowly(addr: &str, body: &[u8], sent: usize) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body[..sent]).unwrap();
    s.flush().unwrap();
    s
}

/// Whether the server has already answered (or closed) `s`, without waiting.
fn has_answer(s: &TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let answered = s.peek(&mut [0u8; 1]).is_ok();
    s.set_nonblocking(false).unwrap();
    answered
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// `n` simulated events as lines.
fn events(dir: &Path, agents: usize, duration: &str) -> Vec<String> {
    let path = dir.join("fleet.ndjson");
    simulate(&path, agents, duration, 20.0, 0, 7);
    std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
}

fn event_id(line: &str) -> String {
    serde_json::from_str::<serde_json::Value>(line).unwrap()["event_id"].as_str().unwrap().to_owned()
}

/// The event_ids in the archive, read by DuckDB and by pyarrow (which must agree).
fn archived_ids(archive: &Path) -> BTreeSet<String> {
    let rows = archive_py("rows", archive, &["events", "event_id"]);
    let ids = |reader: &str| -> Vec<String> {
        rows[reader].as_array().unwrap().iter().map(|r| r["event_id"].as_str().unwrap().to_owned()).collect()
    };
    let (duck, arrow) = (ids("duckdb"), ids("pyarrow"));
    assert_eq!(duck, arrow, "DuckDB and pyarrow disagree");
    let set: BTreeSet<String> = duck.iter().cloned().collect();
    assert_eq!(set.len(), duck.len(), "an event_id is archived twice");
    set
}

/// Bytes in the intake journal's segments.
fn journal_bytes(archive: &Path) -> u64 {
    let dir = archive.join("_vigil/journal/http");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

/// A scratch folder with a simulated fleet's lines, and `vigil serve` started with `config` (TOML) and an
/// archive in the folder.
fn serve_with(config: &str) -> (tempfile::TempDir, Vec<String>, std::path::PathBuf, Server) {
    let dir = scratch();
    let lines = events(dir.path(), 5, "5m");
    let path = dir.path().join("vigil.toml");
    std::fs::write(&path, config).unwrap();
    let archive = dir.path().join("archive");
    let server = Server::start(&["--config", path.to_str().unwrap(), "--archive", archive.to_str().unwrap()]);
    (dir, lines, archive, server)
}

/// Issue 13, item 4: two `vigil serve` on one `--archive` both started and both answered, and half of
/// what they acknowledged was lost. The second is refused now, naming the process that holds the source.
#[test]
fn a_second_serve_on_one_archive_is_refused_and_told_who_holds_it() {
    let (dir, lines, archive, server) = serve_with("");
    let out = vigil()
        .args(["serve", "--listen", "127.0.0.1:0", "--archive"])
        .arg(&archive)
        .output()
        .expect("vigil serve runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("in use (held by process ") && said.contains("lose acknowledged events"), "{said}");
    // The first goes on serving, and keeps what it acknowledged.
    assert_eq!(server.post(&[], lines[..5].join("\n").as_bytes()).status, 200);
    server.stop();
    assert_eq!(archived_ids(&archive).len(), 5);
    drop(dir);
}

/// Issue 18, item 4: an empty body was answered 200 with nothing in it, though the README says 400.
#[test]
fn an_empty_body_gets_400_and_says_why() {
    let (_dir, _lines, _archive, server) = serve_with("");
    for body in [&b""[..], b"\n \n"] {
        let r = server.post(&[("Content-Type", "application/x-ndjson")], body);
        assert_eq!(r.status, 400, "{r:?}");
        assert!(r.body["error"].as_str().unwrap().contains("empty"), "{r:?}");
    }
    server.stop();
}

#[test]
fn good_and_bad_bodies_are_answered_per_item_and_archived_exactly() {
    let dir = scratch();
    let lines = events(dir.path(), 30, "20m");
    assert!(lines.len() > 400, "{}", lines.len());
    let archive = dir.path().join("archive");
    // The archive flushes on its own schedule, here not before the kill below: until then the answered
    // items are in the journal alone.
    let config = dir.path().join("vigil.toml");
    std::fs::write(&config, "[archive]\nflush_seconds = 3600\n").unwrap();
    let args = ["--config", config.to_str().unwrap(), "--archive", archive.to_str().unwrap()];
    let server = Server::start(&args);
    let mut accepted: BTreeSet<String> = BTreeSet::new();

    // NDJSON with a blank line, a line missing fields and a line that is not JSON.
    let mut body = lines[..100].join("\n");
    body.push_str("\n\n{\"event_id\":\"x1\",\"ts\":1}\nnot json\n");
    let r = server.post(&[("Content-Type", "application/x-ndjson")], body.as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!((r.body["accepted"].as_u64(), r.body["rejected"].as_u64()), (Some(100), Some(2)), "{r:?}");
    assert_eq!(r.body["blank"], 1);
    let errors = r.body["errors"].as_array().unwrap();
    assert_eq!(errors[0]["line"], 102, "{r:?}");
    assert_eq!(errors[0]["code"], "missing_field");
    assert_eq!((errors[1]["line"].as_u64(), errors[1]["code"].as_str()), (Some(103), Some("not_json")));
    accepted.extend(lines[..100].iter().map(|l| event_id(l)));

    // gzip, no Content-Type (curl's default form type): NDJSON by its first byte.
    let body = lines[100..200].join("\n");
    let r = server.post(
        &[("Content-Encoding", "gzip"), ("Content-Type", "application/x-www-form-urlencoded")],
        &gzip(body.as_bytes()),
    );
    assert_eq!((r.status, r.body["accepted"].as_u64()), (200, Some(100)), "{r:?}");
    accepted.extend(lines[100..200].iter().map(|l| event_id(l)));

    // A JSON array with one element that is not an object: refused by its index.
    let body = format!("[{},7]", lines[200..250].join(","));
    let r = server.post(&[("Content-Type", "application/json")], body.as_bytes());
    assert_eq!((r.status, r.body["accepted"].as_u64()), (200, Some(50)), "{r:?}");
    assert_eq!(r.body["errors"][0]["index"], 50, "{r:?}");
    assert_eq!(r.body["errors"][0]["code"], "not_object", "{r:?}");
    accepted.extend(lines[200..250].iter().map(|l| event_id(l)));

    // One event object, pretty-printed over several lines.
    let pretty =
        serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(&lines[250]).unwrap())
            .unwrap();
    let r = server.post(&[("Content-Type", "application/json")], pretty.as_bytes());
    assert_eq!((r.status, r.body["accepted"].as_u64()), (200, Some(1)), "{r:?}");
    accepted.insert(event_id(&lines[250]));

    // A resend of events already taken: every one refused as a duplicate, so nothing valid, 400.
    let r = server.post(&[], lines[..3].join("\n").as_bytes());
    assert_eq!(r.status, 400, "{r:?}");
    assert_eq!(r.body["rejected"], 3);
    assert_eq!(r.body["errors"][2]["code"], "duplicate_event_id", "{r:?}");

    // Bodies refused whole.
    let r = server.post(&[("Content-Type", "application/json")], b"[{\"a\":1},");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body["error"].as_str().unwrap().contains("not a JSON array"), "{r:?}");
    let r = server.post(&[("Content-Encoding", "br")], b"{}");
    assert_eq!(r.status, 415, "{r:?}");
    let r = server.post(&[("Content-Type", "text/csv")], b"a,b");
    assert_eq!(r.status, 415, "{r:?}");
    let r = server.post(&[("Content-Encoding", "gzip")], b"not gzip at all");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body["error"].as_str().unwrap().contains("not valid gzip"), "{r:?}");
    let r = request(&server.addr, "GET", "/v1/events", &[], b"");
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")), "{r:?}");
    assert_eq!(request(&server.addr, "GET", "/nowhere", &[], b"").status, 404);
    assert_eq!(request(&server.addr, "GET", "/healthz", &[], b"").status, 200);
    // The same server exposes the pipeline's counters: every accepted item so far, by outcome.
    let m = request(&server.addr, "GET", "/metrics", &[], b"");
    assert_eq!((m.status, m.header("content-type")), (200, Some("text/plain; version=0.0.4; charset=utf-8")));
    let text = m.body.as_str().unwrap();
    let accepted_line = format!("vigil_events_total{{outcome=\"accepted\"}} {}", accepted.len());
    assert!(text.lines().any(|l| l == accepted_line), "{accepted_line} not in:\n{text}");
    assert!(text.contains("vigil_dead_letters_total{reason=\"missing_field\"}"), "{text}");

    // Every answer came after its items were synced to the journal: kill -9 now. Nothing is archived
    // yet; the restart archives all 258 items first (recovered), then continues the numbering.
    drop(server);
    assert_eq!(parquet_files(&archive.join("events")), 0);
    assert!(journal_bytes(&archive) > 0);
    let server = Server::start(&args);
    let r = server.post(&[], lines[251..400].join("\n").as_bytes());
    assert_eq!((r.status, r.body["accepted"].as_u64()), (200, Some(149)), "{r:?}");
    accepted.extend(lines[251..400].iter().map(|l| event_id(l)));
    let summary = server.stop();
    assert_eq!(
        (summary["recovered"].as_u64(), summary["lines"].as_u64()),
        (Some(258), Some(258 + 149)),
        "{summary}"
    );
    assert_eq!(
        (summary["valid"].as_u64(), summary["balanced"].as_bool()),
        (Some(251 + 149), Some(true)),
        "{summary}"
    );
    assert_eq!(journal_bytes(&archive), 0, "an archived journal segment is removed");
    assert_eq!(archived_ids(&archive), accepted);
    // The refused items are dead-lettered too, with their reasons: 2 + 1 + 3 duplicates.
    let dead = archive_py("rows", &archive, &["dead-letters", "_position"]);
    let reasons: Vec<&str> =
        dead["duckdb"].as_array().unwrap().iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons.len(), 6, "{dead}");
    assert_eq!(reasons.iter().filter(|r| **r == "duplicate_event_id").count(), 3, "{reasons:?}");
}

#[test]
fn kill_9_at_random_moments_while_a_client_posts_loses_nothing_and_duplicates_nothing() {
    let dir = scratch();
    let lines = events(dir.path(), 50, "2h");
    let bodies: Vec<String> = lines.chunks(20).map(|c| c.join("\n")).collect();
    let archive = dir.path().join("archive");
    // Flushes every 2,000 rows, so kills land before, during and after flushes and journal rotations.
    let config = dir.path().join("vigil.toml");
    std::fs::write(&config, "[archive]\nflush_rows = 2000\n").unwrap();
    let args = ["--config", config.to_str().unwrap(), "--archive", archive.to_str().unwrap()];
    // A client as a gateway would be: it resends whatever was not answered. A resent body that was
    // taken before the kill comes back refused as duplicates, item by item.
    let (mut next, mut interrupted, mut resent_duplicates) = (0, 0, 0u64);
    let mut seed = 0x5eed_u64;
    for round in 0..6 {
        let server = Server::start(&args);
        // The killer waits for a seeded number of answers in this round (20 to 119: five rounds never
        // post every body, however fast the machine), then up to 3 ms more, so the kill lands between
        // requests or inside one.
        let answers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let killer = (round < 5).then(|| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let (after, extra) =
                (20 + (seed >> 33) as usize % 100, Duration::from_micros((seed >> 20) % 3000));
            let (pid, answers) = (server.child.id().to_string(), answers.clone());
            std::thread::spawn(move || {
                // Bounded, so a client that stopped early fails the test instead of hanging it.
                let started = Instant::now();
                while answers.load(std::sync::atomic::Ordering::SeqCst) < after
                    && started.elapsed() < Duration::from_secs(60)
                {
                    std::thread::sleep(Duration::from_micros(200));
                }
                std::thread::sleep(extra);
                ok(Command::new("kill").args(["-9", &pid]).output().unwrap());
            })
        });
        while next < bodies.len() {
            let Some(r) = try_request(&server.addr, "POST", "/v1/events", &[], bodies[next].as_bytes())
            else {
                interrupted += 1;
                break;
            };
            let (accepted, rejected) =
                (r.body["accepted"].as_u64().unwrap(), r.body["rejected"].as_u64().unwrap());
            assert!(matches!(r.status, 200 | 400), "{r:?}");
            assert_eq!(accepted + rejected, bodies[next].lines().count() as u64, "{r:?}");
            for e in r.body["errors"].as_array().unwrap() {
                assert_eq!(e["code"], "duplicate_event_id", "only a resend is refused: {r:?}");
            }
            resent_duplicates += rejected;
            next += 1;
            answers.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        match killer {
            Some(k) => k.join().unwrap(),
            None => {
                let summary = server.stop();
                assert_eq!(summary["balanced"], true, "{summary}");
            }
        }
    }
    eprintln!(
        "{} bodies, {interrupted} cut by kill -9, {resent_duplicates} resent items refused",
        bodies.len()
    );
    assert_eq!(next, bodies.len(), "the last round posts everything left");
    assert_eq!(interrupted, 5, "every kill landed while posting");
    // Every event once, whatever was cut where; the resends were refused, not archived again.
    assert_eq!(archived_ids(&archive), lines.iter().map(|l| event_id(l)).collect());
    // Every refusal answered is dead-lettered; a refusal whose answer a kill cut off is too, and its
    // resend is refused again, so there may be more dead letters than answered refusals, never other kinds.
    // No kill may have cut an answer after its items were taken: then there is no dead letter at all.
    let dead = match parquet_files(&archive.join("dead-letters")) {
        0 => Vec::new(),
        _ => {
            archive_py("rows", &archive, &["dead-letters", "_position"])["duckdb"].as_array().unwrap().clone()
        }
    };
    assert!(dead.len() as u64 >= resent_duplicates, "{} < {resent_duplicates}", dead.len());
    assert!(dead.iter().all(|d| d["reason"] == "duplicate_event_id"), "{dead:?}");
}

#[test]
fn a_duplicate_refused_before_a_crash_stays_refused_after_recovery() {
    let (dir, lines, archive, server) = serve_with("[archive]\nflush_rows = 5\nflush_seconds = 3600\n");
    let r = server.post(&[], lines[..10].join("\n").as_bytes());
    assert_eq!((r.status, r.body["accepted"].as_u64()), (200, Some(10)), "{r:?}");
    // Ten rows are over flush_rows: wait until that flush is committed (its checkpoint, written after
    // its files), then resend one event.
    let started = Instant::now();
    let checkpoint = archive.join("_vigil/checkpoints/http-0.json");
    while std::fs::read_to_string(&checkpoint)
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_none_or(|c| c["committed_position"] != 10)
    {
        assert!(started.elapsed() < Duration::from_secs(20), "the flush never landed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = server.post(&[], lines[3].as_bytes());
    assert_eq!((r.status, r.body["errors"][0]["code"].as_str()), (400, Some("duplicate_event_id")), "{r:?}");
    // The duplicate is only in the journal. After a kill -9 the restart judges it again, here with a
    // dedup window the operator shrank to one id, which no longer holds the first copy: the item must
    // still be refused, as the client was told.
    drop(server);
    let config = dir.path().join("vigil.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("{text}[input]\ndedup_window = 1\n")).unwrap();
    let server =
        Server::start(&["--config", config.to_str().unwrap(), "--archive", archive.to_str().unwrap()]);
    let summary = server.stop();
    assert_eq!(
        (summary["recovered"].as_u64(), summary["balanced"].as_bool()),
        (Some(1), Some(true)),
        "{summary}"
    );
    assert_eq!(summary["dead_letters"]["duplicate_event_id"], 1, "{summary}");
    assert_eq!(archived_ids(&archive), lines[..10].iter().map(|l| event_id(l)).collect());
    let dead = archive_py("rows", &archive, &["dead-letters", "_position"]);
    let rows = dead["duckdb"].as_array().unwrap();
    assert_eq!((rows.len(), rows[0]["reason"].as_str()), (1, Some("duplicate_event_id")), "{dead}");
    assert!(rows[0]["detail"].as_str().unwrap().contains("first seen at item 4"), "{dead}");
}

#[test]
fn a_restarted_server_refuses_a_resend_of_what_it_archived_before() {
    let (dir, lines, archive, server) = serve_with("");
    let r = server.post(&[], lines[..10].join("\n").as_bytes());
    assert_eq!((r.status, r.body["accepted"].as_u64()), (200, Some(10)), "{r:?}");
    server.stop();
    // The dedup window starts from the archive's newest event_ids, not empty.
    let config = dir.path().join("vigil.toml");
    let server =
        Server::start(&["--config", config.to_str().unwrap(), "--archive", archive.to_str().unwrap()]);
    let r = server.post(&[], [lines[3].as_str(), lines[10].as_str()].join("\n").as_bytes());
    assert_eq!((r.status, r.body["accepted"].as_u64()), (200, Some(1)), "{r:?}");
    assert_eq!(r.body["errors"][0]["code"], "duplicate_event_id", "{r:?}");
    assert!(r.body["errors"][0]["error"].as_str().unwrap().contains("first seen at item 4"), "{r:?}");
    server.stop();
    assert_eq!(archived_ids(&archive), lines[..11].iter().map(|l| event_id(l)).collect());
}

#[test]
fn a_running_server_writes_status_lines() {
    let (_dir, lines, _, server) = serve_with("[output]\nstatus_seconds = 0.3\n");
    let r = server.post(&[], lines[..10].join("\n").as_bytes());
    assert_eq!(r.status, 200, "{r:?}");
    let started = Instant::now();
    while !server.said().contains("total 10 lines: 10 valid") {
        assert!(started.elapsed() < Duration::from_secs(10), "no status line: {}", server.said());
        std::thread::sleep(Duration::from_millis(50));
    }
    // A log event: the sentence for a person, the numbers as fields for a log shipper.
    assert!(
        server.said().contains("INFO serve: ") && server.said().contains("valid=10"),
        "{}",
        server.said()
    );
    server.stop();
}

#[test]
fn bodies_over_the_caps_get_413_and_items_over_the_event_cap_are_refused_alone() {
    let (_dir, lines, archive, server) = serve_with(
        "[input]\nmax_event_bytes = 2048\n[http]\nmax_body_bytes = 16384\nmax_decoded_bytes = 32768\n",
    );

    // Declared too large: refused before a byte of the body is read.
    let mut s = TcpStream::connect(&server.addr).unwrap();
    write!(s, "POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n").unwrap();
    let r = read_reply(&mut s);
    assert_eq!(r.status, 413, "{r:?}");
    assert!(r.body["error"].as_str().unwrap().contains("16384"), "{r:?}");

    // Chunked, with no length to refuse up front: refused once the cap is passed.
    let chunk = vec![b' '; 8192];
    let mut chunked = Vec::new();
    for _ in 0..3 {
        chunked.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
        chunked.extend(&chunk);
        chunked.extend(b"\r\n");
    }
    chunked.extend(b"0\r\n\r\n");
    let r = server.post(&[("Transfer-Encoding", "chunked")], &chunked);
    assert_eq!(r.status, 413, "{r:?}");

    // A small gzip body that inflates past the decoded cap.
    let bomb = gzip(&vec![b'\n'; 100_000]);
    assert!(bomb.len() < 16384);
    let r = server.post(&[("Content-Encoding", "gzip")], &bomb);
    assert_eq!(r.status, 413, "{r:?}");
    assert!(r.body["error"].as_str().unwrap().contains("decompressed"), "{r:?}");

    // One item over the event cap among good ones: only it is refused.
    let big = format!(
        "{{\"event_id\":\"big\",\"ts\":\"2026-01-05T00:00:00Z\",\"agent_id\":\"a\",\"action\":\"x\",\"resource\":\"{}\"}}",
        "r".repeat(3000)
    );
    let body = format!("{}\n{big}\n{}", lines[0], lines[1]);
    let r = server.post(&[], body.as_bytes());
    assert_eq!((r.status, r.body["accepted"].as_u64()), (200, Some(2)), "{r:?}");
    assert_eq!(
        (r.body["errors"][0]["line"].as_u64(), r.body["errors"][0]["code"].as_str()),
        (Some(2), Some("too_large"))
    );
    let summary = server.stop();
    assert_eq!(summary["dead_letters"]["too_large"], 1, "{summary}");
    assert_eq!(archived_ids(&archive), [event_id(&lines[0]), event_id(&lines[1])].into_iter().collect());
}

#[test]
fn a_saturated_server_answers_429_with_retry_after_and_loses_nothing() {
    // Room for 2,000 bytes of bodies being received at once, over all clients.
    let (_dir, lines, archive, server) = serve_with(
        "[http]\nmax_inflight_requests = 1\nmax_body_bytes = 2000\nbody_bytes_in_flight = 2000\nretry_after_seconds = 3\n\
         min_body_bytes_per_second = 0\n",
    );
    // A slow client has sent 1,880 bytes of its body (three events, then blank lines) and holds them.
    let mut body = lines[..3].join("\n");
    assert!(body.len() < 1900, "{}", body.len());
    body.push_str(&"\n".repeat(1900 - body.len()));
    let (first, rest) = body.as_bytes().split_at(1880);
    let mut slow = start_slowly(&server.addr, body.as_bytes(), first.len());
    // The server holds those bytes once it answers others with 429; until then it may still be reading.
    // Each probe is a different event, so one taken before the budget filled is not resent as a duplicate.
    let started = Instant::now();
    let mut probes = lines[30..].iter();
    let mut taken = Vec::new();
    let (busy, refused) = loop {
        let probe = probes.next().expect("ran out of probes before saturating");
        let r = server.post(&[], probe.as_bytes());
        if r.status == 429 {
            break (r, probe);
        }
        assert_eq!((r.status, r.body["accepted"].as_u64()), (200, Some(1)), "{r:?}");
        taken.push(probe);
        // A probe that held its bytes when the slow body arrived made that one the 429: start it again.
        if has_answer(&slow) {
            let r = read_reply(&mut slow);
            assert_eq!(r.status, 429, "{r:?}");
            slow = start_slowly(&server.addr, body.as_bytes(), first.len());
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never saturated");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(busy.header("retry-after"), Some("3"), "{busy:?}");
    assert!(busy.body["error"].as_str().unwrap().contains("being received"), "{busy:?}");

    // The slow client finishes and is answered; then the budget is free again.
    slow.write_all(rest).unwrap();
    let r = read_reply(&mut slow);
    assert_eq!((r.status, r.body["accepted"].as_u64()), (200, Some(3)), "{r:?}");
    let r = server.post(&[], lines[3..6].join("\n").as_bytes());
    assert_eq!((r.status, r.body["accepted"].as_u64()), (200, Some(3)), "{r:?}");
    let summary = server.stop();
    assert_eq!(summary["balanced"], true, "{summary}");
    // Exactly what was answered 200 is archived; the probe answered 429 was not taken.
    let expected: BTreeSet<String> = lines[..6].iter().chain(taken).map(|l| event_id(l)).collect();
    assert_eq!(archived_ids(&archive), expected, "429 for {refused}");
}

/// Issue 13, item 11: 64 clients sending their bodies at a byte a second held every in-flight slot
/// for the whole request timeout, and every honest request got 429. A body still arriving holds only
/// the bytes it sent, never a slot.
#[test]
fn slow_clients_cannot_hold_every_slot_and_shut_out_honest_requests() {
    let (_dir, lines, _archive, server) = serve_with("[http]\nmax_inflight_requests = 4\n");
    let body = lines[..3].join("\n");
    let slow: Vec<TcpStream> = (0..16).map(|_| start_slowly(&server.addr, body.as_bytes(), 10)).collect();
    std::thread::sleep(Duration::from_millis(300));
    for line in &lines[3..6] {
        let r = server.post(&[], line.as_bytes());
        assert_eq!((r.status, r.body["accepted"].as_u64()), (200, Some(1)), "{r:?}");
    }
    drop(slow);
    server.stop();
}

/// Issue 13, item 11: a body trickling in is cut at `min_body_bytes_per_second` (after two seconds),
/// not held for the whole `request_timeout_seconds`.
#[test]
fn a_body_slower_than_the_minimum_rate_gets_408_long_before_the_timeout() {
    let (_dir, lines, _archive, server) =
        serve_with("[http]\nmin_body_bytes_per_second = 100\nrequest_timeout_seconds = 60\n");
    let started = Instant::now();
    let mut slow = start_slowly(&server.addr, lines[0].as_bytes(), 10);
    let r = read_reply(&mut slow);
    assert_eq!(r.status, 408, "{r:?}");
    assert!(r.body["error"].as_str().unwrap().contains("slower than 100 bytes/s"), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "answered after {:?}", started.elapsed());
    server.stop();
}

#[test]
fn with_kafka_events_are_produced_keyed_by_agent_and_bad_items_go_to_the_dlq() {
    let broker = Broker::start();
    let dir = scratch();
    let lines = events(dir.path(), 20, "10m");
    // The control plane keeps its log under the archive root even when events go to Kafka.
    let archive = dir.path().join("archive");
    let server = Server::start(&[
        "--kafka",
        &broker.addr,
        "--topic",
        "web-events",
        "--archive",
        archive.to_str().unwrap(),
    ]);
    let mut body = lines[..200].join("\n");
    body.push_str("\n{\"event_id\":\"x\"}\n");
    let r = server.post(&[("Content-Encoding", "gzip")], &gzip(body.as_bytes()));
    assert_eq!(
        (r.status, r.body["accepted"].as_u64(), r.body["rejected"].as_u64()),
        (200, Some(200), Some(1)),
        "{r:?}"
    );
    let summary = server.stop();
    assert_eq!(
        (summary["valid"].as_u64(), summary["balanced"].as_bool()),
        (Some(200), Some(true)),
        "{summary}"
    );

    // Read back by an independent client: every event once, keyed by its agent_id.
    let got = kafka_tool(&["consume", &broker.addr, "web-events"]);
    let recs = got["records"].as_array().unwrap();
    assert_eq!(recs.len(), 200, "{got}");
    let mut ids = BTreeSet::new();
    for rec in recs {
        let ev: serde_json::Value = serde_json::from_str(rec["value"].as_str().unwrap()).unwrap();
        assert_eq!(rec["key"], ev["agent_id"], "{rec}");
        ids.insert(ev["event_id"].as_str().unwrap().to_owned());
    }
    let sent: BTreeSet<String> = lines[..200].iter().map(|l| event_id(l)).collect();
    assert_eq!(ids, sent);
    let dlq = kafka_tool(&["consume", &broker.addr, "web-events.dlq"]);
    let recs = dlq["records"].as_array().unwrap();
    assert_eq!(recs.len(), 1, "{dlq}");
    let h = &recs[0]["headers"];
    assert_eq!(
        (h["vigil.reason"].as_str(), h["vigil.stage"].as_str()),
        (Some("missing_field"), Some("http")),
        "{dlq}"
    );
    assert_eq!(h["vigil.item"], "201", "{dlq}");
    assert!(h["vigil.remote"].as_str().unwrap().starts_with("127.0.0.1:"), "{dlq}");
    assert_eq!(h["vigil.size"], "16", "{dlq}");
    assert_eq!(recs[0]["value"], "{\"event_id\":\"x\"}");
}

#[test]
fn with_kafka_a_full_producer_queue_answers_429_for_the_items_it_did_not_take() {
    let broker = Broker::start();
    let dir = scratch();
    let lines = events(dir.path(), 20, "10m");
    let config = dir.path().join("vigil.toml");
    std::fs::write(
        &config,
        format!(
            "[kafka]\nbrokers = \"{}\"\ntopics = [\"tight\"]\n[kafka.options]\n\"queue.buffering.max.messages\" = \"10\"\n",
            broker.addr
        ),
    )
    .unwrap();
    let archive = dir.path().join("archive");
    let server =
        Server::start(&["--config", config.to_str().unwrap(), "--archive", archive.to_str().unwrap()]);
    let mut left: Vec<&String> = lines[..100].iter().collect();
    let mut saturated = 0;
    for _round in 0..60 {
        let r = server.post(&[], left.iter().map(|l| l.as_str()).collect::<Vec<_>>().join("\n").as_bytes());
        let failed: BTreeSet<u64> = r.body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                assert_eq!(e["code"], "saturated", "{r:?}");
                e["line"].as_u64().unwrap()
            })
            .collect();
        if failed.is_empty() {
            assert_eq!((r.status, r.body["accepted"].as_u64()), (200, Some(left.len() as u64)), "{r:?}");
            left.clear();
            break;
        }
        saturated += 1;
        assert_eq!((r.status, r.header("retry-after")), (429, Some("1")), "{r:?}");
        assert_eq!(r.body["accepted"].as_u64().unwrap() + failed.len() as u64, left.len() as u64, "{r:?}");
        left = left
            .iter()
            .enumerate()
            .filter(|(i, _)| failed.contains(&(*i as u64 + 1)))
            .map(|(_, l)| *l)
            .collect();
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(left.is_empty(), "{} events never taken", left.len());
    assert!(saturated > 0, "a queue of 10 never filled with 100 events");
    server.stop();
    // Sent again after each 429, and still every event exactly once in the topic.
    let got = kafka_tool(&["consume", &broker.addr, "tight"]);
    let ids: Vec<String> =
        got["records"].as_array().unwrap().iter().map(|r| event_id(r["value"].as_str().unwrap())).collect();
    let distinct: BTreeSet<String> = ids.iter().cloned().collect();
    assert_eq!((ids.len(), distinct), (100, lines[..100].iter().map(|l| event_id(l)).collect()));
}

#[test]
fn a_client_too_slow_to_send_its_body_gets_408_and_the_server_carries_on() {
    let (_dir, lines, _, server) = serve_with("[http]\nrequest_timeout_seconds = 1\n");
    let mut slow = start_slowly(&server.addr, lines[0].as_bytes(), 10);
    let started = Instant::now();
    let r = read_reply(&mut slow);
    assert_eq!(r.status, 408, "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "answered after {:?}", started.elapsed());
    let r = server.post(&[], lines[1].as_bytes());
    assert_eq!((r.status, r.body["accepted"].as_u64()), (200, Some(1)), "{r:?}");
    let summary = server.stop();
    assert_eq!((summary["valid"].as_u64(), summary["lines"].as_u64()), (Some(1), Some(1)), "{summary}");
}

#[test]
fn an_archive_that_cannot_be_written_stops_the_server_and_a_restart_archives_the_journal() {
    let (dir, lines, archive, mut server) = serve_with("[archive]\nflush_rows = 5\n");
    // Where the events table belongs, a file: the first flush cannot make its folders.
    std::fs::write(archive.join("events"), b"in the way").unwrap();
    let r = server.post(&[], lines[..5].join("\n").as_bytes());
    assert_eq!((r.status, r.body["accepted"].as_u64()), (200, Some(5)), "{r:?}");
    // The flush fails: the server does not carry on taking what it cannot archive; it stops, with the
    // error, and what it answered 200 for is in its journal.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the server kept running");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(2));
    // The operator clears the way and starts it again: the journal is archived before anything else.
    std::fs::remove_file(archive.join("events")).unwrap();
    let config = dir.path().join("vigil.toml");
    let server =
        Server::start(&["--config", config.to_str().unwrap(), "--archive", archive.to_str().unwrap()]);
    let summary = server.stop();
    assert_eq!((summary["recovered"].as_u64(), summary["valid"].as_u64()), (Some(5), Some(5)), "{summary}");
    assert_eq!(archived_ids(&archive), lines[..5].iter().map(|l| event_id(l)).collect());
}

/// Issue 13, item 17: on a full disk, a request answered 500 "not taken" had partly been taken. Its items
/// were buffered in the lane and archived as the server stopped, and the whole records that the failed
/// journal sync had written came back on a restart. The disk is really full: the intake journal is on a
/// 256 KiB tmpfs of the server's own (a private mount namespace, which needs no privilege beyond
/// `unshare`), copied out when the server has stopped.
#[test]
fn a_request_refused_on_a_full_disk_leaves_nothing_of_itself_behind() {
    let dir = scratch();
    let lines = events(dir.path(), 5, "30m");
    let archive = dir.path().join("archive");
    let journal = archive.join("_vigil/journal/http");
    std::fs::create_dir_all(&journal).unwrap();
    let kept = dir.path().join("journal-kept");
    // No flush on the clock: the first request stays in the journal until the restart archives it.
    let config = dir.path().join("vigil.toml");
    std::fs::write(&config, "[archive]\nflush_seconds = 3600.0\n").unwrap();
    // The server is sh's child in a PID namespace of its own: if the test fails, killing unshare ends it.
    let mut cmd = Command::new("unshare");
    cmd.args(["--user", "--map-root-user", "--mount", "--pid", "--fork", "--kill-child", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=256k vigil-full "$JOURNAL" || exit 99; "$@"; rc=$?; cp -a "$JOURNAL" "$KEPT"; exit $rc"#)
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_vigil"))
        .args(["serve", "--listen", "127.0.0.1:0", "--json", "--config"])
        .arg(&config)
        .arg("--archive")
        .arg(&archive)
        .env("JOURNAL", &journal)
        .env("KEPT", &kept);
    let mut server = Server::spawn(cmd);
    let r = server.post(&[], lines[..20].join("\n").as_bytes());
    assert_eq!((r.status, r.body["accepted"].as_u64()), (200, Some(20)), "{r:?}");
    // About 1 MB of items: the journal sync runs out of room part of the way through.
    let big = lines[20..].join("\n");
    assert!(big.len() > 512 << 10, "{} bytes", big.len());
    let r = server.post(&[], big.as_bytes());
    assert_eq!(r.status, 500, "{r:?}");
    assert!(r.body.to_string().contains("not taken"), "{r:?}");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "the server kept running:\n{}", server.said());
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(2), "{}", server.said());
    // A restart with room, on the journal as the full disk left it: exactly the 20 answered 200 come back.
    std::fs::remove_dir_all(&journal).unwrap();
    std::fs::rename(&kept, &journal).unwrap();
    let server =
        Server::start(&["--config", config.to_str().unwrap(), "--archive", archive.to_str().unwrap()]);
    let summary = server.stop();
    assert_eq!(summary["recovered"].as_u64(), Some(20), "{summary}");
    assert_eq!(archived_ids(&archive), lines[..20].iter().map(|l| event_id(l)).collect());
}

#[test]
fn findings_of_http_events_are_archived_and_written_as_ndjson() {
    let dir = scratch();
    let archive = dir.path().join("archive");
    let findings = dir.path().join("findings.ndjson");
    let server =
        Server::start(&["--archive", archive.to_str().unwrap(), "--findings", findings.to_str().unwrap()]);
    // One agent acting 700 times in a minute: over the default cap of 600, a rate_limit finding.
    let body: Vec<String> = (0..700)
        .map(|i| {
            format!(
                r#"{{"event_id":"r{i}","ts":{},"agent_id":"looping-agent","action":"api.call","resource":"https://x/y"}}"#,
                1_767_600_000_000i64 + i * 50
            )
        })
        .collect();
    let r = server.post(&[], body.join("\n").as_bytes());
    assert_eq!((r.status, r.body["accepted"].as_u64()), (200, Some(700)), "{r:?}");
    let summary = server.stop();
    let kinds = summary["findings"].as_object().unwrap();
    assert!(kinds.keys().any(|k| k.starts_with("rate_limit/")), "{summary}");
    let written: Vec<serde_json::Value> = std::fs::read_to_string(&findings)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        written.iter().any(|f| f["kind"] == "rate_limit" && f["agent_id"] == "looping-agent"),
        "{written:?}"
    );
    let archived = archive_py("rows", &archive, &["findings", "finding_id"]);
    assert_eq!(archived["duckdb"].as_array().unwrap().len(), written.len());
}

/// Issue 13, item 1: 64 MiB of newlines gzipped to about 65 KB (inside every byte limit) made the
/// pipeline reserve a slot per line and abort on a 33 GB allocation, and 8 MiB of plain newlines took
/// the server to 1.2 GB with a 277 MB journal. Now a body over `max_items_per_request` items is refused
/// with 413 before anything of it is kept or journaled, and the server carries on.
#[test]
fn a_65_kb_gzip_body_of_newlines_gets_413_and_the_server_carries_on() {
    let dir = scratch();
    let lines = events(dir.path(), 5, "10m");
    let archive = dir.path().join("archive");
    let server = Server::start(&["--archive", archive.to_str().unwrap()]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b'\n'; 64 << 20]).unwrap();
    let bomb = gz.finish().unwrap();
    assert!(bomb.len() < 100_000, "{} bytes", bomb.len());
    let r = server.post(&[("Content-Encoding", "gzip")], &bomb);
    assert_eq!(r.status, 413, "{r:?}");
    assert!(r.body["error"].as_str().unwrap().contains("more than 100000 items"), "{r:?}");
    let r = server.post(&[], &vec![b'\n'; 8 << 20]);
    assert_eq!(r.status, 413, "{r:?}");
    // Nothing of them was journaled; honest requests go on being taken.
    assert!(journal_bytes(&archive) < 1 << 20, "{} journal bytes", journal_bytes(&archive));
    let r = server.post(&[], lines[..50].join("\n").as_bytes());
    assert_eq!((r.status, r.body["accepted"].as_u64()), (200, Some(50)), "{r:?}");
    let summary = server.stop();
    assert_eq!(summary["valid"], 50, "{summary}");
}

/// One hand-written event stamped now.
fn event_now(id: &str, agent: &str, extra: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis();
    format!(
        r#"{{"event_id":"{id}","ts":{now},"agent_id":"{agent}","action":"data.read","resource":"postgres://x/t"{extra}}}"#
    )
}

/// Issue 13, item 7: dedup was global, so a sender that posted a real critical event's id first (for
/// an agent of its own) had the real event refused as a duplicate. An id is unique per agent now.
#[test]
fn an_event_id_sent_first_for_another_agent_does_not_suppress_the_real_one() {
    let (_dir, _lines, _archive, server) = serve_with("");
    let r = server.post(&[], event_now("crit-1", "intruder", "").as_bytes());
    assert_eq!((r.status, r.body["accepted"].as_u64()), (200, Some(1)), "{r:?}");
    let real = event_now("crit-1", "finance-bot", "");
    let r = server.post(&[], real.as_bytes());
    assert_eq!((r.status, r.body["accepted"].as_u64()), (200, Some(1)), "{r:?}");
    // A resend by the same agent is still a duplicate.
    let r = server.post(&[], real.as_bytes());
    assert_eq!((r.status, r.body["errors"][0]["code"].as_str()), (400, Some("duplicate_event_id")), "{r:?}");
    server.stop();
}

/// Issue 13, item 7: anyone reaching `vigil serve` could post events for any agent (halt it, frame it).
/// With senders declared, a request needs a sender's token, and carries only the agents (and sources)
/// that sender was granted; the rest is refused as `not_permitted`, dead-lettered, and stays refused
/// when the journal is replayed after a kill -9.
#[test]
fn anonymous_and_foreign_senders_cannot_post_for_agents_they_were_not_granted() {
    let dir = scratch();
    let (support, ops) = (dir.path().join("support.token"), dir.path().join("ops.token"));
    std::fs::write(&support, "support-gateway-secret-0123456789\n").unwrap();
    std::fs::write(&ops, "ops-gateway-secret-0123456789").unwrap();
    let config = dir.path().join("vigil.toml");
    std::fs::write(
        &config,
        format!(
            "[archive]\nflush_seconds = 3600\n\n[[http.sender]]\nname = \"support-gateway\"\ntoken_file = {:?}\n\
             agents = [\"support-*\"]\n\n[[http.sender]]\nname = \"ops-gateway\"\ntoken_file = {:?}\n\
             agents = [\"ops-*\"]\nsources = [\"k8s-audit\"]\n",
            support, ops
        ),
    )
    .unwrap();
    let archive = dir.path().join("archive");
    let args = ["--config", config.to_str().unwrap(), "--archive", archive.to_str().unwrap()];
    let server = Server::start(&args);
    let as_support = [("Authorization", "Bearer support-gateway-secret-0123456789")];
    let as_ops = [("Authorization", "Bearer ops-gateway-secret-0123456789")];
    let e1 = event_now("e1", "support-1", "");
    // No token, or one nobody was given: 401, nothing taken.
    for headers in [&[][..], &[("Authorization", "Bearer support-gateway-secret-012345678X")]] {
        let r = server.post(headers, e1.as_bytes());
        assert_eq!(r.status, 401, "{r:?}");
        assert!(r.headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("www-authenticate") && v == "Bearer"));
    }
    // The support gateway may speak for support agents only.
    let body = [e1.clone(), event_now("e2", "ops-1", ""), event_now("e3", "support-2", "")].join("\n");
    let r = server.post(&as_support, body.as_bytes());
    assert_eq!((r.status, r.body["accepted"].as_u64()), (200, Some(2)), "{r:?}");
    assert_eq!(
        (r.body["errors"][0]["line"].as_u64(), r.body["errors"][0]["code"].as_str()),
        (Some(2), Some("not_permitted"))
    );
    let r = server.post(&as_support, event_now("e4", "ops-1", "").as_bytes());
    assert_eq!(r.status, 403, "{r:?}");
    assert!(
        r.body["errors"][0]["error"]
            .as_str()
            .unwrap()
            .contains(r#"sender "support-gateway" may not send events with agent_id "ops-1""#),
        "{r:?}"
    );
    // The ops gateway: its agents, and only from its source.
    let r = server.post(&as_ops, event_now("e5", "ops-1", r#","source":"k8s-audit""#).as_bytes());
    assert_eq!((r.status, r.body["accepted"].as_u64()), (200, Some(1)), "{r:?}");
    let r = server.post(&as_ops, event_now("e6", "ops-1", "").as_bytes());
    assert_eq!((r.status, r.body["errors"][0]["code"].as_str()), (403, Some("not_permitted")), "{r:?}");
    // kill -9 before any flush: everything is in the journal alone. The restart replays it, the
    // refusals included, though the replay knows no sender.
    drop(server);
    let summary = Server::start(&args).stop();
    assert_eq!(
        (summary["recovered"].as_u64(), summary["balanced"].as_bool()),
        (Some(6), Some(true)),
        "{summary}"
    );
    assert_eq!(summary["dead_letters"]["not_permitted"], 3, "{summary}");
    assert_eq!(archived_ids(&archive), ["e1", "e3", "e5"].iter().map(|s| s.to_string()).collect());
    let dead = archive_py("rows", &archive, &["dead-letters", "_position"]);
    let reasons: Vec<_> =
        dead["duckdb"].as_array().unwrap().iter().map(|r| r["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["not_permitted"; 3], "{dead}");
}

/// Issue 13, item 7: `--listen 0.0.0.0` served anonymous POSTs without a word. Beyond loopback, the
/// intake needs declared senders; it is refused before anything listens.
#[test]
fn serving_events_beyond_loopback_without_senders_is_refused() {
    let dir = scratch();
    let token = dir.path().join("api.token");
    std::fs::write(&token, "api-admin-secret-0123456789").unwrap();
    let config = dir.path().join("vigil.toml");
    std::fs::write(&config, format!("[api]\ntoken_file = {token:?}\n")).unwrap();
    let out = vigil()
        .args(["serve", "--listen", "0.0.0.0:0", "--config"])
        .arg(&config)
        .arg("--archive")
        .arg(dir.path().join("archive"))
        .output()
        .expect("vigil serve runs");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("refusing to take events on 0.0.0.0:0 from anyone") && said.contains("[[http.sender]]"),
        "{said}"
    );
    assert!(!dir.path().join("archive").exists(), "nothing was opened");
}

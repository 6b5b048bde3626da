//! Kafka end to end, against a real Kafka-protocol broker (tansu) on loopback, with an independent
//! client (confluent-kafka) producing the input and reading vigil's output topics.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

/// Session timeout of the members the tests kill: short, so the group moves on quickly.
const SESSION_MS: u64 = 6000;

/// The Kafka tests run one at a time: each starts a broker and several vigil processes, and two
/// machines' worth of them at once on two cores would turn timing into the thing under test.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Writes `good` simulated events plus some bad lines to a file; returns (total lines, bad lines).
fn input(
    dir: &Path,
    agents: usize,
    duration: &str,
    rate: f64,
    seed: u64,
) -> (std::path::PathBuf, u64, Vec<String>) {
    let path = dir.join("in.ndjson");
    let n = simulate(&path, agents, duration, rate, 4, seed);
    let bad = vec![
        "{not json".to_owned(),
        r#"{"event_id":"b1","ts":1,"agent_id":"a"}"#.to_owned(),
        r#"{"event_id":"b2","ts":"yesterday","agent_id":"a","action":"x","resource":"y"}"#.to_owned(),
    ];
    let mut text = std::fs::read_to_string(&path).unwrap();
    for b in &bad {
        text.push_str(b);
        text.push('\n');
    }
    std::fs::write(&path, text).unwrap();
    (path, n, bad)
}

#[test]
fn a_topic_lands_in_the_archive_exactly_once_and_bad_records_in_the_dlq() {
    let _serial = serial();
    let broker = Broker::start();
    let dir = scratch();
    let (path, n, bad) = input(dir.path(), 60, "30m", 20.0, 3);
    kafka_tool(&["create", &broker.addr, "events", "3"]);
    let produced = kafka_tool(&["produce", &broker.addr, "events", path.to_str().unwrap()]);
    assert_eq!(produced["produced"], n + bad.len() as u64);

    let archive = dir.path().join("archive");
    let status = dir.path().join("status.toml");
    std::fs::write(
        &status,
        "[output]\nstatus_seconds = 0.5\n[kafka]\nbrokers = \"-\"\ntopics = [\"events\"]\nstatistics_ms = 500\n",
    )
    .unwrap();
    let out = ok(kafka_member(&broker, "events", "vigil-a", &archive, Some(&status), "3s").output().unwrap());
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["balanced"], true, "{summary}");
    assert_eq!(summary["valid"], n, "{summary}");
    // While it runs, a member says how it is doing: lines since the last status line, totals, lag.
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("INFO run --kafka: ") && said.contains("; lag "), "{said}");
    assert_eq!(summary["dead_lettered"], bad.len(), "{summary}");
    let counts = archive_py("event-counts", &archive, &[]);
    assert_eq!((counts["rows"].as_u64(), counts["distinct"].as_u64()), (Some(n), Some(n)), "{counts}");

    // Files are named after Kafka offsets, and `_position` is the offset.
    let rows = archive_py("rows", &archive, &["events", "_position"]);
    let rows = rows["duckdb"].as_array().unwrap();
    assert_eq!(rows[0]["_position"], 0, "the first offset is 0: {}", rows[0]);
    assert!(rows.iter().all(|r| r["_source"] == "events"));

    // Every bad record is in the DLQ with its reason and where it came from; the offset header points
    // back at the original record.
    let dlq = kafka_tool(&["consume", &broker.addr, "events.dlq"]);
    let recs = dlq["records"].as_array().unwrap();
    assert_eq!(recs.len(), bad.len(), "{dlq}");
    let originals = kafka_tool(&["consume", &broker.addr, "events"]);
    let by_pos: BTreeMap<(String, String), String> = originals["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            ((r["partition"].to_string(), r["offset"].to_string()), r["value"].as_str().unwrap().to_owned())
        })
        .collect();
    let mut reasons: Vec<&str> = Vec::new();
    for r in recs {
        let h = &r["headers"];
        assert_eq!(h["vigil.topic"], "events");
        assert_eq!(h["vigil.stage"], "decode");
        let origin = (
            h["vigil.partition"].as_str().unwrap().to_owned(),
            h["vigil.offset"].as_str().unwrap().to_owned(),
        );
        assert_eq!(by_pos.get(&origin), r["value"].as_str().map(str::to_owned).as_ref(), "{r}");
        reasons.push(h["vigil.reason"].as_str().unwrap());
    }
    reasons.sort();
    assert_eq!(reasons, ["bad_timestamp", "missing_field", "not_json"]);

    // Offsets were committed for everything, so the group has nothing left to read.
    let committed = kafka_tool(&["committed", &broker.addr, "vigil-a", "events"]);
    let total: u64 = committed.as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(total, n + bad.len() as u64, "{committed}");
    let again = run_kafka(&broker, "events", "vigil-a", &archive, None, "2s");
    assert_eq!(again["lines"], 0, "{again}");

    // Findings are also on the findings topic, keyed by agent, one record per archived finding row.
    let findings = kafka_tool(&["consume", &broker.addr, "vigil.findings", "2"]);
    let on_topic = findings["records"].as_array().unwrap();
    let archived = archive_py("rows", &archive, &["findings", "finding_id"]);
    assert_eq!(on_topic.len(), archived["duckdb"].as_array().unwrap().len());
    for r in on_topic {
        let f: serde_json::Value = serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
        assert_eq!(r["key"], f["agent_id"]);
    }

    // A second group reading the same topic into a fresh archive gets the same events: replay is
    // deterministic.
    let other = dir.path().join("other");
    run_kafka(&broker, "events", "vigil-b", &other, None, "3s");
    assert_eq!(archive_py("event-counts", &other, &[]), counts);
}

#[test]
fn kill_9_while_consuming_loses_nothing_and_duplicates_nothing() {
    let _serial = serial();
    let broker = Broker::start();
    let dir = scratch();
    let (path, n, bad) = input(dir.path(), 200, "2h", 45.0, 5);
    assert!(n > 90_000, "{n}");
    kafka_tool(&["create", &broker.addr, "events", "4"]);
    kafka_tool(&["produce", &broker.addr, "events", path.to_str().unwrap()]);
    let config = dir.path().join("v.toml");
    // Small flushes, so kills land between, during and after commits, and parts ahead of each flush,
    // so they also land while files opened by parts are half written.
    // A killed member's session expires quickly, so the restarted one is assigned quickly.
    std::fs::write(
        &config,
        format!(
            "[archive]\nflush_rows = 8000\npart_rows = 1500\n[kafka]\nbrokers = \"-\"\ntopics = [\"events\"]\n\
             [kafka.options]\n\"session.timeout.ms\" = \"{SESSION_MS}\"\n"
        ),
    )
    .unwrap();
    let archive = dir.path().join("archive");
    let mut kills = 0;
    // Each member is killed while it consumes, then the next one starts once the killed one's session
    // has expired, so it joins a group whose membership has settled (tansu's coordinator can lose track
    // of a member that dies in the middle of joining).
    for delay_ms in [1800u64, 2600, 1500, 2200, 3000, 2000, 2400] {
        let member = kafka_member(&broker, "events", "g", &archive, Some(&config), "3s");
        kills += u32::from(kill_after(member, Duration::from_millis(delay_ms)));
        let counts = archive_py("event-counts", &archive, &[]);
        assert_eq!(counts["rows"], counts["distinct"], "after a kill at {delay_ms} ms: {counts}");
        std::thread::sleep(Duration::from_millis(SESSION_MS + 500));
    }
    assert!(kills >= 5, "vigil finished too fast to be killed mid-way ({kills} kills)");
    // Killed members hold their partitions until their sessions expire (6 s): wait longer than that.
    let last = run_kafka(&broker, "events", "g", &archive, Some(&config), "15s");
    assert_eq!(last["balanced"], true, "{last}");
    let counts = archive_py("event-counts", &archive, &[]);
    assert_eq!((counts["rows"].as_u64(), counts["distinct"].as_u64()), (Some(n), Some(n)), "{counts}");
    assert_eq!(archive_py("open-all", &archive, &[])["tmp"], 0);
    // Every bad record reached the DLQ at least once (a kill between produce and commit may repeat one,
    // which is what at-least-once allows for the DLQ topic), and exactly once in the archive.
    let dlq = kafka_tool(&["consume", &broker.addr, "events.dlq"]);
    let offsets: std::collections::BTreeSet<String> = dlq["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{}/{}", r["headers"]["vigil.partition"], r["headers"]["vigil.offset"]))
        .collect();
    assert_eq!(offsets.len(), bad.len(), "{dlq}");
    let dead = archive_py("rows", &archive, &["dead-letters", "_position"]);
    assert_eq!(dead["duckdb"].as_array().unwrap().len(), bad.len());
}

/// The example config (the simulator's role policies) with small flushes and a short session timeout,
/// so crashed members are replaced within seconds.
fn member_config(dir: &Path) -> std::path::PathBuf {
    let example =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/vigil.toml")).unwrap();
    let text = example
        .replace("flush_rows = 250000", "flush_rows = 5000")
        .replace("part_rows = 65536", "part_rows = 1000")
        .replace("flush_seconds = 10.0", "flush_seconds = 1.0")
        + "\n[kafka]\nbrokers = \"-\"\ntopics = [\"events\"]\n[kafka.options]\n\"session.timeout.ms\" = \"6000\"\n";
    let path = dir.join("member.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// How many records of `topic` the consumer group `group` has committed, over every partition (a
/// partition without a commit counts as none).
fn committed_sum(broker: &Broker, group: &str, topic: &str) -> u64 {
    let at = kafka_tool(&["committed", &broker.addr, group, topic]);
    at.as_object().unwrap().values().map(|v| v.as_i64().unwrap().max(0) as u64).sum()
}

/// The lines of `path`, and `n` files beside it holding them in order, in `n` equal parts (the last takes
/// the rest), to be produced one phase at a time.
fn split_input(path: &Path, n: usize) -> (Vec<String>, Vec<std::path::PathBuf>) {
    let lines: Vec<String> = std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect();
    let size = lines.len() / n;
    let parts = (0..n)
        .map(|i| {
            let end = if i + 1 == n { lines.len() } else { (i + 1) * size };
            let p = path.with_extension(format!("part{i}.ndjson"));
            std::fs::write(&p, lines[i * size..end].join("\n") + "\n").unwrap();
            p
        })
        .collect();
    (lines, parts)
}

/// Finding ids with their final severity, as archived: the detector's. `halted_agent_activity` (an agent
/// acting after its halt) is the breakers', and breakers are shared by every member through the control
/// topic, which outlives a run: a later run in the same test can start with an earlier run's halts in
/// force, so those findings follow the breakers' history, not detection (seen with a fleet whose runaway
/// agent hit the rate cap in two minutes seven apart: one halt or two, depending on what was in force).
fn archived_findings(archive: &Path) -> BTreeMap<String, String> {
    let rows = archive_py("rows", archive, &["findings", "finding_id"]);
    let rank = |s: &str| ["low", "medium", "high", "critical"].iter().position(|x| *x == s).unwrap();
    let mut m: BTreeMap<String, String> = BTreeMap::new();
    for r in rows["duckdb"].as_array().unwrap().iter().filter(|r| r["kind"] != "halted_agent_activity") {
        let (id, sev) =
            (r["finding_id"].as_str().unwrap().to_owned(), r["severity"].as_str().unwrap().to_owned());
        let keep = m.get(&id).is_none_or(|old| rank(old) < rank(&sev));
        if keep {
            m.insert(id, sev);
        }
    }
    m
}

#[test]
fn two_members_split_the_partitions_and_survive_one_dying_mid_stream() {
    let _serial = serial();
    let broker = Broker::start();
    let dir = scratch();
    let (path, n, bad) = input(dir.path(), 150, "3h", 25.0, 8);
    kafka_tool(&["create", &broker.addr, "events", "4"]);
    // The input in three parts: one while A is alone, one while A and B share the partitions, one after
    // A died, so each phase's owner is known whatever the machine's speed.
    let (lines, parts) = split_input(&path, 3);
    let third = lines.len() / 3;
    let produce = |i: usize| kafka_tool(&["produce", &broker.addr, "events", parts[i].to_str().unwrap()]);
    let config = member_config(dir.path());
    let archive = dir.path().join("archive");
    // Each member's stderr goes to a file, so a member that exits early says why.
    let log = |name: &str| dir.path().join(format!("member-{name}.log"));
    // Neither member has an idle exit that could fire while A's partitions wait for its session to
    // expire (on a loaded machine that wait is long): B is stopped once the group has committed it all.
    let member = |name: &str| {
        kafka_member(&broker, "events", "pair", &archive, Some(&config), "1h")
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(log(name)).unwrap())
            .spawn()
            .unwrap()
    };
    produce(0);
    let mut a = member("a");
    std::thread::sleep(Duration::from_secs(4));
    // B joins: a rebalance mid-stream; A hands over the partitions B gets, flushed and committed.
    let b = member("b");
    std::thread::sleep(Duration::from_secs(4));
    produce(1);
    std::thread::sleep(Duration::from_secs(2));
    // A dies; once its session expires B owns every partition and resumes A's from A's commits and
    // A's detector state.
    if let Some(status) = a.try_wait().unwrap() {
        let said = std::fs::read_to_string(log("a")).unwrap_or_default();
        panic!("A should still be a member, but it exited ({status}), saying:\n{said}");
    }
    a.kill().unwrap();
    a.wait().unwrap();
    produce(2);
    let total = n + bad.len() as u64;
    // Every line consumed and committed (good ones archived, bad ones dead-lettered): A's share up to
    // its death by A, the rest by B once the group gave it A's partitions.
    let started = Instant::now();
    while committed_sum(&broker, "pair", "events") < total {
        if started.elapsed() > Duration::from_secs(300) {
            let said = std::fs::read_to_string(log("b")).unwrap_or_default();
            let at = kafka_tool(&["committed", &broker.addr, "pair", "events"]);
            panic!("the group committed {at} of {total} lines in 300 s; B said:\n{said}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    ok(Command::new("kill").args(["-TERM", &b.id().to_string()]).output().unwrap());
    let out = b.wait_with_output().unwrap();
    assert!(out.status.success(), "B exited {:?}", out.status);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let b_lines = summary["lines"].as_u64().unwrap();
    // A read the first part alone, B the last part (at least A's partitions of it): both did work.
    assert!(
        b_lines >= (lines.len() - 2 * third) as u64 / 4 && b_lines < total,
        "B read {b_lines} of {total}"
    );

    let counts = archive_py("event-counts", &archive, &[]);
    assert_eq!((counts["rows"].as_u64(), counts["distinct"].as_u64()), (Some(n), Some(n)), "{counts}");
    let dead = archive_py("rows", &archive, &["dead-letters", "_position"]);
    assert_eq!(dead["duckdb"].as_array().unwrap().len(), bad.len());

    // Detection did not notice the moves: one member alone, from scratch, finds exactly the same.
    let alone = dir.path().join("alone");
    run_kafka(&broker, "events", "alone", &alone, Some(&config), "5s");
    let want = archived_findings(&alone);
    assert!(want.len() >= 3, "the fleet's incidents give findings: {want:?}");
    assert_eq!(archived_findings(&archive), want);
}

#[test]
fn the_load_generator_produces_the_fleet_keyed_by_agent_at_the_asked_rate() {
    let _serial = serial();
    let broker = Broker::start();
    let dir = scratch();
    let file = dir.path().join("fleet.ndjson");
    let n = simulate(&file, 40, "20m", 5.0, 2, 21);
    let started = Instant::now();
    ok(vigil()
        .args([
            "simulate",
            "--agents",
            "40",
            "--duration",
            "20m",
            "--rate",
            "5",
            "--incidents",
            "2",
            "--seed",
            "21",
        ])
        .args(["--kafka", &broker.addr, "--topic", "fleet", "--partitions", "3", "--produce-rate", "4000"])
        .output()
        .unwrap());
    let secs = started.elapsed().as_secs_f64();
    assert!(secs >= n as f64 / 4000.0, "{n} events in {secs:.2}s is faster than 4000/s");
    let got = kafka_tool(&["consume", &broker.addr, "fleet"]);
    let recs = got["records"].as_array().unwrap();
    assert_eq!(recs.len() as u64, n);
    // The same events as the file, each keyed by its agent, each agent in one partition and in order.
    let mut want: Vec<String> = std::fs::read_to_string(&file).unwrap().lines().map(str::to_owned).collect();
    let mut have: Vec<String> = recs.iter().map(|r| r["value"].as_str().unwrap().to_owned()).collect();
    want.sort();
    have.sort();
    assert!(want == have, "the topic holds other events than the file");
    // Records come back in offset order per partition: each agent's events must be in time order there.
    let mut seen: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for r in recs {
        let ev: serde_json::Value = serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
        assert_eq!(r["key"], ev["agent_id"]);
        let (p, ts) = (r["partition"].as_i64().unwrap(), ev["ts"].as_str().unwrap().to_owned());
        let e = seen.entry(ev["agent_id"].as_str().unwrap().to_owned()).or_insert((p, ts.clone()));
        assert_eq!(e.0, p, "an agent's events stay in one partition");
        assert!(e.1 <= ts, "{} out of order: {} after {}", ev["agent_id"], ts, e.1);
        e.1 = ts;
    }
    // Every agent of the file is in the topic (in a short fleet some agents, joining late or between
    // bursts, make no event at all).
    let agents: std::collections::BTreeSet<String> = want
        .iter()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["agent_id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert!(agents.len() >= 30, "{} agents of 40 made events", agents.len());
    assert_eq!(seen.keys().cloned().collect::<std::collections::BTreeSet<_>>(), agents);
}

#[test]
fn sigterm_stops_a_member_cleanly_with_everything_committed() {
    let _serial = serial();
    let broker = Broker::start();
    let dir = scratch();
    let (path, n, bad) = input(dir.path(), 30, "30m", 10.0, 4);
    kafka_tool(&["create", &broker.addr, "events", "2"]);
    kafka_tool(&["produce", &broker.addr, "events", path.to_str().unwrap()]);
    let archive = dir.path().join("archive");
    // No idle exit: the member runs until it is told to stop. Flushes every 10 s by default, so what
    // it consumed is not all committed yet when the signal comes.
    let mut cmd = vigil();
    cmd.args(["run", "--json", "--kafka", &broker.addr, "--topic", "events", "--group", "term"])
        .arg("--archive")
        .arg(&archive)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null());
    let child = cmd.spawn().unwrap();
    let total = n + bad.len() as u64;
    let started = Instant::now();
    loop {
        // Consumed and partly committed; wait a moment more so the tail is read but not yet committed.
        if committed_sum(&broker, "term", "events") > 0 || started.elapsed() > Duration::from_secs(60) {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(2));
    ok(Command::new("kill").args(["-TERM", &child.id().to_string()]).output().unwrap());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "exit {:?}", out.status);
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["lines"], total, "{summary}");
    let committed = kafka_tool(&["committed", &broker.addr, "term", "events"]);
    let sum: u64 = committed.as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
    assert_eq!(sum, total, "{committed}");
    let counts = archive_py("event-counts", &archive, &[]);
    assert_eq!(counts["rows"].as_u64(), Some(n), "{counts}");
}

/// A newly assigned partition whose archive lock another process still holds (the member the group
/// took it from, stalled past its session and sharing the archive root) is waited for: the member
/// takes it once it is let go, instead of stopping at once naming the holder.
#[test]
fn a_partition_still_locked_by_its_previous_owner_is_waited_for() {
    let _serial = serial();
    let broker = Broker::start();
    let dir = scratch();
    let (path, n, bad) = input(dir.path(), 20, "10m", 10.0, 5);
    kafka_tool(&["create", &broker.addr, "events", "2"]);
    kafka_tool(&["produce", &broker.addr, "events", path.to_str().unwrap()]);
    let archive = dir.path().join("archive");
    let locks = archive.join("_vigil/locks");
    std::fs::create_dir_all(&locks).unwrap();
    let held = vigil_ingest::lockfile::take(&locks.join("events-0.lock")).unwrap().expect("the lock is free");
    let mut cmd = vigil();
    cmd.args(["run", "--json", "--kafka", &broker.addr, "--topic", "events", "--group", "locked"])
        .args(["--idle-exit", "2s", "--archive"])
        .arg(&archive)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    std::thread::sleep(Duration::from_secs(5));
    assert!(child.try_wait().unwrap().is_none(), "the member waits for the lock instead of stopping");
    drop(held);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(stderr.contains("still held by another process"), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["lines"], n + bad.len() as u64, "{summary}");
    let counts = archive_py("event-counts", &archive, &[]);
    assert_eq!(counts["rows"].as_u64(), Some(n), "{counts}");
}

#[test]
fn a_member_with_its_own_archive_resumes_partitions_with_their_state_from_the_state_topic() {
    let _serial = serial();
    let broker = Broker::start();
    let dir = scratch();
    let (path, n, _) = input(dir.path(), 150, "3h", 25.0, 8);
    kafka_tool(&["create", &broker.addr, "events", "4"]);
    let (lines, parts) = split_input(&path, 2);
    let half = lines.len() / 2;
    let with_state = member_config(dir.path());
    let text = std::fs::read_to_string(&with_state).unwrap();
    let without_state = dir.path().join("no-state.toml");
    std::fs::write(
        &without_state,
        text.replace("topics = [\"events\"]\n", "topics = [\"events\"]\nstate_topic = \"\"\n"),
    )
    .unwrap();
    // Issue 13, item 10: a state bigger than one record stopped the partition's commits. With records of
    // 2 KiB, each partition's state (about 40 agents) goes in pieces.
    let in_pieces = dir.path().join("pieces.toml");
    std::fs::write(
        &in_pieces,
        text.replace(
            "topics = [\"events\"]\n",
            "topics = [\"events\"]\nstate_topic = \"vigil.state.pieces\"\nstate_max_bytes = 2048\n",
        ),
    )
    .unwrap();

    // Machine A reads the first half into its archive and stops; machine B, with an archive of its own,
    // reads the second half. Three times: with the state topic, with it in pieces, and without it.
    kafka_tool(&["produce", &broker.addr, "events", parts[0].to_str().unwrap()]);
    let run = |group: &str, name: &str, config: &Path| {
        run_kafka(&broker, "events", group, &dir.path().join(name), Some(config), "4s")
    };
    // The three groups share nothing but the topic, so each phase runs them side by side (their group
    // joins overlap).
    let phase = |names: [&str; 3]| {
        let groups = [("moving", &with_state), ("pieced", &in_pieces), ("stuck", &without_state)];
        std::thread::scope(|s| {
            let runs: Vec<_> = groups
                .iter()
                .zip(names)
                .map(|((group, config), name)| s.spawn(move || run(group, name, config)))
                .collect();
            runs.into_iter().map(|r| r.join().unwrap()).collect::<Vec<_>>()
        })
    };
    phase(["a", "a-pieced", "a-stuck"]);
    kafka_tool(&["produce", &broker.addr, "events", parts[1].to_str().unwrap()]);
    let b = phase(["b", "b-pieced", "b-stuck"]).swap_remove(0);
    let second_half = (lines.len() - half) as u64;
    assert_eq!(b["lines"], second_half, "B read only what A had not committed: {b}");

    // Together the two archives hold every event once.
    let ids = |name: &str| -> Vec<String> {
        let rows = archive_py("rows", &dir.path().join(name), &["events", "event_id"]);
        rows["duckdb"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["event_id"].as_str().unwrap().to_owned())
            .collect()
    };
    let mut all = ids("a");
    all.extend(ids("b"));
    let distinct: std::collections::BTreeSet<&String> = all.iter().collect();
    assert_eq!((all.len() as u64, distinct.len() as u64), (n, n));

    // B judged with A's baselines: the findings of A and B together are those of one member that read
    // everything. Without the state topic B starts cold, and the findings differ.
    let alone = run("alone", "alone", &with_state);
    assert_eq!(alone["valid"], n);
    let want = archived_findings(&dir.path().join("alone"));
    let merged = |a: &str, b: &str| {
        let mut m = archived_findings(&dir.path().join(a));
        m.extend(archived_findings(&dir.path().join(b)));
        m
    };
    assert_eq!(merged("a", "b"), want);
    assert_eq!(merged("a-pieced", "b-pieced"), want);
    assert_ne!(merged("a-stuck", "b-stuck"), want, "the test cannot tell a cold start from a restored one");

    // The state topic holds each partition's state under the group's key.
    let states = kafka_tool(&["consume", &broker.addr, "vigil.state", "2"]);
    let keys: std::collections::BTreeSet<&str> =
        states["records"].as_array().unwrap().iter().map(|r| r["key"].as_str().unwrap()).collect();
    let want_keys: std::collections::BTreeSet<String> =
        (0..4).map(|p| format!("moving/events/{p}")).collect();
    assert!(want_keys.iter().all(|k| keys.contains(k.as_str())), "{keys:?}");
    assert!(!keys.iter().any(|k| k.starts_with("stuck/")), "{keys:?}");
    let pieces = kafka_tool(&["consume", &broker.addr, "vigil.state.pieces", "2"]);
    let keys: std::collections::BTreeSet<&str> =
        pieces["records"].as_array().unwrap().iter().map(|r| r["key"].as_str().unwrap()).collect();
    for p in 0..4 {
        assert!(keys.contains(format!("pieced/events/{p}#0.1").as_str()), "{keys:?}");
    }
}

/// One `POST /v1/events` of NDJSON on its own connection; the status line's code.
fn post_ndjson(addr: &str, body: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /v1/events HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/x-ndjson\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    answer.split(' ').nth(1).unwrap().parse().unwrap()
}

/// What must be the same whichever driver fed the lane: events by id with their content, findings
/// (every row: id, kind, severity, agent, time, score), dead letters (reason and payload). Source,
/// positions and ingest times differ by design.
fn archived_content(
    archive: &Path,
) -> (Vec<serde_json::Value>, Vec<serde_json::Value>, Vec<serde_json::Value>) {
    let strip = |table: &str, order: &str, keep: &[&str]| -> Vec<serde_json::Value> {
        let rows = archive_py("rows", archive, &[table, order]);
        let mut rows = rows["duckdb"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let o = r.as_object().unwrap();
                let kept = o
                    .iter()
                    .filter(|(k, _)| {
                        if keep.is_empty() {
                            !k.starts_with('_') && !["dt", "hour"].contains(&k.as_str())
                        } else {
                            keep.contains(&k.as_str())
                        }
                    })
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<serde_json::Map<_, _>>();
                serde_json::Value::Object(kept)
            })
            .collect::<Vec<_>>();
        // Rows tied on the order column come in any order: sort by the whole row.
        rows.sort_by_key(|r| r.to_string());
        rows
    };
    (
        strip("events", "event_id", &[]),
        strip("findings", "finding_id", &["finding_id", "kind", "severity", "agent_id", "ts", "score"]),
        strip("dead-letters", "reason", &["reason", "payload_text"]),
    )
}

#[test]
fn the_file_http_and_kafka_drivers_archive_the_same_rows_findings_and_dead_letters() {
    let _serial = serial();
    let dir = scratch();
    let path = dir.path().join("in.ndjson");
    simulate(&path, 30, "40m", 12.0, 4, 11);
    let mut lines: Vec<String> = std::fs::read_to_string(&path).unwrap().lines().map(str::to_owned).collect();
    let dup = lines[10].clone();
    // Bad lines in the middle (one a resend of an earlier event), and a last event far later from an
    // agent of its own, whose time closes every window before it in the streaming drivers too.
    lines.insert(200, "{not json".into());
    lines.insert(400, r#"{"event_id":"b1","ts":1,"agent_id":"a"}"#.into());
    lines.insert(600, dup);
    lines.push(r#"{"event_id":"closer","ts":"2026-01-06T12:00:00Z","agent_id":"zz-closer","action":"api.call","resource":"https://x"}"#.into());
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();

    // File.
    let by_file = dir.path().join("file");
    let s = run_json(&path, &by_file, None);
    assert_eq!(s["dead_lettered"], 3, "{s}");

    // HTTP, journaled (no Kafka): the same lines, the first 2,000 in one request (a batch large enough
    // to be decoded on two threads and have its rows built beside the engine, which a file run on two
    // cores does not do), then requests of 500.
    let by_http = dir.path().join("http");
    let mut serve = vigil()
        .args(["serve", "--listen", "127.0.0.1:0", "--json", "--archive"])
        .arg(&by_http)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let addr = served_address(&mut serve);
    let (first, rest) = lines.split_at(2000);
    for chunk in std::iter::once(first).chain(rest.chunks(500)) {
        assert_eq!(post_ndjson(&addr, &(chunk.join("\n") + "\n")), 200);
    }
    ok(Command::new("kill").args(["-TERM", &serve.id().to_string()]).output().unwrap());
    let out = serve.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");

    // Kafka: one partition, so one lane judges every agent in the same order.
    let broker = Broker::start();
    kafka_tool(&["create", &broker.addr, "same", "1"]);
    kafka_tool(&["produce", &broker.addr, "same", path.to_str().unwrap()]);
    let by_kafka = dir.path().join("kafka");
    let s = run_kafka(&broker, "same", "vigil-same", &by_kafka, None, "3s");
    assert_eq!(s["dead_lettered"], 3, "{s}");

    let file = archived_content(&by_file);
    assert_eq!(file.0.len(), lines.len() - 3);
    assert!(!file.1.is_empty(), "the fleet has incidents");
    // The file run closes the windows still open at its end; the closer event has closed all that
    // matter for the streaming drivers too, so only its own agent's could differ (it has none).
    assert!(file.1.iter().all(|f| f["agent_id"] != "zz-closer"));
    for (name, archive) in [("http", &by_http), ("kafka", &by_kafka)] {
        let other = archived_content(archive);
        assert_eq!(other.0, file.0, "{name}: events differ from the file run's");
        assert_eq!(other.1, file.1, "{name}: findings differ from the file run's");
        assert_eq!(other.2, file.2, "{name}: dead letters differ from the file run's");
    }
}

/// `GET /v1/check?agent_id=…` on a member's API: the status.
fn check(addr: &str, agent: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("the member's API accepts");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /v1/check?agent_id={agent} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw.split(' ').nth(1).unwrap().parse().unwrap()
}

/// Waits until `addr` answers `status` for `agent` (at most 30 s).
fn wait_check(addr: &str, agent: &str, status: u16) {
    let started = Instant::now();
    while check(addr, agent) != status {
        assert!(started.elapsed() < Duration::from_secs(30), "{addr} never answered {status} for {agent}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_halt_decided_on_one_member_and_a_fleet_halt_are_in_force_on_both() {
    let _serial = serial();
    let broker = Broker::start();
    let dir = scratch();
    kafka_tool(&["create", &broker.addr, "events", "2"]);
    let config = dir.path().join("member.toml");
    std::fs::write(
        &config,
        format!(
            "[detect]\nrate_limit_per_minute = 5\n[archive]\nflush_seconds = 1.0\n\
             [kafka]\nbrokers = \"-\"\ntopics = [\"events\"]\n[kafka.options]\n\"session.timeout.ms\" = \"{SESSION_MS}\"\n"
        ),
    )
    .unwrap();
    let member = |name: &str| {
        let mut child =
            kafka_member(&broker, "events", "halts", &dir.path().join(name), Some(&config), "120s")
                .args(["--api-listen", "127.0.0.1:0"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
        let addr = served_address(&mut child);
        (child, addr)
    };
    let (a, a_api) = member("a");
    let (b, b_api) = member("b");
    // Both members take part before anything is produced.
    std::thread::sleep(Duration::from_secs(8));
    // One looping agent: its events are keyed to one partition, so one member decides its halt.
    let t0 = 1_767_600_000_000i64;
    let lines: Vec<String> = (0..10)
        .map(|i| {
            format!(r#"{{"event_id":"l{i}","ts":{},"agent_id":"loop-x","action":"tool.call","resource":"mcp://x"}}"#, t0 + i * 1000)
        })
        .collect();
    let input = dir.path().join("loop.ndjson");
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    kafka_tool(&["produce", &broker.addr, "events", input.to_str().unwrap()]);
    wait_check(&a_api, "loop-x", 403);
    wait_check(&b_api, "loop-x", 403);
    assert_eq!(check(&a_api, "someone-else"), 200);
    // An operator's fleet halt through one member's API holds on the other.
    let body = r#"{"reason":"drill","actor":"carol"}"#;
    let mut s = std::net::TcpStream::connect(&a_api).unwrap();
    use std::io::{Read, Write};
    write!(
        s,
        "POST /v1/fleet/halt HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    wait_check(&b_api, "someone-else", 403);
    for mut m in [a, b] {
        ok(Command::new("kill").args(["-TERM", &m.id().to_string()]).output().unwrap());
        assert!(m.wait().unwrap().success());
    }
    // A member started later, with an archive of its own, has both halts in force before it judges.
    let (mut c, c_api) = member("c");
    assert_eq!(check(&c_api, "loop-x"), 403);
    assert_eq!(check(&c_api, "anyone"), 403);
    let _ = c.kill();
    let _ = c.wait();
}

//! Breakers that act, end to end: webhooks checked by an independent receiver (the Python
//! `standardwebhooks` package), the outbox through a receiver outage and kill -9, modes, the cohort
//! kill switch on the simulator's bad-model incident, the SSRF guard, the control API with its tokens,
//! the gateway check, and the responder's CLI.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const TOKEN: &str = "test-admin-token-0123456789";
const READ_TOKEN: &str = "test-read-token-0123456789";

/// The Python receiver (`tests/py/receiver.py`), killed when dropped.
struct Receiver {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Receiver {
    fn start(dir: &Path, port: u16, extra: &[&str]) -> Receiver {
        let log = dir.join(format!("received-{port}-{}.jsonl", extra.join("_").replace(['/', ':'], "")));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/receiver.py");
        let mut child = Command::new(python())
            .arg(script)
            .arg(SECRET)
            .arg(&log)
            .args(["--port", &port.to_string()])
            .args(extra)
            .stdout(Stdio::piped())
            .spawn()
            .expect("the receiver starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let port =
            line.trim().strip_prefix("listening ").expect("the receiver says its port").parse().unwrap();
        Receiver { child, port, log }
    }

    fn records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits until `done` holds for the records (at most 30 s).
    fn wait(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let started = Instant::now();
        loop {
            let r = self.records();
            if done(&r) {
                return r;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "the receiver never got {what}: {r:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A config with a tight rate cap (the hard-limit rule enforces by default) and one webhook endpoint.
fn config(dir: &Path, port: u16, extra: &str) -> PathBuf {
    let path = dir.join("vigil.toml");
    std::fs::write(
        &path,
        format!(
            "[detect]\nrate_limit_per_minute = 5\n\n[control]\ndelivery_grace_seconds = 10\n\n\
             [respond.cohort]\nmin_agents = 0\n\n{extra}\n\n\
             [[webhook]]\nname = \"gw\"\nurl = \"http://127.0.0.1:{port}/hooks/vigil\"\nsecret = \"{SECRET}\"\n\
             allow_private = true\ninitial_backoff_ms = 100\nmax_backoff_ms = 400\ntimeout_ms = 2000\n"
        ),
    )
    .unwrap();
    path
}

/// One event line.
fn event(id: &str, ts: i64, agent: &str, model: &str) -> String {
    format!(
        r#"{{"event_id":"{id}","ts":{ts},"agent_id":"{agent}","action":"tool.call","resource":"mcp://x","model":"{model}","model_provider":"p"}}"#
    )
}

/// Ten calls within a minute for each agent: over the cap of 5, a rate_limit finding, a hard-limit halt.
fn loops(agents: &[&str], t0: i64) -> String {
    // All ten within one minute of event time (the cap counts per minute).
    let t0 = t0.div_euclid(60_000) * 60_000;
    let mut lines = Vec::new();
    for a in agents {
        for i in 0..10 {
            lines.push(event(&format!("{a}-{i}"), t0 + i * 1000, a, "m1"));
        }
    }
    lines.join("\n") + "\n"
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// An HTTP answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: Value,
}

fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    let mut s = TcpStream::connect(addr).expect("vigil accepts");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    // Bodies here are small; a chunked one is a single chunk.
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body.split_once("\r\n")
            .map(|(_, b)| b.rsplitn(3, "\r\n").last().unwrap_or(""))
            .unwrap_or("")
            .to_owned()
    } else {
        body.to_owned()
    };
    Answer {
        status: head.split(' ').nth(1).unwrap().parse().unwrap(),
        head: head.to_ascii_lowercase(),
        body: serde_json::from_str(&body).unwrap_or(Value::String(body)),
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A running `vigil serve`, killed when dropped.
struct Serve {
    child: Child,
    addr: String,
}

impl Serve {
    fn start(config: &Path, archive: &Path, env: &[(&str, &str)]) -> Serve {
        let mut child = vigil()
            .args(["serve", "--listen", "127.0.0.1:0", "--json", "--config"])
            .arg(config)
            .arg("--archive")
            .arg(archive)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("vigil serve starts");
        let addr = served_address(&mut child);
        Serve { child, addr }
    }

    fn post_events(&self, body: &str) {
        let a = http(&self.addr, "POST", "/v1/events", &[("Content-Type", "application/x-ndjson")], body);
        assert_eq!(a.status, 200, "{a:?}");
    }

    fn check(&self, agent: &str) -> Answer {
        http(&self.addr, "GET", &format!("/v1/check?agent_id={agent}"), &[], "")
    }

    /// Waits until the check for `agent` answers `status`.
    fn wait_check(&self, agent: &str, status: u16) -> Answer {
        let started = Instant::now();
        loop {
            let a = self.check(agent);
            if a.status == status {
                return a;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "{agent} never checked {status}: {a:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait for the exit (which must be 0).
    fn stop(mut self) -> Value {
        ok(Command::new("kill").args(["-TERM", &self.child.id().to_string()]).output().unwrap());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "vigil serve exited {status}");
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(60), "vigil serve did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut out = String::new();
        self.child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        serde_json::from_str(out.trim()).unwrap_or(Value::Null)
    }

    fn kill_9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The control table, rows of one record kind.
fn control(archive: &Path, record: &str) -> Vec<Value> {
    let rows = archive_py("rows", archive, &["control", "ts"]);
    rows["duckdb"].as_array().unwrap().iter().filter(|r| r["record"] == record).cloned().collect()
}

#[test]
fn halts_reach_a_gateway_that_was_down_signed_once_per_id_and_every_outcome_is_archived() {
    let dir = scratch();
    let port = free_port();
    let cfg = config(dir.path(), port, "");
    let archive = dir.path().join("archive");
    let vigil = Serve::start(&cfg, &archive, &[]);
    // The gateway is down: the halts wait in the outbox, retried with backoff.
    vigil.post_events(&loops(&["loop-a", "loop-b", "loop-c"], now_ms() - 120_000));
    for a in ["loop-a", "loop-b", "loop-c"] {
        let h = vigil.wait_check(a, 403);
        assert_eq!(h.body["halt"]["scope"], "agent", "{h:?}");
        assert!(h.head.contains("x-vigil-actor: rule:hard_limit"), "{}", h.head);
        assert!(h.head.contains("x-vigil-halted-at: 20"), "{}", h.head);
    }
    assert_eq!(vigil.check("quiet-agent").status, 200);
    std::thread::sleep(Duration::from_millis(1500));
    let gw = Receiver::start(dir.path(), port, &["--fail-first", "2"]);
    let got = gw.wait("three halts", |r| {
        r.iter()
            .filter(|x| x["status"] == 204)
            .map(|x| x["key"].as_str().unwrap().to_owned())
            .collect::<BTreeSet<_>>()
            .len()
            == 3
    });
    assert!(got.iter().all(|r| r["verified"] == true), "every signature verifies: {got:?}");
    assert!(got.iter().all(|r| r["type"] == "agent.halt" && r["mode"] == "enforce"), "{got:?}");
    // One webhook-id per transition on every attempt: retries repeat the id, never make a new one.
    let mut ids_per_agent: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in &got {
        ids_per_agent
            .entry(r["key"].as_str().unwrap().into())
            .or_default()
            .insert(r["id"].as_str().unwrap().into());
        assert_eq!(r["id"].as_str().unwrap(), format!("msg_{}", r["transition_id"].as_str().unwrap()));
    }
    assert!(ids_per_agent.values().all(|ids| ids.len() == 1), "{ids_per_agent:?}");
    let summary = vigil.stop();
    assert_eq!(summary["webhooks"]["owed"], 0, "{summary}");
    // The record says delivered to gw, with the attempts it took, beside each transition.
    let transitions = control(&archive, "transition");
    let deliveries = control(&archive, "delivery");
    assert_eq!(transitions.len(), 3, "{transitions:?}");
    for t in &transitions {
        let d: Vec<&Value> = deliveries.iter().filter(|d| d["transition_id"] == t["transition_id"]).collect();
        assert_eq!(d.len(), 1, "one outcome per transition and endpoint: {deliveries:?}");
        assert_eq!((d[0]["endpoint"].as_str(), d[0]["delivery"].as_str()), (Some("gw"), Some("delivered")));
        assert!(d[0]["attempts"].as_u64().unwrap() >= 1);
    }
    assert!(deliveries.iter().any(|d| d["attempts"].as_u64().unwrap() > 1), "the outage cost retries");
}

#[test]
fn a_halt_is_never_forgotten_or_sent_under_two_ids_across_kill_9() {
    for round in 0..3u64 {
        let dir = scratch();
        let port = free_port();
        let cfg = config(dir.path(), port, "");
        let archive = dir.path().join("archive");
        let vigil = Serve::start(&cfg, &archive, &[]);
        vigil.post_events(&loops(&["loop-a", "loop-b"], now_ms() - 120_000));
        // Kill at different moments: before the lane judged, between the decision and its delivery.
        std::thread::sleep(Duration::from_millis(round * 150));
        vigil.kill_9();
        let gw = Receiver::start(dir.path(), port, &[]);
        let vigil = Serve::start(&cfg, &archive, &[]);
        // In force after the restart, before any new event, whether it was decided before the kill or
        // again from the intake journal.
        for a in ["loop-a", "loop-b"] {
            vigil.wait_check(a, 403);
        }
        let got = gw.wait("both halts", |r| {
            r.iter()
                .filter(|x| x["type"] == "agent.halt")
                .map(|x| x["key"].as_str().unwrap().to_owned())
                .collect::<BTreeSet<_>>()
                .len()
                == 2
        });
        let mut ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for r in &got {
            assert_eq!(r["verified"], true);
            ids.entry(r["key"].as_str().unwrap().into())
                .or_default()
                .insert(r["id"].as_str().unwrap().into());
        }
        assert!(ids.values().all(|s| s.len() == 1), "round {round}: one id per halt: {ids:?}");
        vigil.stop();
        let halts: Vec<Value> =
            control(&archive, "transition").into_iter().filter(|t| t["action"] == "agent.halt").collect();
        assert_eq!(halts.len(), 2, "round {round}: each halt archived once: {halts:?}");
    }
}

#[test]
fn shadow_warn_and_enforce_decide_the_same_and_act_differently() {
    let dir = scratch();
    let input = dir.path().join("events.ndjson");
    std::fs::write(&input, loops(&["loop-a", "loop-b"], 1_767_600_000_000)).unwrap();
    let gw = Receiver::start(dir.path(), 0, &[]);
    let mut decisions = Vec::new();
    for mode in ["shadow", "warn", "enforce"] {
        let sub = dir.path().join(mode);
        std::fs::create_dir_all(&sub).unwrap();
        let cfg = config(&sub, gw.port, &format!("[respond.rules.hard_limit]\nmode = \"{mode}\"\n"));
        let before = gw.records().len();
        let archive = sub.join("archive");
        let s = run_json(&input, &archive, Some(&cfg));
        assert_eq!(s["webhooks"]["owed"], 0, "{s}");
        let sent: Vec<String> = gw.records()[before..]
            .iter()
            .map(|r| format!("{} {}", r["type"].as_str().unwrap(), r["key"].as_str().unwrap()))
            .collect();
        let want: Vec<String> = match mode {
            "shadow" => vec![],
            "warn" => vec!["agent.warn loop-a".into(), "agent.warn loop-b".into()],
            _ => vec!["agent.halt loop-a".into(), "agent.halt loop-b".into()],
        };
        let mut sent_sorted = sent.clone();
        sent_sorted.sort();
        assert_eq!(sent_sorted, want, "{mode}");
        let t: Vec<(String, String, String)> = control(&archive, "transition")
            .iter()
            .map(|r| {
                assert_eq!(r["mode"], mode);
                (
                    r["agent_id"].as_str().unwrap().into(),
                    r["ts"].to_string(),
                    r["actor"].as_str().unwrap().into(),
                )
            })
            .collect();
        decisions.push(t);
    }
    assert_eq!(decisions[0].len(), 2);
    assert_eq!(decisions[0], decisions[1]);
    assert_eq!(decisions[1], decisions[2]);
}

#[test]
fn the_bad_model_incident_halts_exactly_the_agents_behind_that_model() {
    let dir = scratch();
    let input = dir.path().join("fleet.ndjson");
    let labels = dir.path().join("labels.ndjson");
    ok(vigil()
        .args([
            "simulate",
            "--agents",
            "60",
            "--duration",
            "4h",
            "--rate",
            "8",
            "--seed",
            "7",
            "--bad-model",
            "--out",
        ])
        .arg(&input)
        .arg("--labels")
        .arg(&labels)
        .output()
        .unwrap());
    let bad: BTreeSet<String> = std::fs::read_to_string(&labels)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|l| l["kind"] == "bad_model")
        .map(|l| l["agent_id"].as_str().unwrap().to_owned())
        .collect();
    assert!(bad.len() >= 5, "{bad:?}");
    let cfg = dir.path().join("vigil.toml");
    std::fs::write(&cfg, "[respond.cohort]\nmode = \"enforce\"\n").unwrap();
    let archive = dir.path().join("archive");
    run_json(&input, &archive, Some(&cfg));
    let cohort: Vec<Value> =
        control(&archive, "transition").into_iter().filter(|t| t["scope"] == "cohort").collect();
    assert_eq!(cohort.len(), 1, "one cohort halt, the model's: {cohort:?}");
    assert_eq!(
        (cohort[0]["action"].as_str(), cohort[0]["factor"].as_str()),
        (Some("cohort.halt"), Some("model"))
    );
    let halted: BTreeSet<String> =
        cohort[0]["agents"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect();
    assert_eq!(halted, bad, "exactly the agents behind the bad model");
    let anomalies = archive_py("rows", &archive, &["findings", "ts"])["duckdb"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "cohort_anomaly")
        .count();
    assert_eq!(anomalies, 1);
}

#[test]
fn private_targets_and_redirects_are_refused_and_recorded() {
    let dir = scratch();
    let gw = Receiver::start(dir.path(), 0, &["--redirect", "http://169.254.169.254/latest/meta-data/"]);
    let input = dir.path().join("events.ndjson");
    std::fs::write(&input, loops(&["loop-a"], 1_767_600_000_000)).unwrap();
    let cfg = dir.path().join("vigil.toml");
    std::fs::write(
        &cfg,
        format!(
            "[detect]\nrate_limit_per_minute = 5\n\n\
             [[webhook]]\nname = \"by-name\"\nurl = \"http://localhost:{0}/hooks\"\nsecret = \"{SECRET}\"\n\n\
             [[webhook]]\nname = \"decimal\"\nurl = \"http://2130706433:{0}/hooks\"\nsecret = \"{SECRET}\"\n\n\
             [[webhook]]\nname = \"mapped\"\nurl = \"http://[::ffff:127.0.0.1]:{0}/hooks\"\nsecret = \"{SECRET}\"\n\n\
             [[webhook]]\nname = \"metadata\"\nurl = \"http://169.254.169.254/hooks\"\nsecret = \"{SECRET}\"\n\n\
             [[webhook]]\nname = \"redirects\"\nurl = \"http://127.0.0.1:{0}/hooks\"\nsecret = \"{SECRET}\"\nallow_private = true\n",
            gw.port
        ),
    )
    .unwrap();
    let archive = dir.path().join("archive");
    let s = run_json(&input, &archive, Some(&cfg));
    assert_eq!(s["webhooks"]["owed"], 0, "{s}");
    let outcomes: BTreeMap<String, (String, String)> = control(&archive, "delivery")
        .iter()
        .map(|d| {
            (
                d["endpoint"].as_str().unwrap().to_owned(),
                (d["delivery"].as_str().unwrap().to_owned(), d["detail"].as_str().unwrap().to_owned()),
            )
        })
        .collect();
    assert_eq!(outcomes.len(), 5, "{outcomes:?}");
    for (name, (outcome, detail)) in &outcomes {
        assert_eq!(outcome, "refused", "{name}: {detail}");
    }
    assert!(outcomes["by-name"].1.contains("allow_private"), "{outcomes:?}");
    assert!(outcomes["metadata"].1.contains("169.254.169.254"), "{outcomes:?}");
    assert!(outcomes["redirects"].1.contains("redirects are not followed"), "{outcomes:?}");
    // Only the endpoint that allows private targets connected at all, and it followed nothing.
    assert_eq!(gw.records().len(), 1, "{:?}", gw.records());
}

#[test]
fn the_control_api_needs_its_token_and_round_trips_halts_for_agents_cohorts_and_the_fleet() {
    let dir = scratch();
    // Beyond loopback without a token: refused before anything starts.
    let out = vigil()
        .args(["serve", "--listen", "0.0.0.0:0", "--archive"])
        .arg(dir.path().join("a0"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("without a token"), "{out:?}");

    let gw = Receiver::start(dir.path(), 0, &[]);
    let cfg = config(dir.path(), gw.port, "[api]\ntoken_env = \"T_ADMIN\"\nread_token_env = \"T_READ\"\n");
    let archive = dir.path().join("archive");
    let vigil = Serve::start(&cfg, &archive, &[("T_ADMIN", TOKEN), ("T_READ", READ_TOKEN)]);
    let t0 = now_ms() - 60_000;
    let lines: Vec<String> = (0..6)
        .map(|i| event(&format!("e{i}"), t0 + i, &format!("agent-{i}"), if i < 3 { "m-a" } else { "m-b" }))
        .collect();
    vigil.post_events(&(lines.join("\n") + "\n"));
    let admin = bearer(TOKEN);
    let read = bearer(READ_TOKEN);
    let auth = |t: &str| vec![("Authorization", t.to_owned())];
    let call = |method: &str, path: &str, token: Option<&str>, body: &str| {
        let h: Vec<(&str, String)> = token.map(auth).unwrap_or_default();
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
        http(&vigil.addr, method, path, &h, body)
    };
    let why = r#"{"reason":"incident 42","actor":"alice"}"#;
    // 401 without a token, with a wrong one, and for a command with the read-only one.
    assert_eq!(call("GET", "/v1/check?agent_id=agent-0", None, "").status, 401);
    assert_eq!(call("GET", "/v1/check?agent_id=agent-0", Some("Bearer nope"), "").status, 401);
    assert_eq!(call("POST", "/v1/agents/agent-0/halt", Some(&read), why).status, 401);
    assert_eq!(call("GET", "/v1/check?agent_id=agent-0", Some(&read), "").status, 200);
    // A command needs a reason and an actor.
    assert_eq!(call("POST", "/v1/agents/agent-0/halt", Some(&admin), "{}").status, 400);

    // Agent.
    let h = call("POST", "/v1/agents/agent-0/halt", Some(&admin), why);
    assert_eq!(h.status, 200, "{h:?}");
    assert_eq!(h.body["archived"], true, "{h:?}");
    assert_eq!(h.body["transition"]["actor"], "operator:alice");
    let c = call("GET", "/v1/check?agent_id=agent-0", Some(&read), "");
    assert_eq!((c.status, c.body["halt"]["scope"].as_str()), (403, Some("agent")), "{c:?}");
    assert!(c.head.contains("x-vigil-reason: incident 42"), "{}", c.head);
    assert_eq!(call("POST", "/v1/agents/agent-0/halt", Some(&admin), why).status, 409, "already halted");
    // Envoy's ext_authz form: the agent in a header, the original path after the prefix.
    let e = http(
        &vigil.addr,
        "PUT",
        "/v1/ext_authz/some/original/path",
        &[("Authorization", &read), ("x-agent-id", "agent-0")],
        "",
    );
    assert_eq!(e.status, 403, "{e:?}");
    let e = http(
        &vigil.addr,
        "GET",
        "/v1/ext_authz/x",
        &[("Authorization", &read), ("x-agent-id", "agent-1")],
        "",
    );
    assert_eq!(e.status, 200, "{e:?}");

    // Cohort: a dry run lists exactly the agents behind the model and changes nothing.
    let d = call("POST", "/v1/cohorts/model/m-a/halt?dry_run=true", Some(&admin), "");
    assert_eq!(d.body["agents"], serde_json::json!(["agent-0", "agent-1", "agent-2"]), "{d:?}");
    assert_eq!(call("GET", "/v1/check?agent_id=agent-1", Some(&read), "").status, 200);
    assert_eq!(call("POST", "/v1/cohorts/model/m-a/halt", Some(&admin), why).status, 200);
    assert_eq!(call("GET", "/v1/check?agent_id=agent-1", Some(&read), "").body["halt"]["scope"], "cohort");
    assert_eq!(call("GET", "/v1/check?agent_id=agent-3", Some(&read), "").status, 200);

    // Fleet, then staged resume: the fleet, the cohort, the agent.
    assert_eq!(call("POST", "/v1/fleet/halt", Some(&admin), why).status, 200);
    assert_eq!(call("GET", "/v1/check?agent_id=agent-5", Some(&read), "").body["halt"]["scope"], "fleet");
    assert_eq!(call("GET", "/v1/check?agent_id=never-seen", Some(&read), "").status, 403);
    let status = call("GET", "/v1/halts", Some(&read), "");
    assert!(
        status.body["fleet"].is_object() && status.body["cohorts"].as_array().unwrap().len() == 1,
        "{status:?}"
    );
    assert_eq!(call("POST", "/v1/fleet/resume", Some(&admin), why).status, 200);
    assert_eq!(call("GET", "/v1/check?agent_id=agent-5", Some(&read), "").status, 200);
    assert_eq!(
        call("GET", "/v1/check?agent_id=agent-1", Some(&read), "").status,
        403,
        "the cohort halt stays"
    );
    assert_eq!(call("POST", "/v1/cohorts/model/m-a/resume", Some(&admin), why).status, 200);
    assert_eq!(call("GET", "/v1/check?agent_id=agent-1", Some(&read), "").status, 200);
    assert_eq!(call("GET", "/v1/check?agent_id=agent-0", Some(&read), "").status, 403, "its own halt stays");
    let one = call("GET", "/v1/agents/agent-0", Some(&read), "");
    assert_eq!(one.body["breaker"], "open", "{one:?}");
    let history: Vec<&str> =
        one.body["history"].as_array().unwrap().iter().map(|t| t["action"].as_str().unwrap()).collect();
    assert_eq!(
        history,
        ["agent.halt", "cohort.halt", "cohort.resume"],
        "the cohort's halt and its lifting; the fleet's moves are under /v1/halts: {one:?}"
    );
    // An agent outside the cohort has neither.
    let other = call("GET", "/v1/agents/agent-3", Some(&read), "");
    assert_eq!(other.body["history"], serde_json::json!([]), "{other:?}");
    // What is normal for it: one event seen, in a window not closed yet, so no baseline to judge by.
    let base = &one.body["baseline"];
    assert_eq!(
        (base["warm"].as_bool(), base["per_window"][0]["measure"].as_str()),
        (Some(false), Some("actions")),
        "{one:?}"
    );
    assert!(base["state_bytes"].as_u64().unwrap() > 0, "{one:?}");
    let listed = call("GET", "/v1/agents?state=halted", Some(&read), "");
    assert_eq!(listed.body["agents"][0]["agent_id"], "agent-0", "{listed:?}");
    assert_eq!(listed.body["agents"][0]["mode"], "enforce", "{listed:?}");
    assert_eq!(call("POST", "/v1/agents/agent-0/resume", Some(&admin), why).status, 200);
    assert_eq!(call("GET", "/v1/check?agent_id=agent-0", Some(&read), "").status, 200);
    assert_eq!(call("GET", "/v1/check", Some(&read), "").status, 400, "no agent_id");
    let metrics = call("GET", "/metrics", None, "");
    let text = metrics.body.as_str().unwrap_or_default().to_owned();
    assert!(text.contains("vigil_api_unauthorized_total 3"), "{text}");

    // The gateway heard every halt and resume, in order (one queue per endpoint).
    let got = gw.wait("six transitions", |r| r.len() >= 6);
    let types: Vec<&str> = got.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["agent.halt", "cohort.halt", "fleet.halt", "fleet.resume", "cohort.resume", "agent.resume"]
    );
    assert!(got.iter().all(|r| r["verified"] == true));
    vigil.stop();
    // Every command archived with who, what and why.
    let rows = control(&archive, "transition");
    let ops: Vec<(String, String)> = rows
        .iter()
        .filter(|r| r["actor"] == "operator:alice")
        .map(|r| (r["action"].as_str().unwrap().to_owned(), r["reason"].as_str().unwrap().to_owned()))
        .collect();
    let actions: Vec<&str> = ops.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        ["agent.halt", "cohort.halt", "fleet.halt", "fleet.resume", "cohort.resume", "agent.resume"],
        "{rows:?}"
    );
    assert!(ops.iter().all(|(_, why)| why == "incident 42"));
}

#[test]
fn the_cli_halts_in_shadow_first_resumes_and_shows_status() {
    let dir = scratch();
    let cfg = dir.path().join("vigil.toml");
    std::fs::write(&cfg, "[api]\ntoken_env = \"T_ADMIN\"\n").unwrap();
    let archive = dir.path().join("archive");
    let served = Serve::start(&cfg, &archive, &[("T_ADMIN", TOKEN)]);
    let t0 = now_ms() - 60_000;
    let lines: Vec<String> =
        (0..4).map(|i| event(&format!("e{i}"), t0 + i, &format!("agent-{i}"), "m-x")).collect();
    served.post_events(&(lines.join("\n") + "\n"));
    let api = format!("http://{}", served.addr);
    let cli = |args: &[&str]| {
        let who: &[&str] = if args[0] == "status" { &[] } else { &["--actor", "bob"] };
        vigil().args(args).args(["--api", &api]).args(who).env("VIGIL_API_TOKEN", TOKEN).output().unwrap()
    };
    let out = cli(&["halt", "--cohort", "model=m-x", "--reason", "bad model"]);
    assert_eq!(out.status.code(), Some(4), "a cohort halt asks for --yes first: {out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("would halt 4 agent(s)") && said.contains("agent-3"), "{said}");
    assert_eq!(served.check("agent-0").status, 401, "the check needs the token too");
    let out = cli(&["halt", "--cohort", "model=m-x", "--reason", "bad model", "--yes"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = cli(&["halt", "agent-9", "--reason", "compromised key"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("agent.halt agent agent-9 by operator:bob"),
        "{out:?}"
    );
    let out = cli(&["halt", "agent-9", "--reason", "again"]);
    assert_eq!(out.status.code(), Some(3), "unchanged: {out:?}");
    let out = cli(&["status"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("cohort model=m-x")
            && table.contains("agent agent-9")
            && table.contains("operator:bob"),
        "{table}"
    );
    let out = cli(&["resume", "--cohort", "model=m-x", "--reason", "model rolled back"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = cli(&["status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["cohorts"].as_array().unwrap().len(), v["agents"].as_array().unwrap().len()),
        (0, 1),
        "{v}"
    );
    let out = cli(&["status", "agent-9"]);
    let detail = String::from_utf8_lossy(&out.stdout);
    assert!(
        detail.contains("agent agent-9: breaker open")
            && detail.contains("HALTED (agent scope)")
            && detail.contains("compromised key"),
        "{detail}"
    );
    let out = cli(&["status", "agent-1"]);
    let detail = String::from_utf8_lossy(&out.stdout);
    assert!(detail.contains("model=m-x") && detail.contains("warming up"), "{detail}");
    assert!(detail.contains("cohort.halt") && detail.contains("bad model"), "{detail}");
    assert!(!detail.contains("HALTED") && !detail.contains("1970"), "resumed, and times are real: {detail}");
    assert_eq!(cli(&["status", "nobody"]).status.code(), Some(3), "an unknown agent");
    let out = vigil().args(["status", "--api", &api]).env_remove("VIGIL_API_TOKEN").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "a refused token is an error: {out:?}");
    served.stop();
}

#[test]
fn a_halt_answers_only_once_the_events_received_before_it_are_archived() {
    let dir = scratch();
    let cfg = dir.path().join("vigil.toml");
    // The archive would not flush on its own for an hour: only the halt makes it.
    std::fs::write(&cfg, "[archive]\nflush_seconds = 3600\nflush_rows = 1000000\n").unwrap();
    let archive = dir.path().join("archive");
    let vigil = Serve::start(&cfg, &archive, &[]);
    let t0 = now_ms() - 60_000;
    let lines: Vec<String> = (0..300).map(|i| event(&format!("busy-{i}"), t0 + i, "busy", "m1")).collect();
    vigil.post_events(&(lines.join("\n") + "\n"));
    let why = r#"{"reason":"suspected exfiltration","actor":"dana"}"#;
    let h = http(&vigil.addr, "POST", "/v1/agents/busy/halt", &[], why);
    assert_eq!(h.status, 200, "{h:?}");
    assert_eq!(h.body["archived"], true, "{h:?}");
    // Read while vigil still runs: every event posted before the halt is in the archive already.
    let counts = archive_py("event-counts", &archive, &[]);
    assert_eq!(counts["rows"], 300, "{counts}");
    let one = http(&vigil.addr, "GET", "/v1/agents/busy", &[], "");
    assert_eq!(one.body["counters"]["events"], 300, "{one:?}");
    assert_eq!(one.body["breaker"], "open");
    vigil.stop();
}

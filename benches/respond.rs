//! The kill switch under load, end to end, against `vigil serve` in this process:
//!
//! 1. **Halt latency**: the intake busy at about a tenth of its peak with a simulated fleet, a probe
//!    every 50 ms posts one event of a fresh agent that breaks its allow-list (a critical
//!    `policy_violation`, enforced here); the time from the POST to the signed `agent.halt` arriving at
//!    a receiver on loopback. The peer in the same run: the POST's own answer time (journal fsync).
//! 2. **The gateway check under load** with `wrk` (Debian's `wrk` package; skipped with a note when it
//!    is missing): `GET /v1/check` for a halted agent while the same background load runs, beside
//!    `GET /healthz` on the same server (the floor of the server itself): the most it can answer.
//! 3. **The check at the budget's rate** with `oha` (`cargo install oha`; skipped with a note when it is
//!    missing): a fixed 20,000 checks/s, open loop, latency corrected for coordinated omission, while the
//!    same background load runs.
//!
//! `cargo bench --bench respond -- [PROBES] [BACKGROUND_EVENTS_PER_S] [WRK_SECONDS]`
//! (defaults 200, 25,000, 10).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vigil::config::{VigilConfig, WebhookConfig};

#[path = "support/mod.rs"]
mod support;

use support::Conn;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn main() {
    let mut nums = std::env::args().skip(1).filter_map(|a| a.replace('_', "").parse::<u64>().ok());
    let probes = nums.next().unwrap_or(200) as usize;
    let rate = nums.next().unwrap_or(25_000);
    let wrk_seconds = nums.next().unwrap_or(10);

    // The background: the simulated fleet, re-stamped to now as it is posted.
    let lines = support::fleet_lines(200_000);

    let arrivals: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let receiver = receive(arrivals.clone());
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = VigilConfig::default();
    cfg.archive.dir = dir.path().join("archive");
    cfg.http.listen = "127.0.0.1:0".into();
    cfg.detect.policies = vigil::simulate::policies();
    cfg.detect.policies.push(
        toml::from_str("name = \"probes\"\nroles = [\"probe\"]\nresources = [\"mcp://ok\"]\n").unwrap(),
    );
    cfg.respond.rules.critical_finding.mode = Some(vigil_schemas::rows::Mode::Enforce);
    cfg.detect.sensitive_resources = vec!["postgres://hr/**".into()];
    let mut hook: WebhookConfig = toml::from_str(&format!("url = \"http://{receiver}/hook\"")).unwrap();
    hook.secret = Some(SECRET.into());
    hook.allow_private = true;
    cfg.webhook.push(hook);

    let stop = AtomicBool::new(false);
    let loading = AtomicBool::new(true);
    let (addr_tx, addr_rx) = std::sync::mpsc::channel::<SocketAddr>();
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            vigil::server::serve(&cfg, &stop, move |a| {
                let _ = addr_tx.send(a);
            })
        });
        let addr = addr_rx.recv().expect("the server started");
        let (lines, loading) = (&lines, &loading);
        let posted = s.spawn(move || background(addr, lines, rate, loading));
        std::thread::sleep(Duration::from_secs(2));

        // 1. Halt latency.
        let mut conn = Conn::open(addr);
        let (mut answered, mut halted) = (Vec::new(), Vec::new());
        for i in 0..probes {
            let agent = format!("probe-{i}");
            let body = format!(
                r#"{{"event_id":"probe-{i}","ts":{},"agent_id":"{agent}","agent_role":"probe","action":"data.read","resource":"postgres://hr/salaries"}}"#,
                now_ms()
            );
            let sent = Instant::now();
            assert_eq!(conn.post(body.as_bytes()), 200);
            answered.push(sent.elapsed());
            let deadline = sent + Duration::from_secs(10);
            loop {
                if let Some(at) = arrivals.lock().unwrap().get(&agent) {
                    halted.push(at.duration_since(sent));
                    break;
                }
                assert!(Instant::now() < deadline, "no halt for {agent} within 10 s");
                std::thread::sleep(Duration::from_micros(200));
            }
            std::thread::sleep(Duration::from_millis(50).saturating_sub(sent.elapsed()));
        }
        let pct = |v: &mut Vec<Duration>, q: f64| {
            v.sort();
            v[((v.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e3
        };
        println!(
            "halt latency, {probes} probes with ~{rate} events/s in the background: event posted -> signed \
             agent.halt received p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (budget: p99 < 250 ms); the POST's \
             own answer (journal fsync) p50 {:.1} ms, p99 {:.1} ms",
            pct(&mut halted, 0.5),
            pct(&mut halted, 0.99),
            pct(&mut halted, 1.0),
            pct(&mut answered, 0.5),
            pct(&mut answered, 0.99),
        );

        // 2. The check under load, closed loop (as fast as wrk can), beside the server's own floor; then
        // with 1 ms of think time per connection (wrk's `delay`), so the server is not saturated.
        match which("wrk") {
            None => println!("check under load: wrk is not installed (apt-get install wrk); skipped"),
            Some(wrk) => {
                let script = dir.path().join("think.lua");
                std::fs::write(&script, "function delay()\n  return 1\nend\n").unwrap();
                let check = format!("http://{addr}/v1/check?agent_id=probe-1");
                let runs: [(&str, Vec<String>, String); 3] = [
                    ("GET /v1/check (halted agent), wrk -t1 -c4", vec![], check.clone()),
                    (
                        "GET /healthz (the server's floor), wrk -t1 -c4",
                        vec![],
                        format!("http://{addr}/healthz"),
                    ),
                    (
                        "GET /v1/check (halted agent), wrk -t1 -c16 with 1 ms think time",
                        vec!["-s".into(), script.display().to_string()],
                        check,
                    ),
                ];
                for (what, extra, url) in runs {
                    let conns = if extra.is_empty() { "-c4" } else { "-c16" };
                    let out = std::process::Command::new(&wrk)
                        .args(["-t1", conns, &format!("-d{wrk_seconds}s"), "--latency"])
                        .args(&extra)
                        .arg(url)
                        .output()
                        .expect("wrk runs");
                    let text = String::from_utf8_lossy(&out.stdout);
                    let find = |label: &str| {
                        text.lines()
                            .find(|l| l.trim_start().starts_with(label))
                            .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_owned())
                            .unwrap_or_else(|| "?".into())
                    };
                    println!(
                        "{what}, pipeline busy: {} requests/s, latency p50 {} p90 {} p99 {} (budget: p99 < 1 ms at 20k/s)",
                        find("Requests/sec:"),
                        find("50%"),
                        find("90%"),
                        find("99%"),
                    );
                }
            }
        }

        // 3. The budget's own terms: a fixed 20,000 checks/s (an open-loop load, so a slow answer does not
        // slow the offered rate and hide itself), latency corrected for coordinated omission.
        match which("oha").or_else(|| {
            let home = std::env::var_os("HOME")?;
            Some(std::path::Path::new(&home).join(".cache/vigil/tools/bin/oha")).filter(|p| p.exists())
        }) {
            None => println!("check at a fixed rate: oha is not installed (cargo install oha); skipped"),
            Some(oha) => {
                let out = std::process::Command::new(&oha)
                    .args(["-q", "20000", "-c", "8", "-z", &format!("{wrk_seconds}s")])
                    .args(["--latency-correction", "--no-tui", "--output-format", "json"])
                    .arg(format!("http://{addr}/v1/check?agent_id=probe-1"))
                    .output()
                    .expect("oha runs");
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                let ms = |k: &str| {
                    v["latencyPercentiles"][k].as_f64().map_or("?".into(), |s| format!("{:.3} ms", s * 1e3))
                };
                let codes = &v["statusCodeDistribution"];
                println!(
                    "GET /v1/check (halted agent) at a fixed 20,000/s, pipeline busy: {:.0} requests/s, latency p50 {} \
                     p90 {} p99 {} p99.9 {}; answers {codes} (oha -q 20000 -c 8, latency corrected; budget: p99 < 1 ms)",
                    v["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
                    ms("p50"),
                    ms("p90"),
                    ms("p99"),
                    ms("p99.9"),
                );
            }
        }
        loading.store(false, Ordering::Relaxed);
        let sent = posted.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        let summary = server.join().unwrap().expect("serve ran");
        println!("background: {sent} events posted; {} judged and archived", summary.valid);
    });
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

fn which(tool: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(tool))
        .find(|p| p.exists())
}

/// Posts the fleet at `rate` events/s in bodies of 250, its timestamps moved to now, until `loading`
/// is cleared; returns the events posted.
fn background(addr: SocketAddr, lines: &[String], rate: u64, loading: &AtomicBool) -> u64 {
    let mut conn = Conn::open(addr);
    let per = 250usize;
    let every = Duration::from_secs_f64(per as f64 / rate as f64);
    let mut sent = 0u64;
    let mut i = 0usize;
    let start = Instant::now();
    while loading.load(Ordering::Relaxed) {
        let now = now_ms();
        let body: Vec<String> = (0..per)
            .map(|k| {
                let l = &lines[(i + k) % lines.len()];
                // A fresh event_id and a current ts for every post, so nothing is a duplicate or stale.
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let mut v = v;
                v["event_id"] = format!("bg-{}", sent + k as u64).into();
                v["ts"] = now.into();
                v.to_string()
            })
            .collect();
        i += per;
        assert_eq!(conn.post(body.join("\n").as_bytes()), 200);
        sent += per as u64;
        let due = every.mul_f64((sent / per as u64) as f64);
        std::thread::sleep(due.saturating_sub(start.elapsed()));
    }
    sent
}

/// A webhook receiver on loopback: records when each agent's first `agent.halt` arrived; answers 204.
fn receive(arrivals: Arc<Mutex<HashMap<String, Instant>>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let arrivals = arrivals.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream.try_clone().unwrap());
                let mut length = 0usize;
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; length];
                let _ = r.read_exact(&mut body);
                let at = Instant::now();
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body)
                    && v["type"] == "agent.halt"
                    && let Some(agent) = v["data"]["agent_id"].as_str()
                {
                    arrivals.lock().unwrap().entry(agent.to_owned()).or_insert(at);
                }
                let mut w = stream;
                let _ =
                    w.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            });
        }
    });
    addr
}

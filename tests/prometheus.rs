//! What operators see is true: the alert rules pass `promtool`, the dashboards are well formed, and a
//! real Prometheus (Debian's package, started here on loopback) scraping a real vigil member answers
//! every dashboard panel's and every alert rule's query with data, and fires the breaker-open alert
//! after a halt.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A tool of Debian's `prometheus` package, which `scripts/test.sh` installs; missing fails the test.
fn prom_tool(name: &str) -> PathBuf {
    let var = format!("VIGIL_{}", name.to_ascii_uppercase());
    let found = std::env::var_os(&var).map(PathBuf::from).or_else(|| {
        std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(name)).find(|p| p.exists())
    });
    found.unwrap_or_else(|| panic!("no {name}: run scripts/test.sh, which installs Debian's prometheus"))
}

fn dashboards() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

/// Every PromQL expression of every panel of every dashboard.
fn panel_queries() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for name in ["fleet.json", "pipeline.json"] {
        let d: Value =
            serde_json::from_str(&std::fs::read_to_string(dashboards().join(name)).unwrap()).unwrap();
        for p in d["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                out.push((format!("{name}: {}", p["title"]), t["expr"].as_str().unwrap().to_owned()));
            }
        }
    }
    out
}

/// Every alert rule's query: its expression without the final comparison.
fn rule_queries() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(dashboards().join("rules.yml")).unwrap();
    let mut out = Vec::new();
    let mut name = String::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(n) = line.strip_prefix("- alert: ") {
            name = n.to_owned();
        } else if let Some(expr) = line.strip_prefix("expr: ") {
            let cut = [" == ", " > ", " < ", " >= ", " <= ", " != "]
                .iter()
                .filter_map(|op| expr.rfind(op))
                .max()
                .expect("every rule is `<query> <op> <threshold>`");
            out.push((name.clone(), expr[..cut].to_owned()));
        }
    }
    out
}

#[test]
fn the_rules_pass_promtool_and_the_dashboards_are_well_formed() {
    let promtool = prom_tool("promtool");
    ok(Command::new(&promtool)
        .arg("check")
        .arg("rules")
        .arg(dashboards().join("rules.yml"))
        .output()
        .unwrap());
    ok(Command::new(&promtool)
        .arg("test")
        .arg("rules")
        .arg(dashboards().join("rules_test.yml"))
        .output()
        .unwrap());
    assert_eq!(rule_queries().len(), 7);
    for name in ["fleet.json", "pipeline.json"] {
        let d: Value =
            serde_json::from_str(&std::fs::read_to_string(dashboards().join(name)).unwrap()).unwrap();
        assert!(d["schemaVersion"].as_u64().unwrap() >= 39, "{name}");
        let vars = d["templating"]["list"].as_array().unwrap();
        assert!(vars.iter().any(|v| v["name"] == "datasource" && v["type"] == "datasource"), "{name}");
        // Every data source reference goes through the variable: no uid of anyone's Grafana.
        let text = d.to_string();
        let mut refs = 0;
        for p in d["panels"].as_array().unwrap() {
            for ds in std::iter::once(&p["datasource"])
                .chain(p["targets"].as_array().unwrap().iter().map(|t| &t["datasource"]))
            {
                assert_eq!(ds["uid"], "${datasource}", "{name}: {p}");
                refs += 1;
            }
        }
        assert!(refs > 10 && !text.contains("\"uid\":\"P"), "{name}");
    }
}

#[test]
fn a_real_prometheus_scraping_a_real_member_answers_every_panel_and_rule_and_fires_on_a_halt() {
    let broker = Broker::start();
    let dir = scratch();
    let input = dir.path().join("fleet.ndjson");
    simulate(&input, 40, "1h", 20.0, 8, 5);
    // A runaway agent over the rate cap (a hard limit, enforced), and a line that is not JSON.
    let t0 = 1_767_600_000_000i64;
    let mut extra: Vec<String> = (0..12)
        .map(|i| {
            format!(r#"{{"event_id":"loop{i}","ts":{},"agent_id":"loop-z","action":"tool.call","resource":"mcp://x"}}"#, t0 + i * 100)
        })
        .collect();
    extra.push("{not json".into());
    let mut text = std::fs::read_to_string(&input).unwrap();
    text.push_str(&(extra.join("\n") + "\n"));
    std::fs::write(&input, text).unwrap();
    kafka_tool(&["create", &broker.addr, "events", "2"]);
    kafka_tool(&["produce", &broker.addr, "events", input.to_str().unwrap()]);

    // A gateway that answers, so webhook series move.
    let receiver = dir.path().join("receiver.py");
    std::fs::write(
        &receiver,
        "import http.server\nclass H(http.server.BaseHTTPRequestHandler):\n    def do_POST(self):\n        \
         self.rfile.read(int(self.headers.get('content-length', '0')))\n        self.send_response(204)\n        \
         self.end_headers()\n    def log_message(self, *a):\n        pass\ns = http.server.HTTPServer(('127.0.0.1', 0), H)\n\
         print(s.server_address[1], flush=True)\ns.serve_forever()\n",
    )
    .unwrap();
    let mut gw = Killed(Command::new(python()).arg(&receiver).stdout(Stdio::piped()).spawn().unwrap());
    let mut port = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(gw.0.stdout.take().unwrap()), &mut port)
        .unwrap();
    let config = dir.path().join("vigil.toml");
    std::fs::write(
        &config,
        format!(
            "[detect]\nrate_limit_per_minute = 10\n[archive]\nflush_seconds = 1.0\n\
             [kafka]\nbrokers = \"-\"\ntopics = [\"events\"]\nstatistics_ms = 1000\n\
             [[webhook]]\nurl = \"http://127.0.0.1:{}/hook\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"\nallow_private = true\n",
            port.trim()
        ),
    )
    .unwrap();
    // Killed when the test ends, pass or fail: with a long idle exit it would outlive its broker.
    let mut member = Killed(
        kafka_member(&broker, "events", "prom", &dir.path().join("archive"), Some(&config), "600s")
            .args(["--api-listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let api = served_address(&mut member.0);

    // promtool on what vigil exposes.
    let scrape = http_get(&api, "/metrics");
    let mut check = Command::new(prom_tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(check.stdin.as_mut().unwrap(), scrape.as_bytes()).unwrap();
    ok(check.wait_with_output().unwrap());
    assert!(!scrape.contains("agent_id"), "no agent label");
    // Gateway checks, so their series move too.
    for agent in ["loop-z", "nobody"] {
        let _ = http_get(&api, &format!("/v1/check?agent_id={agent}"));
    }

    let prom_port = common::free_port();
    let prom_cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files: [{:?}]\n\
             scrape_configs:\n  - job_name: vigil\n    static_configs:\n      - targets: [{api:?}]\n",
            dashboards().join("rules.yml")
        ),
    )
    .unwrap();
    let prom_addr = format!("127.0.0.1:{prom_port}");
    let prom = Killed(
        Command::new(prom_tool("prometheus"))
            .arg(format!("--config.file={}", prom_cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("tsdb").display()))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    // Ready when this Prometheus's own socket listens there: a connect could reach someone else's.
    while !common::listens(prom.0.id(), prom_port) {
        assert!(started.elapsed() < Duration::from_secs(30), "Prometheus did not listen on {prom_addr}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let query = |q: &str| -> Value {
        let path = format!("/api/v1/query?query={}", encode(q));
        serde_json::from_str(&http_get(&prom_addr, &path)).unwrap_or(Value::Null)
    };
    // Until Prometheus has scraped the member long enough for rates over two samples, and the halt is in.
    let started = Instant::now();
    loop {
        let up = query("up{job=\"vigil\"}");
        let halted = query("vigil_halts_in_force{scope=\"agent\"} > 0");
        let ready = up["data"]["result"].as_array().is_some_and(|r| r.iter().any(|s| s["value"][1] == "1"))
            && halted["data"]["result"].as_array().is_some_and(|r| !r.is_empty());
        if ready && started.elapsed() > Duration::from_secs(12) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "Prometheus never scraped vigil's halt: {up} {halted}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let mut empty = Vec::new();
    for (what, expr) in panel_queries().into_iter().chain(rule_queries()) {
        let expr = expr.replace("$instance", ".*");
        let v = query(&expr);
        assert_eq!(v["status"], "success", "{what}: {expr}: {v}");
        if v["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
            empty.push(format!("{what}: {expr}"));
        }
    }
    assert!(empty.is_empty(), "queries with no data:\n{}", empty.join("\n"));
    let started = Instant::now();
    loop {
        let alerts: Value = serde_json::from_str(&http_get(&prom_addr, "/api/v1/alerts")).unwrap();
        let open = alerts["data"]["alerts"].as_array().unwrap().iter().any(|a| {
            a["labels"]["alertname"] == "VigilBreakerOpen"
                && ["pending", "firing"].contains(&a["state"].as_str().unwrap())
        });
        if open {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "VigilBreakerOpen never fired: {alerts}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A child process killed when dropped, so a failing test leaves nothing running.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `GET path`: the body (HTTP/1.0, so the answer is never chunked).
fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connects");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()
}

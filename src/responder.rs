//! The responder's commands, `vigil halt`, `vigil resume` and `vigil status`: clients of the control
//! API of a running vigil (`[api] listen`, or `vigil serve`'s listener).
//!
//! Exit codes: 0 done; 2 failed (vigil unreachable, a refused token, a fault: the same code as every
//! vigil command that stops on an error); 3 nothing changed (already halted, not halted); 4 a cohort
//! or fleet halt was shown as a dry run and needs `--yes`.

use std::process::ExitCode;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use serde_json::{Value, json};

use crate::deliver::guard;

/// Where the API is and how to reach it.
#[derive(Debug, Clone)]
pub struct ApiTarget {
    /// Base URL, e.g. `http://127.0.0.1:9464`.
    pub url: String,
    /// The bearer token, if any.
    pub token: Option<String>,
    /// Per-request limit (a halt waits for the archive, up to `halt_archive_wait_ms` plus a second).
    pub timeout: Duration,
}

/// What a responder command targets.
#[derive(Debug, Clone)]
pub enum Scope {
    /// One agent.
    Agent(String),
    /// `FACTOR=VALUE`.
    Cohort(String, String),
    /// Everything.
    Fleet,
}

impl Scope {
    /// The API path for `verb`.
    fn path(&self, verb: &str) -> String {
        match self {
            Scope::Agent(a) => format!("/v1/agents/{}/{verb}", encode(a)),
            Scope::Cohort(f, v) => format!("/v1/cohorts/{}/{}/{verb}", encode(f), encode(v)),
            Scope::Fleet => format!("/v1/fleet/{verb}"),
        }
    }

    /// Parses the CLI's choice: an agent, `--cohort FACTOR=VALUE`, or `--fleet`.
    pub fn from_args(agent: Option<String>, cohort: Option<String>, fleet: bool) -> Result<Scope, String> {
        match (agent, cohort, fleet) {
            (Some(a), None, false) => Ok(Scope::Agent(a)),
            (None, Some(c), false) => {
                let (f, v) =
                    c.split_once('=').filter(|(f, v)| !f.is_empty() && !v.is_empty()).ok_or_else(|| {
                        format!(
                            "--cohort takes FACTOR=VALUE (model=NAME, provider=NAME, issuer=NAME), got {c:?}"
                        )
                    })?;
                Ok(Scope::Cohort(f.to_owned(), v.to_owned()))
            }
            (None, None, true) => Ok(Scope::Fleet),
            _ => Err("give exactly one of: an AGENT id, --cohort FACTOR=VALUE, --fleet".into()),
        }
    }
}

/// Percent-encodes a path segment.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~:@".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One request to the API: status and JSON body.
pub fn call(api: &ApiTarget, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value), String> {
    let url = format!("{}{path}", api.url.trim_end_matches('/'));
    let t = guard::parse_url(&url)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime: {e}"))?;
    let tls = if t.tls { Some(crate::deliver::client_tls().map_err(|e| e.to_string())?) } else { None };
    rt.block_on(async {
        let go = async {
            let tcp = tokio::net::TcpStream::connect((t.host.as_str(), t.port)).await.map_err(|e| {
                format!("cannot reach vigil's API at {}: {e} (is it running with [api] listen?)", api.url)
            })?;
            let bytes = body.map(|b| b.to_string()).unwrap_or_default();
            let mut req = hyper::Request::builder()
                .method(method)
                .uri(t.path.as_str())
                .header(hyper::header::HOST, crate::deliver::host_header(&t))
                .header(hyper::header::CONTENT_TYPE, "application/json");
            if let Some(token) = &api.token {
                req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let req = req.body(Full::new(Bytes::from(bytes))).map_err(|e| e.to_string())?;
            let (status, _, body) = crate::deliver::request(&t, tcp, req, tls.as_ref(), 64 << 20).await?;
            let v: Value = serde_json::from_slice(&body)
                .unwrap_or_else(|_| json!({ "error": String::from_utf8_lossy(&body) }));
            Ok::<_, String>((status, v))
        };
        tokio::time::timeout(api.timeout, go)
            .await
            .map_err(|_| format!("no answer from {} within {:?}", api.url, api.timeout))?
    })
}

fn failed(status: u16, v: &Value) -> String {
    format!("vigil answered {status}: {}", v["error"].as_str().unwrap_or(&v.to_string()))
}

/// `vigil halt` / `vigil resume`.
pub fn command(
    api: &ApiTarget,
    verb: &str,
    scope: &Scope,
    reason: &str,
    actor: &str,
    yes: bool,
    as_json: bool,
) -> Result<ExitCode, String> {
    let broad = !matches!(scope, Scope::Agent(_));
    if broad && verb == "halt" && !yes {
        // Shadow first: the exact agents it would halt, nothing changed.
        let (status, v) = call(api, "POST", &format!("{}?dry_run=true", scope.path(verb)), None)?;
        if status != 200 {
            return Err(failed(status, &v));
        }
        let agents: Vec<&str> =
            v["agents"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        if as_json {
            println!("{v}");
        } else {
            println!(
                "dry run: this would halt {} agent(s) known now (and any that join later):",
                agents.len()
            );
            for a in &agents {
                println!("  {a}");
            }
            println!("run again with --yes to halt them");
        }
        return Ok(ExitCode::from(4));
    }
    let (status, v) =
        call(api, "POST", &scope.path(verb), Some(json!({ "reason": reason, "actor": actor })))?;
    match status {
        200 => {
            if as_json {
                println!("{v}");
            } else {
                let t = &v["transition"];
                println!(
                    "{} {} by {} at {}: {}",
                    t["action"].as_str().unwrap_or("?"),
                    describe(scope),
                    t["actor"].as_str().unwrap_or("?"),
                    t["ts"].as_str().unwrap_or("?"),
                    t["reason"].as_str().unwrap_or("")
                );
                let archived = v["archived"].as_bool().unwrap_or(false);
                println!(
                    "  events received before it: {}",
                    if archived { "archived" } else { "not yet all archived (still flushing)" }
                );
                let deliveries = v["deliveries"].as_array().cloned().unwrap_or_default();
                if deliveries.is_empty() {
                    println!("  webhooks: none configured for this event (gateways that check see it now)");
                }
                for d in deliveries {
                    println!(
                        "  webhook {}: {} {}",
                        d["endpoint"].as_str().unwrap_or("?"),
                        d["status"].as_str().unwrap_or("?"),
                        d["detail"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        409 => {
            if as_json {
                println!("{v}");
            } else {
                println!("unchanged: {}", v["error"].as_str().unwrap_or("?"));
            }
            Ok(ExitCode::from(3))
        }
        _ => Err(failed(status, &v)),
    }
}

fn describe(scope: &Scope) -> String {
    match scope {
        Scope::Agent(a) => format!("agent {a}"),
        Scope::Cohort(f, v) => format!("cohort {f}={v}"),
        Scope::Fleet => "the fleet".into(),
    }
}

/// `vigil status`: what is halted, why, since when, and whether each gateway was told; or, given an
/// agent, that agent in detail (exit 3 when vigil does not know it).
pub fn status(api: &ApiTarget, agent: Option<&str>, as_json: bool) -> Result<ExitCode, String> {
    if let Some(agent) = agent {
        return agent_status(api, agent, as_json);
    }
    let (code, v) = call(api, "GET", "/v1/halts", None)?;
    if code != 200 {
        return Err(failed(code, &v));
    }
    if as_json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let mut rows: Vec<[String; 5]> = Vec::new();
    let row = |what: String, entry: &Value| {
        let h = &entry["halt"];
        let deliveries: Vec<String> = entry["deliveries"]
            .as_array()
            .map(|d| {
                d.iter()
                    .map(|x| {
                        format!(
                            "{}:{}",
                            x["endpoint"].as_str().unwrap_or("?"),
                            x["status"].as_str().unwrap_or("?")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        [
            what,
            vigil_schemas::timestamp::format_rfc3339_ms(h["since"].as_i64().unwrap_or(0)),
            h["actor"].as_str().unwrap_or("?").to_owned(),
            h["reason"].as_str().unwrap_or("").to_owned(),
            if deliveries.is_empty() { "-".into() } else { deliveries.join(" ") },
        ]
    };
    if v["fleet"].is_object() {
        rows.push(row("FLEET".into(), &v["fleet"]));
    }
    for c in v["cohorts"].as_array().into_iter().flatten() {
        let (f, val) = (&c["halt"]["cohort"][0], &c["halt"]["cohort"][1]);
        rows.push(row(format!("cohort {}={}", f.as_str().unwrap_or("?"), val.as_str().unwrap_or("?")), c));
    }
    for a in v["agents"].as_array().into_iter().flatten() {
        rows.push(row(format!("agent {}", a["agent_id"].as_str().unwrap_or("?")), a));
    }
    if rows.is_empty() {
        println!("nothing is halted");
        return Ok(ExitCode::SUCCESS);
    }
    let header = ["HALTED", "SINCE", "BY", "WHY", "WEBHOOKS"].map(String::from);
    let mut widths = [0usize; 5];
    for r in std::iter::once(&header).chain(&rows) {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count().min(60));
        }
    }
    for r in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let c: String = c.chars().take(60).collect();
                format!("{c:<w$}", w = widths[i])
            })
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
    Ok(ExitCode::SUCCESS)
}

fn agent_status(api: &ApiTarget, agent: &str, as_json: bool) -> Result<ExitCode, String> {
    let (code, v) = call(api, "GET", &format!("/v1/agents/{}", encode(agent)), None)?;
    match code {
        200 => {}
        404 => {
            eprintln!("vigil knows no agent {agent:?} (no event, finding or command for it)");
            return Ok(ExitCode::from(3));
        }
        _ => return Err(failed(code, &v)),
    }
    if as_json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let text = |x: &Value| x.as_str().unwrap_or("?").to_owned();
    let time = |x: &Value| match x {
        Value::String(s) => s.clone(),
        _ => x.as_i64().map_or_else(|| "?".into(), vigil_schemas::timestamp::format_rfc3339_ms),
    };
    let number = |x: &Value| x.as_f64().map_or_else(|| "-".into(), |n| format!("{n}"));
    println!("agent {agent}: breaker {}", text(&v["breaker"]));
    if let Some(h) = v["halted"].as_object() {
        println!(
            "  HALTED ({} scope) since {} by {}: {}",
            text(&h["scope"]),
            time(&h["since"]),
            text(&h["actor"]),
            text(&h["reason"])
        );
    }
    if let Some(f) = v["factors"].as_object().filter(|f| !f.is_empty()) {
        let mut parts: Vec<String> = f.iter().map(|(k, x)| format!("{k}={}", text(x))).collect();
        parts.sort();
        println!("  {}", parts.join(", "));
    }
    let b = &v["baseline"];
    if b.is_object() {
        println!(
            "  baseline: role {:?}, {} windows of {} s, {} events, {}",
            b["role"].as_str().unwrap_or(""),
            b["windows"],
            b["window_seconds"],
            b["events"],
            if b["warm"] == true { "warm (judged statistically)" } else { "warming up (hard limits only)" }
        );
        let learned = b["windows"].as_u64().unwrap_or(0) > 0;
        for m in b["per_window"].as_array().into_iter().flatten().filter(|_| learned) {
            let most = if m["most_lately"].is_null() {
                String::new()
            } else {
                format!("  most lately {:>10}", number(&m["most_lately"]))
            };
            println!(
                "    {:<8} median {:>10}  usual high {:>10}  a finding from {:>10}{most}",
                text(&m["measure"]),
                number(&m["median"]),
                number(&m["usual_high"]),
                number(&m["threshold"])
            );
        }
    }
    let history = v["history"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !history.is_empty() {
        println!("  history:");
        for t in history {
            let id = t["transition_id"].as_str().unwrap_or("");
            let told: Vec<String> = v["deliveries"][id]
                .as_array()
                .into_iter()
                .flatten()
                .map(|d| format!("{}:{}", text(&d["endpoint"]), text(&d["status"])))
                .collect();
            println!(
                "    {}  {:<14} {:<18} {}{}",
                time(&t["ts"]),
                text(&t["action"]),
                text(&t["actor"]),
                t["reason"].as_str().unwrap_or(""),
                if told.is_empty() { String::new() } else { format!("  [{}]", told.join(" ")) }
            );
        }
    }
    let findings = v["findings"].as_array().map(Vec::as_slice).unwrap_or_default();
    if !findings.is_empty() {
        println!("  latest findings:");
        for f in findings.iter().rev() {
            println!(
                "    {}  {:<16} {:<8} {}",
                time(&f["ts"]),
                text(&f["kind"]),
                text(&f["severity"]),
                f["summary"].as_str().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! The control API and the gateway check, on the one server.
//!
//! - `POST /v1/agents/{id}/halt|resume`, `POST /v1/cohorts/{factor}/{value}/halt|resume`,
//!   `POST /v1/fleet/halt|resume`: body `{"reason": "...", "actor": "name"}`; `?dry_run=true` lists the
//!   agents it would cover and changes nothing. A halt answers once every event received before it is
//!   archived, with each webhook endpoint's delivery so far.
//! - `GET /v1/agents?state=open|half_open|halted&after=ID&limit=N`, `GET /v1/agents/{id}`,
//!   `GET /v1/halts` (what is halted now, with deliveries).
//! - `GET /v1/check?agent_id=…`, and Envoy's ext_authz HTTP form on `/v1/ext_authz/…` (any method, the
//!   agent id in `[api] agent_header`): 200 when the agent may act, 403 with the halt's scope, actor,
//!   reason and time in `x-vigil-*` headers and a JSON body when it is halted. A bad request is 400;
//!   only vigil's own faults are 5xx, so a gateway failing open covers vigil's outages, never a halt.
//!
//! Bearer tokens: the admin token may do everything, the read-only token may check and read. With no
//! token configured the API is open, which [`Auth::resolve`] allows on loopback only.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::{any, get, post};
use serde_json::{Value, json};
use vigil_respond::{Command, Halt, Target, Verb};
use vigil_schemas::rows::{BreakerState, Factor};

use super::{error, json};
use crate::config::ApiConfig;
use crate::control::{Control, DeliveryState};
use crate::telemetry::Telemetry;

/// The API's tokens.
#[derive(Clone, Default)]
pub struct Auth {
    admin: Option<String>,
    read: Option<String>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("admin", &self.admin.is_some())
            .field("read", &self.read.is_some())
            .finish()
    }
}

/// A bearer token from an environment variable or a file (`{what}_env`, `{what}_file` in `section`),
/// at least 16 characters once trimmed.
pub(super) fn read_token(
    section: &str,
    env: Option<&String>,
    file: Option<&std::path::PathBuf>,
    what: &str,
) -> Result<Option<String>, String> {
    let token = match (env, file) {
        (Some(_), Some(_)) => return Err(format!("{section} sets both {what}_env and {what}_file; set one")),
        (Some(var), None) => {
            Some(std::env::var(var).map_err(|_| format!("{section} {what}_env: {var} is not set"))?)
        }
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("{section} {what}_file {}: {e}", path.display()))?,
        ),
        (None, None) => None,
    };
    match token.map(|t| t.trim().to_owned()) {
        Some(t) if t.len() < 16 => Err(format!("{section} the {what} is shorter than 16 characters")),
        other => Ok(other),
    }
}

/// The bearer token of a request, if it sent one.
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

impl Auth {
    /// Reads the tokens; refuses an address beyond loopback without an admin token.
    pub fn resolve(api: &ApiConfig, listen: SocketAddr) -> Result<Auth, String> {
        let admin = read_token("[api]", api.token_env.as_ref(), api.token_file.as_ref(), "token")?;
        let read =
            read_token("[api]", api.read_token_env.as_ref(), api.read_token_file.as_ref(), "read_token")?;
        if admin.is_none() && !listen.ip().is_loopback() {
            return Err(format!(
                "refusing to serve the control API on {listen} without a token: set [api] token_env or \
                 token_file, or listen on 127.0.0.1"
            ));
        }
        if read.is_some() && admin.is_none() {
            return Err("[api] a read-only token needs an admin token too (token_env or token_file)".into());
        }
        Ok(Auth { admin, read })
    }

    /// An open API (loopback, tests).
    pub fn open() -> Auth {
        Auth::default()
    }

    /// Whether the request may act (`write`) or read.
    fn allows(&self, headers: &HeaderMap, write: bool) -> bool {
        let Some(admin) = &self.admin else { return true };
        let Some(given) = bearer(headers) else { return false };
        same(given, admin) || (!write && self.read.as_deref().is_some_and(|r| same(given, r)))
    }
}

/// Compares in time independent of where the first difference is.
pub(super) fn same(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0xff));
    }
    diff == 0
}

/// What the handlers share.
struct Api {
    control: Arc<Control>,
    auth: Auth,
    telemetry: Arc<Telemetry>,
    agent_header: String,
    max_page: usize,
}

/// The routes, sharing `control`.
pub fn routes(control: Arc<Control>, auth: Auth, api: &ApiConfig, telemetry: Arc<Telemetry>) -> Router {
    let state = Arc::new(Api {
        control,
        auth,
        telemetry,
        agent_header: api.agent_header.to_ascii_lowercase(),
        max_page: api.max_page,
    });
    Router::new()
        .route("/v1/check", get(check))
        .route("/v1/ext_authz", any(ext_authz))
        .route("/v1/ext_authz/{*path}", any(ext_authz))
        .route("/v1/agents", get(list_agents))
        .route("/v1/agents/{id}", get(one_agent))
        .route("/v1/agents/{id}/{verb}", post(agent_command))
        .route("/v1/cohorts/{factor}/{value}/{verb}", post(cohort_command))
        .route("/v1/fleet/{verb}", post(fleet_command))
        .route("/v1/halts", get(halts))
        .with_state(state)
}

fn unauthorized(api: &Api) -> Response {
    api.telemetry.unauthorized();
    let mut r = error(StatusCode::UNAUTHORIZED, "a bearer token is required (Authorization: Bearer …)");
    r.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

/// 200 or 403 for one agent, with the halt's details in headers and body.
fn verdict(api: &Api, agent: &str) -> Response {
    if agent.is_empty() || agent.len() > 256 {
        api.telemetry.check("bad_request");
        return error(StatusCode::BAD_REQUEST, "give the agent's id (1 to 256 characters)");
    }
    match api.control.check(agent) {
        None => {
            api.telemetry.check("allow");
            json(StatusCode::OK, &json!({ "agent_id": agent, "allowed": true }))
        }
        Some(h) => {
            api.telemetry.check("halted");
            let mut r =
                json(StatusCode::FORBIDDEN, &json!({ "agent_id": agent, "allowed": false, "halt": h }));
            let hs = r.headers_mut();
            let put = |hs: &mut HeaderMap, name: &'static str, v: &str| {
                // Header values must be visible ASCII: anything else is replaced.
                let clean: String =
                    v.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect();
                if let Ok(v) = HeaderValue::from_str(&clean) {
                    hs.insert(name, v);
                }
            };
            put(hs, "x-vigil-scope", h.scope.as_str());
            put(hs, "x-vigil-actor", &h.actor);
            put(hs, "x-vigil-reason", &h.reason);
            put(hs, "x-vigil-halted-at", &vigil_schemas::timestamp::format_rfc3339_ms(h.since));
            put(hs, "x-vigil-transition-id", &h.transition_id);
            if let Some((f, v)) = &h.cohort {
                put(hs, "x-vigil-cohort", &format!("{}={v}", f.as_str()));
            }
            r
        }
    }
}

async fn check(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !api.auth.allows(&headers, false) {
        return unauthorized(&api);
    }
    let Some(agent) = q.get("agent_id") else {
        api.telemetry.check("bad_request");
        return error(StatusCode::BAD_REQUEST, "give ?agent_id=…");
    };
    verdict(&api, agent)
}

async fn ext_authz(State(api): State<Arc<Api>>, req: Request) -> Response {
    if !api.auth.allows(req.headers(), false) {
        return unauthorized(&api);
    }
    let agent = req.headers().get(api.agent_header.as_str()).and_then(|v| v.to_str().ok()).unwrap_or("");
    if agent.is_empty() {
        api.telemetry.check("bad_request");
        return error(StatusCode::BAD_REQUEST, &format!("the {} header names no agent", api.agent_header));
    }
    verdict(&api, agent)
}

fn halt_json(h: &Halt) -> Value {
    serde_json::to_value(h).unwrap_or_default()
}

async fn list_agents(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !api.auth.allows(&headers, false) {
        return unauthorized(&api);
    }
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => api.max_page,
        Some(Ok(n)) if n >= 1 => n.min(api.max_page),
        Some(_) => return error(StatusCode::BAD_REQUEST, "limit must be a positive integer"),
    };
    let state = q.get("state").map(String::as_str);
    if let Some(s) = state
        && !["open", "half_open", "closed", "halted", "all"].contains(&s)
    {
        return error(StatusCode::BAD_REQUEST, "state is one of open, half_open, closed, halted, all");
    }
    let after = q.get("after").cloned().unwrap_or_default();
    let control = api.control.clone();
    let rows: Vec<Value> = {
        let not_closed = control.agents();
        let listed: Vec<(String, BreakerState, Option<Halt>)> = match state {
            Some("closed") | Some("all") => {
                let mut all: Vec<(String, BreakerState, Option<Halt>)> = control
                    .known_agents()
                    .into_iter()
                    .map(|a| {
                        let found = not_closed.iter().find(|(x, _, _)| *x == a).cloned();
                        found.unwrap_or_else(|| {
                            let h = control.check(&a);
                            (a, BreakerState::Closed, h)
                        })
                    })
                    .collect();
                for n in &not_closed {
                    if !all.iter().any(|(a, _, _)| *a == n.0) {
                        all.push(n.clone());
                    }
                }
                all.sort_by(|a, b| a.0.cmp(&b.0));
                if state == Some("closed") {
                    all.retain(|(_, s, _)| *s == BreakerState::Closed);
                }
                all
            }
            Some("halted") => not_closed.into_iter().filter(|(_, _, h)| h.is_some()).collect(),
            Some("open") => not_closed.into_iter().filter(|(_, s, _)| *s == BreakerState::Open).collect(),
            Some("half_open") => {
                not_closed.into_iter().filter(|(_, s, _)| *s == BreakerState::HalfOpen).collect()
            }
            _ => not_closed,
        };
        listed
            .into_iter()
            .filter(|(a, _, _)| after.is_empty() || *a > after)
            .take(limit + 1)
            .map(|(a, s, h)| {
                let mode = control.open_mode(&a).map(|m| m.as_str());
                json!({ "agent_id": a, "breaker": s.as_str(), "mode": mode, "halted": h.as_ref().map(halt_json) })
            })
            .collect()
    };
    let more = rows.len() > limit;
    let rows: Vec<Value> = rows.into_iter().take(limit).collect();
    let next = if more { rows.last().and_then(|r| r["agent_id"].as_str()).map(str::to_owned) } else { None };
    json(StatusCode::OK, &json!({ "agents": rows, "next_after": next }))
}

async fn one_agent(State(api): State<Arc<Api>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if !api.auth.allows(&headers, false) {
        return unauthorized(&api);
    }
    match api.control.agent(&id) {
        Some(v) => json(StatusCode::OK, &v),
        None => error(StatusCode::NOT_FOUND, &format!("no agent {id:?} is known")),
    }
}

async fn halts(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    if !api.auth.allows(&headers, false) {
        return unauthorized(&api);
    }
    let view = api.control.view();
    let (agents, cohorts, fleet) = view.halts();
    let with = |h: &Halt| {
        let d: Vec<DeliveryState> = api.control.deliveries(&h.transition_id);
        json!({ "halt": halt_json(h), "deliveries": d })
    };
    let body = json!({
        "fleet": fleet.map(with),
        "cohorts": cohorts.iter().map(|h| with(h)).collect::<Vec<_>>(),
        "agents": agents.iter().map(|(a, h)| { let mut v = with(h); v["agent_id"] = json!(a); v }).collect::<Vec<_>>(),
        "endpoints": api.control.endpoints(),
    });
    drop(view);
    json(StatusCode::OK, &body)
}

async fn agent_command(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path((id, verb)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    command(api, headers, Target::Agent(id), &verb, &q, body).await
}

async fn cohort_command(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path((factor, value, verb)): Path<(String, String, String)>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let Some(f) = Factor::parse(&factor) else {
        return error(StatusCode::BAD_REQUEST, &format!("no factor {factor:?}: model, provider or issuer"));
    };
    command(api, headers, Target::Cohort(f, value), &verb, &q, body).await
}

async fn fleet_command(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    Path(verb): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    command(api, headers, Target::Fleet, &verb, &q, body).await
}

async fn command(
    api: Arc<Api>,
    headers: HeaderMap,
    target: Target,
    verb: &str,
    q: &HashMap<String, String>,
    body: Bytes,
) -> Response {
    let scope = target.scope().as_str();
    if !api.auth.allows(&headers, true) {
        api.telemetry.command(verb, scope, "refused");
        return unauthorized(&api);
    }
    let verb = match verb {
        "halt" => Verb::Halt,
        "resume" => Verb::Resume,
        other => return error(StatusCode::NOT_FOUND, &format!("no command {other:?}: halt or resume")),
    };
    let verb_name = if verb == Verb::Halt { "halt" } else { "resume" };
    if q.get("dry_run").is_some_and(|v| v == "true" || v == "1") {
        let agents = match &target {
            Target::Agent(a) => vec![a.clone()],
            Target::Cohort(f, v) => api.control.view().members(*f, v),
            Target::Fleet => api.control.known_agents(),
        };
        return json(
            StatusCode::OK,
            &json!({ "dry_run": true, "verb": verb_name, "scope": scope, "agents": agents }),
        );
    }
    let parsed: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return error(StatusCode::BAD_REQUEST, &format!("the body is not JSON: {e}")),
        }
    };
    let text = |k: &str| parsed.get(k).and_then(Value::as_str).unwrap_or("").trim().to_owned();
    let (reason, actor) = (text("reason"), text("actor"));
    if reason.is_empty() || actor.is_empty() {
        api.telemetry.command(verb_name, scope, "refused");
        return error(StatusCode::BAD_REQUEST, "give {\"reason\": \"…\", \"actor\": \"your name\"}");
    }
    if reason.len() > 1000 || actor.len() > 200 {
        return error(StatusCode::BAD_REQUEST, "reason is at most 1000 characters, actor 200");
    }
    let cmd = Command {
        id: format!("{}-{:016x}", crate::pipeline::now_ms(), fastrand::u64(..)),
        ts: crate::pipeline::now_ms(),
        verb,
        target,
        operator: actor,
        reason,
    };
    let control = api.control.clone();
    let done = tokio::task::spawn_blocking(move || control.command(&cmd)).await;
    match done {
        Ok(Ok(answer)) => {
            api.telemetry.command(verb_name, scope, "applied");
            json(StatusCode::OK, &serde_json::to_value(&answer).unwrap_or_default())
        }
        Ok(Err(e)) if e.is_unchanged() => {
            api.telemetry.command(verb_name, scope, "unchanged");
            error(StatusCode::CONFLICT, &e.to_string())
        }
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("the command failed: {e}")),
    }
}

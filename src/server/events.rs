//! `POST /v1/events`: reads a body under its caps, decompresses and splits it off the connection
//! threads, hands the items to the HTTP intake and answers what became of each.
//!
//! A body is NDJSON or a JSON array (gzip or zstd accepted), capped as sent and once decompressed. The
//! answer lists the refused items by line (or array index) with the reason. With `[[http.sender]]`
//! declared, a request needs one sender's bearer token (401 otherwise), and its items for agents or
//! sources that sender is not granted are refused as `not_permitted` and dead-lettered (403 when that
//! is all it carried). A body being received holds only the bytes it sent, out of the server's
//! `body_bytes_in_flight`, and is cut (408) below `min_body_bytes_per_second`; once it is in, the
//! request takes one of `max_inflight_requests` slots. 429s carry `Retry-After`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{
    ALLOW, CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE,
};
use axum::http::{HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::post;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use vigil_ingest::source::Line;
use vigil_ingest::source::http::{BodyError, Framing, decode_body, framing_for, split};

use super::{api, busy, error, json};
use crate::config::HttpConfig;
use crate::pipeline::Sender;
use crate::run::http::{HttpIntake, Refusal, Verdict};
use crate::telemetry::Telemetry;

/// `[[http.sender]]` with their tokens: who may post, and what each may claim.
#[derive(Default)]
pub(super) struct Senders(Vec<(String, Arc<Sender>)>);

impl Senders {
    /// Reads every sender's token; refuses a listener beyond loopback with no sender declared (anyone
    /// reaching it could post events for any agent: halt it, frame it, or bury its real events).
    pub(super) fn resolve(http: &HttpConfig, listen: SocketAddr) -> Result<Senders, String> {
        if http.senders.is_empty() && !listen.ip().is_loopback() {
            return Err(format!(
                "refusing to take events on {listen} from anyone: declare who may send them with \
                 [[http.sender]] (a token and the agents it may claim), or listen on 127.0.0.1"
            ));
        }
        let mut out = Vec::with_capacity(http.senders.len());
        for sd in &http.senders {
            let section = format!("[[http.sender]] {:?}:", sd.name);
            let token = api::read_token(&section, sd.token_env.as_ref(), sd.token_file.as_ref(), "token")?
                .ok_or_else(|| format!("{section} needs token_env or token_file"))?;
            if out.iter().any(|(t, _): &(String, _)| api::same(t, &token)) {
                return Err(format!("{section} shares its token with another sender; give each its own"));
            }
            out.push((token, Arc::new(Sender::new(sd))));
        }
        Ok(Senders(out))
    }

    /// `Ok(None)` when no sender is declared (anyone may post); the sender whose token the request
    /// carries; or `Err` when it carries none of theirs.
    fn who(&self, headers: &axum::http::HeaderMap) -> Result<Option<Arc<Sender>>, ()> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let given = api::bearer(headers).ok_or(())?;
        // Every token is compared, so the time taken does not say which one came close.
        let mut found = None;
        for (token, sender) in &self.0 {
            if api::same(given, token) {
                found = Some(sender.clone());
            }
        }
        found.map(Some).ok_or(())
    }
}

/// What the handler shares.
pub(super) struct Events {
    pub(super) http: HttpConfig,
    /// `[input] max_event_bytes`: longer items are cut to a prefix when split.
    pub(super) max_event_bytes: usize,
    pub(super) intake: Arc<HttpIntake>,
    pub(super) permits: Arc<Semaphore>,
    /// `body_bytes_in_flight`, one permit per byte.
    pub(super) body_bytes: Arc<Semaphore>,
    pub(super) stopping: Arc<AtomicBool>,
    pub(super) senders: Senders,
    pub(super) telemetry: Arc<Telemetry>,
}

/// The route, with a JSON 405 for other methods.
pub(super) fn routes(state: Arc<Events>) -> Router {
    let other = || async {
        let mut r = error(StatusCode::METHOD_NOT_ALLOWED, "POST events to /v1/events");
        r.headers_mut().insert(ALLOW, HeaderValue::from_static("POST"));
        r
    };
    Router::new().route("/v1/events", post(ingest).fallback(other)).with_state(state)
}

/// A header's value as text, if it is present and readable.
fn header(req: &Request, name: axum::http::HeaderName) -> Option<&str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

async fn ingest(
    State(state): State<Arc<Events>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let http = &state.http;
    if state.stopping.load(Ordering::Relaxed) {
        return busy(StatusCode::SERVICE_UNAVAILABLE, http.retry_after_seconds, "vigil is stopping");
    }
    let Ok(sender) = state.senders.who(req.headers()) else {
        state.telemetry.unauthorized();
        let mut r = error(
            StatusCode::UNAUTHORIZED,
            "a sender's bearer token is required (Authorization: Bearer …; see [[http.sender]])",
        );
        r.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    };
    if header(&req, CONTENT_LENGTH)
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > http.max_body_bytes as u64)
    {
        return too_large(http);
    }
    let content_type = header(&req, CONTENT_TYPE).map(str::to_owned);
    let encoding = header(&req, CONTENT_ENCODING).map(str::to_owned);
    // The body first, holding only the bytes it has sent so far; the request's slot after.
    let (raw, _bytes_held) = match read_body(&state, req.into_body()).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(_permit) = state.permits.clone().try_acquire_owned() else {
        return busy(
            StatusCode::TOO_MANY_REQUESTS,
            http.retry_after_seconds,
            &format!("{} requests in flight already", http.max_inflight_requests),
        );
    };
    // Decompressing, splitting and checking are CPU work: off the connection threads.
    let max_event = state.max_event_bytes;
    let max_decoded = http.max_decoded_bytes;
    let max_items = http.max_items_per_request;
    let framed = tokio::task::spawn_blocking(move || -> Result<(Framing, Vec<u8>, Vec<Line>), BodyError> {
        let body = decode_body(encoding.as_deref(), &raw, max_decoded)?.into_owned();
        let framing = framing_for(content_type.as_deref(), &body)?;
        let items = split(framing, &body, max_event, max_items)?;
        Ok((framing, body, items))
    })
    .await;
    let (framing, body, items) = match framed {
        Ok(Ok(f)) => f,
        Ok(Err(e)) => {
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
            return error(status, &e.to_string());
        }
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, &format!("checking the body: {e}")),
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return error(
            StatusCode::BAD_REQUEST,
            "the body is empty: send NDJSON lines or a JSON array of events",
        );
    }
    let verdicts = match state.intake.take(body, items, remote, sender).await {
        Ok(v) => v,
        Err(Refusal::Busy(m)) => return busy(StatusCode::TOO_MANY_REQUESTS, http.retry_after_seconds, &m),
        Err(Refusal::Stopped(m)) => {
            return busy(StatusCode::SERVICE_UNAVAILABLE, http.retry_after_seconds, &m);
        }
        Err(Refusal::Failed(m)) => return error(StatusCode::INTERNAL_SERVER_ERROR, &m),
    };
    respond(&verdicts, framing, http)
}

/// 413 for a body over `max_body_bytes`. The rest of it is not read: the connection cannot be reused.
fn too_large(http: &HttpConfig) -> Response {
    let mut r = error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &BodyError::TooLarge { limit: http.max_body_bytes, decoded: false }.to_string(),
    );
    r.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

/// Grace before a body's average rate is held to `min_body_bytes_per_second`.
const RATE_GRACE: Duration = Duration::from_secs(2);

/// Receives a body under its caps: `max_body_bytes` (413), the server's budget of body bytes being
/// received (`body_bytes_in_flight`, taken as the bytes arrive, 429 when spent), `request_timeout_seconds`
/// in all and, after two seconds, `min_body_bytes_per_second` on average (408). Returns the body and
/// the budget it holds, released when the request is done with it.
async fn read_body(
    state: &Events,
    mut body: axum::body::Body,
) -> Result<(Vec<u8>, Option<OwnedSemaphorePermit>), Response> {
    let http = &state.http;
    let started = tokio::time::Instant::now();
    let deadline = started + Duration::from_secs(http.request_timeout_seconds);
    let min_rate = http.min_body_bytes_per_second;
    let mut raw: Vec<u8> = Vec::new();
    let mut held: Option<OwnedSemaphorePermit> = None;
    loop {
        // When this body falls below the minimum rate if nothing more arrives.
        let slow_at = match min_rate {
            0 => deadline,
            r => started + RATE_GRACE.max(Duration::from_secs_f64((raw.len() + 1) as f64 / r as f64)),
        };
        let frame = match tokio::time::timeout_at(slow_at.min(deadline), body.frame()).await {
            Err(_) if slow_at < deadline => {
                let message = format!(
                    "the body arrives slower than {min_rate} bytes/s (http.min_body_bytes_per_second)"
                );
                return Err(error(StatusCode::REQUEST_TIMEOUT, &message));
            }
            Err(_) => return Err(error(StatusCode::REQUEST_TIMEOUT, "the body did not arrive in time")),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(error(StatusCode::BAD_REQUEST, &format!("reading the body: {e}")));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        if raw.len() + data.len() > http.max_body_bytes {
            return Err(too_large(http));
        }
        let n = u32::try_from(data.len()).unwrap_or(u32::MAX);
        match state.body_bytes.clone().try_acquire_many_owned(n) {
            Ok(p) => match held.as_mut() {
                Some(h) => h.merge(p),
                None => held = Some(p),
            },
            Err(_) => {
                return Err(busy(
                    StatusCode::TOO_MANY_REQUESTS,
                    http.retry_after_seconds,
                    &format!(
                        "{} bytes of request bodies are being received already",
                        http.body_bytes_in_flight
                    ),
                ));
            }
        }
        raw.extend_from_slice(&data);
    }
    Ok((raw, held))
}

/// The answer to a request: counts, the first `max_errors_listed` refused items, and a status that
/// says what to do: 200 (taken, maybe with refused items to fix), 400 (nothing valid), 429 or 503 (some
/// items not taken on this side: send those again after `Retry-After`).
fn respond(verdicts: &[Verdict], framing: Framing, http: &HttpConfig) -> Response {
    let mut counts = [0u64; 4];
    let mut errors = Vec::new();
    let mut failed_code = None;
    for (i, v) in verdicts.iter().enumerate() {
        let (slot, problem) = match v {
            Verdict::Accepted => (0, None),
            Verdict::Blank => (1, None),
            Verdict::Rejected { code, detail } => (2, Some((code, detail))),
            Verdict::Failed { code, detail } => {
                failed_code.get_or_insert(*code);
                (3, Some((code, detail)))
            }
        };
        counts[slot] += 1;
        if let Some((code, detail)) = problem
            && errors.len() < http.max_errors_listed
        {
            let (key, at) = match framing {
                Framing::Ndjson => ("line", i + 1),
                Framing::Json => ("index", i),
            };
            errors.push(serde_json::json!({ key: at, "code": code, "error": detail }));
        }
    }
    let [accepted, blank, rejected, failed] = counts;
    let forbidden = verdicts
        .iter()
        .all(|v| matches!(v, Verdict::Rejected { code: "not_permitted", .. } | Verdict::Blank));
    let status = match failed_code {
        Some("saturated") => StatusCode::TOO_MANY_REQUESTS,
        Some(_) => StatusCode::SERVICE_UNAVAILABLE,
        // Nothing in it was the sender's to send.
        None if accepted == 0 && rejected > 0 && forbidden => StatusCode::FORBIDDEN,
        None if accepted == 0 && rejected > 0 => StatusCode::BAD_REQUEST,
        None => StatusCode::OK,
    };
    let body = serde_json::json!({
        "accepted": accepted,
        "rejected": rejected,
        "failed": failed,
        "blank": blank,
        "errors": errors,
        "errors_omitted": (rejected + failed) as usize - errors.len(),
    });
    let mut r = json(status, &body);
    if failed > 0 {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(http.retry_after_seconds));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response's status and JSON body.
    fn parts(r: Response) -> (StatusCode, serde_json::Value) {
        let status = r.status();
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let bytes = rt.block_on(r.into_body().collect()).unwrap().to_bytes();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[test]
    fn statuses_say_what_to_do() {
        let http = HttpConfig { max_errors_listed: 1, ..HttpConfig::default() };
        let bad = || Verdict::Rejected { code: "not_json", detail: "x".into() };
        let (status, b) =
            parts(respond(&[Verdict::Accepted, bad(), bad(), Verdict::Blank], Framing::Ndjson, &http));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            (b["accepted"].as_u64(), b["rejected"].as_u64(), b["blank"].as_u64()),
            (Some(1), Some(2), Some(1))
        );
        assert_eq!((b["errors"][0]["line"].as_u64(), b["errors_omitted"].as_u64()), (Some(2), Some(1)));
        let (status, b) = parts(respond(&[bad()], Framing::Json, &http));
        assert_eq!((status, b["errors"][0]["index"].as_u64()), (StatusCode::BAD_REQUEST, Some(0)));
        let failed = Verdict::Failed { code: "saturated", detail: "full".into() };
        let r = respond(&[Verdict::Accepted, failed], Framing::Ndjson, &http);
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers().get(RETRY_AFTER).unwrap(), "1");
        let down = Verdict::Failed { code: "produce_failed", detail: "down".into() };
        assert_eq!(respond(&[down], Framing::Ndjson, &http).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(respond(&[], Framing::Ndjson, &http).status(), StatusCode::OK);
    }
}

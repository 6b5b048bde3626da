//! The webhook sender: takes transitions already durable in the control log (the outbox), signs them
//! (Standard Webhooks), and delivers each to every endpoint that wants it, in order per endpoint, on a
//! thread of its own. Only 2xx is success; other answers and network errors are retried with
//! exponential backoff and jitter (a `Retry-After` is honoured); 410 disables the endpoint; a 3xx is
//! not followed; a target in a private range is refused before connecting unless the endpoint allows
//! it. Every ending (delivered, failed, disabled, refused) is reported back, to be logged and archived.
//! The webhook-id is the transition's, on every attempt and after every restart, so receivers dedupe.

pub mod guard;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use vigil_respond::webhook::{Secret, payload, webhook_id};
use vigil_schemas::rows::{Action, Delivery, DeliveryOutcome, Mode, Transition};

use crate::config::WebhookConfig;
use guard::Target;

/// One endpoint, resolved: its secret read, its URL parsed.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Its name in the record.
    pub name: String,
    target: Target,
    secret: Secret,
    events: HashSet<Action>,
    allow_private: bool,
    timeout: Duration,
    initial_backoff: Duration,
    max_backoff: Duration,
    give_up: Duration,
}

impl Endpoint {
    /// Checks what can be checked without reading secrets; returns the endpoint's name.
    pub fn check(w: &WebhookConfig) -> Result<String, String> {
        let target = guard::parse_url(&w.url)?;
        let sources = [w.secret.is_some(), w.secret_env.is_some(), w.secret_file.is_some()];
        if sources.iter().filter(|s| **s).count() != 1 {
            return Err(format!(
                "{}: set exactly one of secret, secret_env, secret_file (a whsec_ signing secret)",
                w.url
            ));
        }
        if let Some(s) = &w.secret {
            Secret::parse(s).map_err(|e| format!("{}: {e}", w.url))?;
        }
        for e in &w.events {
            if Action::parse(e).is_none() {
                let known: Vec<&str> = Action::ALL.iter().map(|a| a.as_str()).collect();
                return Err(format!("{}: unknown event {e:?} (known: {})", w.url, known.join(", ")));
            }
        }
        if w.timeout_ms == 0 || w.initial_backoff_ms == 0 || w.max_backoff_ms < w.initial_backoff_ms {
            return Err(format!(
                "{}: timeout_ms and initial_backoff_ms must be at least 1, max_backoff_ms at least initial_backoff_ms",
                w.url
            ));
        }
        Ok(w.name.clone().unwrap_or(target.host))
    }

    /// Resolves the endpoint: reads its secret from where the config says.
    pub fn resolve(w: &WebhookConfig) -> Result<Endpoint, String> {
        let name = Endpoint::check(w)?;
        let text = if let Some(s) = &w.secret {
            s.clone()
        } else if let Some(var) = &w.secret_env {
            std::env::var(var).map_err(|_| {
                format!("webhook {name}: the environment variable {var} (secret_env) is not set")
            })?
        } else if let Some(path) = &w.secret_file {
            std::fs::read_to_string(path)
                .map_err(|e| format!("webhook {name}: secret_file {}: {e}", path.display()))?
        } else {
            unreachable!("check() requires one secret source")
        };
        let secret = Secret::parse(&text).map_err(|e| format!("webhook {name}: {e}"))?;
        Ok(Endpoint {
            target: guard::parse_url(&w.url)?,
            secret,
            events: w.events.iter().filter_map(|e| Action::parse(e)).collect(),
            allow_private: w.allow_private,
            timeout: Duration::from_millis(w.timeout_ms),
            initial_backoff: Duration::from_millis(w.initial_backoff_ms),
            max_backoff: Duration::from_millis(w.max_backoff_ms),
            give_up: Duration::from_secs(w.give_up_after_seconds),
            name,
        })
    }

    /// Whether this endpoint is told about `t` (shadow decisions are never sent).
    pub fn wants(&self, t: &Transition) -> bool {
        t.mode != Mode::Shadow && self.events.contains(&t.action)
    }
}

/// What the sender reports for each delivery that ended.
pub type Report = Arc<dyn Fn(DeliveryOutcome, Duration) + Send + Sync>;

/// A delivery owed to one endpoint.
#[derive(Debug)]
struct Job {
    transition: Arc<Transition>,
    body: Bytes,
    since: Instant,
}

/// The sender thread; see the module docs. Dropping it stops the thread; what was not delivered stays
/// owed in the control log.
#[derive(Debug)]
pub struct Sender {
    queues: Vec<(String, mpsc::UnboundedSender<Job>)>,
    thread: Option<std::thread::JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Sender {
    /// Starts the thread for `endpoints`; `report` is called once per delivery that ends.
    pub fn start(endpoints: Vec<Endpoint>, report: Report) -> std::io::Result<Sender> {
        let tls = if endpoints.iter().any(|e| e.target.tls) { Some(tls_config()?) } else { None };
        let mut queues = Vec::new();
        let mut receivers = Vec::new();
        for e in endpoints {
            let (tx, rx) = mpsc::unbounded_channel();
            queues.push((e.name.clone(), tx));
            receivers.push((e, rx));
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::Builder::new().name("vigil-webhooks".into()).spawn(move || {
            rt.block_on(async move {
                for (e, rx) in receivers {
                    tokio::spawn(endpoint_loop(e, rx, report.clone(), tls.clone()));
                }
                let _ = stopped.await;
            });
        })?;
        Ok(Sender { queues, thread: Some(thread), stop: Some(stop) })
    }

    /// Queues `t` for `endpoint` (by name); false when no such endpoint.
    pub fn send(&self, endpoint: &str, t: Arc<Transition>) -> bool {
        let Some((_, q)) = self.queues.iter().find(|(n, _)| n == endpoint) else { return false };
        let body = Bytes::from(payload(&t));
        q.send(Job { transition: t, body, since: Instant::now() }).is_ok()
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.queues.clear();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn tls_config() -> std::io::Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        return Err(std::io::Error::other("no CA certificates found on this system for https webhooks"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// How one attempt ended.
enum Attempt {
    /// An HTTP answer, with its `Retry-After` in seconds when it had one.
    Answer(u16, Option<u64>),
    /// Refused before connecting (the guard).
    Refused(String),
    /// A network error or a timeout.
    Failed(String),
}

async fn endpoint_loop(
    e: Endpoint,
    mut rx: mpsc::UnboundedReceiver<Job>,
    report: Report,
    tls: Option<Arc<rustls::ClientConfig>>,
) {
    let mut disabled = false;
    while let Some(job) = rx.recv().await {
        let id = webhook_id(&job.transition);
        let outcome = |delivery, attempts, status, detail: String| DeliveryOutcome {
            transition_id: job.transition.transition_id.clone(),
            endpoint: e.name.clone(),
            ts: crate::pipeline::now_ms(),
            outcome: delivery,
            attempts,
            status,
            detail,
        };
        if disabled {
            report(
                outcome(Delivery::Disabled, 0, None, "the endpoint answered 410 Gone earlier".into()),
                job.since.elapsed(),
            );
            continue;
        }
        let mut attempts = 0u32;
        let mut backoff = e.initial_backoff;
        loop {
            attempts += 1;
            let sent = tokio::time::timeout(e.timeout, attempt(&e, &id, &job.body, tls.as_ref())).await;
            let (retry_after, detail) = match sent {
                Ok(Attempt::Answer(s, _)) if (200..300).contains(&s) => {
                    let took = job.since.elapsed();
                    let detail = format!("delivered in {:.0} ms", took.as_secs_f64() * 1000.0);
                    report(outcome(Delivery::Delivered, attempts, Some(s), detail), took);
                    break;
                }
                Ok(Attempt::Answer(410, _)) => {
                    disabled = true;
                    let detail = "410 Gone: the endpoint is disabled until vigil restarts".to_owned();
                    report(outcome(Delivery::Disabled, attempts, Some(410), detail), job.since.elapsed());
                    break;
                }
                Ok(Attempt::Answer(s, _)) if (300..400).contains(&s) => {
                    let detail = format!("answered {s} (a redirect); redirects are not followed");
                    report(outcome(Delivery::Refused, attempts, Some(s), detail), job.since.elapsed());
                    break;
                }
                Ok(Attempt::Refused(why)) => {
                    report(outcome(Delivery::Refused, attempts, None, why), job.since.elapsed());
                    break;
                }
                Ok(Attempt::Answer(s, after)) => (after, format!("answered {s}")),
                Ok(Attempt::Failed(why)) => (None, why),
                Err(_) => (None, format!("no answer within {} ms", e.timeout.as_millis())),
            };
            if job.since.elapsed() >= e.give_up {
                let detail = format!("gave up after {attempts} attempts: {detail}");
                report(outcome(Delivery::Failed, attempts, None, detail), job.since.elapsed());
                break;
            }
            // Full jitter around the backoff: between half and one and a half times it.
            let jittered = backoff.mul_f64(0.5 + fastrand::f64());
            let wait = match retry_after {
                Some(s) => jittered.max(Duration::from_secs(s)),
                None => jittered,
            };
            tokio::time::sleep(wait.min(e.give_up.saturating_sub(job.since.elapsed()))).await;
            backoff = (backoff * 2).min(e.max_backoff);
        }
    }
}

async fn attempt(e: &Endpoint, id: &str, body: &Bytes, tls: Option<&Arc<rustls::ClientConfig>>) -> Attempt {
    let t = &e.target;
    let addrs: Vec<SocketAddr> = match guard::literal(&t.host) {
        Some(ip) => vec![SocketAddr::new(ip, t.port)],
        None => match tokio::net::lookup_host((t.host.as_str(), t.port)).await {
            Ok(a) => a.collect(),
            Err(err) => return Attempt::Failed(format!("resolving {}: {err}", t.host)),
        },
    };
    let addr = match guard::vet(&t.host, &addrs, e.allow_private) {
        Ok(a) => a,
        Err(why) => return Attempt::Refused(why),
    };
    let tcp = match tokio::net::TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(err) => return Attempt::Failed(format!("connecting to {addr}: {err}")),
    };
    let _ = tcp.set_nodelay(true);
    let now = crate::pipeline::now_ms() / 1000;
    let host = host_header(t);
    let req = hyper::Request::post(t.path.as_str())
        .header(hyper::header::HOST, host)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, concat!("vigil/", env!("CARGO_PKG_VERSION")))
        .header("webhook-id", id)
        .header("webhook-timestamp", now.to_string())
        .header("webhook-signature", e.secret.sign(id, now, body))
        .body(Full::new(body.clone()));
    let req = match req {
        Ok(r) => r,
        Err(err) => return Attempt::Failed(format!("building the request: {err}")),
    };
    match send(t, tcp, req, tls).await {
        Ok((status, after)) => Attempt::Answer(status, after),
        Err(e) => Attempt::Failed(e),
    }
}

/// Sends one request over `tcp` (wrapped in TLS for an `https` target) and reads a bounded answer:
/// the status and `Retry-After` in seconds when given.
async fn send(
    t: &Target,
    tcp: tokio::net::TcpStream,
    req: hyper::Request<Full<Bytes>>,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(u16, Option<u64>), String> {
    let (status, headers, _) = request(t, tcp, req, tls, 64 << 10).await?;
    let after = headers
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    Ok((status, after))
}

/// One HTTP/1 exchange over `tcp` (TLS for an `https` target): status, headers and up to `limit` bytes
/// of the body.
pub async fn request(
    t: &Target,
    tcp: tokio::net::TcpStream,
    req: hyper::Request<Full<Bytes>>,
    tls: Option<&Arc<rustls::ClientConfig>>,
    limit: usize,
) -> Result<(u16, hyper::HeaderMap, Bytes), String> {
    match (t.tls, tls) {
        (true, Some(cfg)) => {
            let name = rustls::pki_types::ServerName::try_from(t.host.clone())
                .map_err(|e| format!("{}: not a TLS server name: {e}", t.host))?;
            let s = tokio_rustls::TlsConnector::from(cfg.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {}: {e}", t.host))?;
            exchange(s, req, limit).await
        }
        (true, None) => Err("TLS is not set up".into()),
        (false, _) => exchange(tcp, req, limit).await,
    }
}

/// The `Host` header for a target.
pub fn host_header(t: &Target) -> String {
    if (t.tls && t.port == 443) || (!t.tls && t.port == 80) {
        bracket(&t.host)
    } else {
        format!("{}:{}", bracket(&t.host), t.port)
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_owned() }
}

async fn exchange<S>(
    io: S,
    req: hyper::Request<Full<Bytes>>,
    limit: usize,
) -> Result<(u16, hyper::HeaderMap, Bytes), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let conn = tokio::spawn(conn);
    let answer = match send.send_request(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            // A bounded answer: what is past the limit is not read.
            let body = http_body_util::Limited::new(resp.into_body(), limit)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok((status, headers, body))
        }
        Err(e) => Err(format!("sending: {e}")),
    };
    conn.abort();
    answer
}

/// The TLS settings for `https` (the system's CA roots), for other clients of this module.
pub fn client_tls() -> std::io::Result<Arc<rustls::ClientConfig>> {
    tls_config()
}

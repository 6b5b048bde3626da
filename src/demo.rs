//! The demo's gateway: a webhook receiver on loopback that checks every Standard Webhooks signature
//! and counts what it received, so `vigil demo` shows a halt reaching a gateway. (The tests check
//! signatures with the independent Python `standardwebhooks` package instead.)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use vigil_respond::webhook::Secret;

use crate::config::WebhookConfig;
use crate::server::{ServeError, Server};

/// A signing secret for the demo only (16 bytes of base64 zeros would do; this reads better).
const SECRET: &str = "whsec_dmlnaWwtZGVtby1yZWNlaXZlci1zZWNyZXQ=";

#[derive(Default)]
struct Seen {
    by_type: BTreeMap<String, usize>,
    ids: std::collections::HashSet<String>,
    bad: usize,
}

/// The receiver; stops when dropped.
pub struct Receiver {
    server: Option<Server>,
    seen: Arc<Mutex<Seen>>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").finish_non_exhaustive()
    }
}

async fn hook(State(seen): State<Arc<Mutex<Seen>>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let (id, ts, sig) = (h("webhook-id"), h("webhook-timestamp"), h("webhook-signature"));
    let secret = Secret::parse(SECRET).expect("the demo secret is valid");
    let ok = ts.parse::<i64>().is_ok_and(|t| sig.split(' ').any(|s| s == secret.sign(&id, t, &body)));
    let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
    if !ok {
        seen.bad += 1;
        return StatusCode::UNAUTHORIZED;
    }
    // A retry of a delivery already acted on is acknowledged and not counted again.
    if seen.ids.insert(id) {
        let kind = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["type"].as_str().map(str::to_owned))
            .unwrap_or_default();
        *seen.by_type.entry(kind).or_default() += 1;
    }
    StatusCode::NO_CONTENT
}

impl Receiver {
    /// Starts on a free loopback port.
    pub fn start() -> Result<Receiver, ServeError> {
        let mut server = Server::bind("127.0.0.1:0", 1)?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let router = Router::new().route("/hooks", post(hook)).with_state(seen.clone());
        server.start(
            router,
            Arc::new(crate::telemetry::Telemetry::new()),
            std::time::Duration::from_secs(10),
        );
        Ok(Receiver { server: Some(server), seen })
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("http://{}/hooks", self.server.as_ref().map(|s| s.addr().to_string()).unwrap_or_default())
    }

    /// The endpoint vigil sends to (loopback: `allow_private`).
    pub fn endpoint(&self) -> WebhookConfig {
        let mut w: WebhookConfig = toml::from_str(&format!("url = {:?}", self.url())).expect("a valid table");
        w.name = Some("demo-gateway".into());
        w.secret = Some(SECRET.into());
        w.allow_private = true;
        w
    }

    /// Distinct deliveries received, by event type.
    pub fn received(&self) -> BTreeMap<String, usize> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).by_type.clone()
    }

    /// Whether no request failed its signature check.
    pub fn all_verified(&self) -> bool {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).bad == 0
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown();
        }
    }
}

//! A webhook receiver on 127.0.0.1 for the demo and the integration tests.
//!
//! It accepts every request on every path, records it, and checks the
//! Standard Webhooks signature itself: `webhook-signature` contains one or more
//! space-separated `v1,<base64>` values, each an HMAC-SHA256 of
//! `{webhook-id}.{webhook-timestamp}.{body}` keyed with the base64-decoded
//! part of a `whsec_<base64>` secret (<https://www.standardwebhooks.com/>).
//! Tests can script the replies of a path, such as 500 three times, then 200.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// One request that reached the receiver.
#[derive(Clone, Debug)]
pub struct ReceivedRequest {
    pub method: Method,
    /// Path and query, such as `/company-101`.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub received_at: SystemTime,
    /// Whether a `webhook-signature` value matched one of the receiver's secrets.
    pub signature_valid: bool,
    /// Status code of the receiver's response.
    pub status: StatusCode,
}

impl ReceivedRequest {
    /// Returns the value of header `name` if it is present and valid text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// Parses the body as JSON.
    pub fn json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
    }

    /// Returns the `event` field of a JSON body, such as `STAGE_CHANGED`.
    pub fn event(&self) -> Option<String> {
        let json = self.json().ok()?;
        json.get("event")?.as_str().map(str::to_owned)
    }
}

/// A scripted reply of the receiver.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: StatusCode,
    /// Wait before replying, to test timeouts.
    pub delay: Duration,
    /// Value of a `Retry-After` header.
    pub retry_after: Option<String>,
    /// Further response headers, such as `Location`.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    /// Returns a reply with `status`, no delay and an empty body. A code
    /// outside 100..=999 becomes 500.
    pub fn status(status: u16) -> Reply {
        Reply {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            delay: Duration::ZERO,
            retry_after: None,
            headers: Vec::new(),
            body: String::new(),
        }
    }

    /// Returns this reply delayed by `delay`.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    /// Returns this reply with a `Retry-After` header.
    pub fn with_retry_after(mut self, value: &str) -> Reply {
        self.retry_after = Some(value.to_owned());
        self
    }

    /// Returns this reply with one more response header.
    pub fn with_header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }
}

#[derive(Default)]
struct Script {
    /// Replies used once each, in order, per path.
    queued: HashMap<String, VecDeque<Reply>>,
    /// Reply per path once its queue is empty; 200 when absent.
    fallback: HashMap<String, Reply>,
}

struct Shared {
    secrets: Mutex<Vec<String>>,
    received: Mutex<Vec<ReceivedRequest>>,
    script: Mutex<Script>,
    sender: mpsc::UnboundedSender<ReceivedRequest>,
}

/// A running receiver; the server stops when it is dropped.
pub struct Receiver {
    addr: SocketAddr,
    shared: Arc<Shared>,
    deliveries: tokio::sync::Mutex<mpsc::UnboundedReceiver<ReceivedRequest>>,
    server: JoinHandle<()>,
}

impl Receiver {
    /// Starts a receiver on a free port of 127.0.0.1 that verifies
    /// signatures with `secret` (`whsec_<base64>`).
    pub async fn start(secret: &str) -> anyhow::Result<Receiver> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind the receiver to 127.0.0.1")?;
        let addr = listener
            .local_addr()
            .context("cannot read the receiver's address")?;
        let (sender, deliveries) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            secrets: Mutex::new(vec![secret.to_owned()]),
            received: Mutex::new(Vec::new()),
            script: Mutex::new(Script::default()),
            sender,
        });

        let app = Router::new()
            .fallback(handle_request)
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, app).await {
                eprintln!("webhook receiver stopped: {err}");
            }
        });
        Ok(Receiver {
            addr,
            shared,
            deliveries: tokio::sync::Mutex::new(deliveries),
            server,
        })
    }

    /// Returns the base URL, such as `http://127.0.0.1:41234`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Adds a secret that signatures may match, as during a secret rotation.
    pub fn add_secret(&self, secret: &str) {
        lock(&self.shared.secrets).push(secret.to_owned());
    }

    /// Returns every request received so far, oldest first.
    pub fn received(&self) -> Vec<ReceivedRequest> {
        lock(&self.shared.received).clone()
    }

    /// Waits up to `timeout` for the next request not yet taken by this
    /// method; `None` on timeout.
    pub async fn next_delivery(&self, timeout: Duration) -> Option<ReceivedRequest> {
        let mut deliveries = self.deliveries.lock().await;
        tokio::time::timeout(timeout, deliveries.recv())
            .await
            .ok()
            .flatten()
    }

    /// Queues replies for `path`, used once each in order before the fallback.
    pub fn push_replies(&self, path: &str, replies: impl IntoIterator<Item = Reply>) {
        let mut script = lock(&self.shared.script);
        script
            .queued
            .entry(path.to_owned())
            .or_default()
            .extend(replies);
    }

    /// Sets the reply of `path` once its queued replies are used up.
    pub fn set_fallback(&self, path: &str, reply: Reply) {
        lock(&self.shared.script)
            .fallback
            .insert(path.to_owned(), reply);
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn handle_request(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri
        .path_and_query()
        .map(|pq| pq.as_str().to_owned())
        .unwrap_or_else(|| uri.path().to_owned());
    let reply = next_reply(&shared, uri.path());
    let signature_valid = {
        let secrets = lock(&shared.secrets);
        is_signed_by_any(&secrets, &headers, &body)
    };

    let request = ReceivedRequest {
        method,
        path,
        headers,
        body,
        received_at: SystemTime::now(),
        signature_valid,
        status: reply.status,
    };
    lock(&shared.received).push(request.clone());
    // The receiving half lives as long as the `Receiver`, which outlives this server.
    let _ = shared.sender.send(request);

    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut response = (reply.status, reply.body).into_response();
    if let Some(value) = reply
        .retry_after
        .and_then(|v| HeaderValue::from_str(&v).ok())
    {
        response.headers_mut().insert("retry-after", value);
    }
    for (name, value) in &reply.headers {
        if let (Ok(name), Ok(value)) = (
            axum::http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(name, value);
        }
    }
    response
}

fn next_reply(shared: &Shared, path: &str) -> Reply {
    let mut script = lock(&shared.script);
    if let Some(reply) = script.queued.get_mut(path).and_then(VecDeque::pop_front) {
        return reply;
    }
    script
        .fallback
        .get(path)
        .cloned()
        .unwrap_or_else(|| Reply::status(200))
}

fn is_signed_by_any(secrets: &[String], headers: &HeaderMap, body: &[u8]) -> bool {
    let header = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    let (Some(id), Some(timestamp), Some(signatures)) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    ) else {
        return false;
    };
    secrets
        .iter()
        .any(|secret| verify_signature(secret, id, timestamp, body, signatures))
}

/// Tells whether one of the space-separated `v1,<base64>` values of
/// `signatures` is the HMAC-SHA256 of `id.timestamp.body` under `secret`.
///
/// Returns false for a secret that is not `whsec_` followed by base64, and
/// ignores values of other versions.
pub fn verify_signature(
    secret: &str,
    id: &str,
    timestamp: &str,
    body: &[u8],
    signatures: &str,
) -> bool {
    let Some(key) = decode_secret(secret) else {
        return false;
    };
    signatures
        .split_whitespace()
        .filter_map(|value| value.strip_prefix("v1,"))
        .filter_map(|encoded| BASE64.decode(encoded).ok())
        .any(|expected| {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&key) else {
                return false;
            };
            mac.update(format!("{id}.{timestamp}.").as_bytes());
            mac.update(body);
            mac.verify_slice(&expected).is_ok()
        })
}

/// Returns the `v1,<base64>` signature of `id.timestamp.body` under
/// `secret`, or `None` when `secret` is not `whsec_` followed by base64.
pub fn sign(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> Option<String> {
    let key = decode_secret(secret)?;
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).ok()?;
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    Some(format!("v1,{}", BASE64.encode(mac.finalize().into_bytes())))
}

/// Returns a new random secret: `whsec_` followed by the base64 of 24 bytes.
pub fn generate_secret() -> String {
    let mut key = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut key);
    format!("whsec_{}", BASE64.encode(key))
}

fn decode_secret(secret: &str) -> Option<Vec<u8>> {
    BASE64.decode(secret.strip_prefix("whsec_")?).ok()
}

/// Locks a mutex, ignoring poisoning: a panicking test thread leaves the
/// recorded data intact.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &str, id: &str, timestamp: &str, body: &[u8]) -> String {
        super::sign(secret, id, timestamp, body).expect("generated secrets decode")
    }

    #[test]
    fn signature_verifies() {
        let secret = generate_secret();
        let signature = sign(&secret, "msg_1", "1700000000", b"{}");
        assert!(verify_signature(
            &secret,
            "msg_1",
            "1700000000",
            b"{}",
            &signature
        ));
    }

    #[test]
    fn signature_of_other_body_fails() {
        let secret = generate_secret();
        let signature = sign(&secret, "msg_1", "1700000000", b"{}");
        assert!(!verify_signature(
            &secret,
            "msg_1",
            "1700000000",
            b"[]",
            &signature
        ));
    }

    #[test]
    fn signature_among_several_verifies() {
        let old = generate_secret();
        let new = generate_secret();
        let both = format!(
            "{} {}",
            sign(&old, "msg_1", "1", b"x"),
            sign(&new, "msg_1", "1", b"x")
        );
        assert!(
            verify_signature(&new, "msg_1", "1", b"x", &both),
            "new secret"
        );
        assert!(
            verify_signature(&old, "msg_1", "1", b"x", &both),
            "old secret"
        );
    }

    #[test]
    fn secret_without_prefix_fails() {
        assert!(!verify_signature("c2VjcmV0", "msg_1", "1", b"x", "v1,AAAA"));
    }

    #[tokio::test]
    async fn receiver_records_and_scripts_replies() {
        let secret = generate_secret();
        let receiver = Receiver::start(&secret).await.expect("receiver starts");
        receiver.push_replies("/hook", [Reply::status(500)]);
        let client = reqwest::Client::new();
        let body = r#"{"event":"PING","payload":{"jobs":[{"id":"1"}]}}"#;
        let signature = sign(&secret, "msg_1", "1700000000", body.as_bytes());

        let mut statuses = Vec::new();
        for _ in 0..2 {
            let response = client
                .post(format!("{}/hook", receiver.url()))
                .header("webhook-id", "msg_1")
                .header("webhook-timestamp", "1700000000")
                .header("webhook-signature", &signature)
                .body(body)
                .send()
                .await
                .expect("receiver answers");
            statuses.push(response.status().as_u16());
        }

        assert_eq!(statuses, [500, 200], "scripted reply first, then 200");
        let first = receiver
            .next_delivery(Duration::from_secs(5))
            .await
            .expect("first request recorded");
        assert!(first.signature_valid, "signature verified");
        assert_eq!(first.event().as_deref(), Some("PING"));
        assert_eq!(first.path, "/hook");
        assert_eq!(receiver.received().len(), 2, "both requests recorded");
    }
}

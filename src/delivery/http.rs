//! The HTTP side of a delivery: one shared client and one signed POST per attempt.
//!
//! The client uses rustls, keeps connections alive, speaks HTTP/2 when the
//! server offers it in TLS ALPN, follows no redirects and ignores proxy
//! environment variables, because a proxy would resolve the target itself and
//! bypass the [`GuardedResolver`].

use std::error::Error as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use reqwest::header::{HeaderMap, CONTENT_TYPE, RETRY_AFTER};
use reqwest::redirect::Policy;
use reqwest::{Client, Response, Url};

use super::guard::{GuardedResolver, TargetPolicy, TargetRejected};
use super::retry::{parse_retry_after, AttemptResult};
use super::signing::{signature_header, SigningKey};
use crate::config::DeliveryConfig;

/// Bytes of a response body kept for the attempts table.
pub const RESPONSE_BODY_LIMIT_BYTES: usize = 1024;

/// Errors of building the HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("failed to build the HTTP client: check the system TLS setup")]
    Build(#[source] reqwest::Error),
}

/// One webhook to send: the stored delivery and the keys to sign it with.
#[derive(Debug)]
pub struct WebhookRequest<'a> {
    pub url: &'a str,
    /// The `webhook-id` header; the same on every attempt of a delivery.
    pub webhook_id: &'a str,
    /// The exact JSON text to POST.
    pub body: &'a str,
    /// Signing keys; no `webhook-signature` header is sent when empty.
    pub keys: &'a [SigningKey],
}

/// Outcome of one attempt, as stored in the attempts table.
#[derive(Debug)]
pub struct AttemptReport {
    pub result: AttemptResult,
    pub started_at: SystemTime,
    pub duration: Duration,
    /// Receiver's `Retry-After`, when it sent a parsable one.
    pub retry_after: Option<Duration>,
    /// The first [`RESPONSE_BODY_LIMIT_BYTES`] of the response body, lossily decoded.
    pub response_body: Option<String>,
    /// Reason the request failed, when no complete response arrived.
    pub error: Option<String>,
}

/// Sends signed webhooks through one shared, guarded HTTP client.
#[derive(Clone, Debug)]
pub struct WebhookSender {
    client: Client,
    policy: Arc<TargetPolicy>,
}

impl WebhookSender {
    /// Builds the client of `[delivery]`: `timeout` per request, the target
    /// policy of `allow_private_targets` and `allowed_networks`.
    pub fn new(config: &DeliveryConfig) -> Result<WebhookSender, HttpError> {
        let policy = Arc::new(TargetPolicy::from_config(config));
        let client = Client::builder()
            .use_rustls_tls()
            .user_agent(concat!("walhook/", env!("CARGO_PKG_VERSION")))
            .redirect(Policy::none())
            .no_proxy()
            .timeout(config.timeout)
            .connect_timeout(config.timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .dns_resolver(Arc::new(GuardedResolver::new(Arc::clone(&policy))))
            .build()
            .map_err(HttpError::Build)?;
        Ok(WebhookSender { client, policy })
    }

    /// Sends one attempt of a webhook with a fresh `webhook-timestamp` and
    /// signature. Failures are part of the returned report, not an error.
    pub async fn send(&self, request: &WebhookRequest<'_>) -> AttemptReport {
        let started_at = SystemTime::now();
        let clock = Instant::now();

        let outcome = match self.check_literal_target(request.url) {
            Ok(()) => self.post(request, started_at).await,
            Err(message) => Err((AttemptResult::ConnectionFailed, message)),
        };

        let duration = clock.elapsed();
        match outcome {
            Ok(response) => read_report(response, started_at, clock).await,
            Err((result, message)) => AttemptReport {
                result,
                started_at,
                duration,
                retry_after: None,
                response_body: None,
                error: Some(message),
            },
        }
    }

    /// Checks URLs whose host is an IP literal, which bypass the resolver.
    fn check_literal_target(&self, url: &str) -> Result<(), String> {
        let parsed = Url::parse(url).map_err(|err| format!("invalid URL `{url}`: {err}"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(format!("URL `{url}` is not http or https"));
        }
        let address = match parsed.host() {
            Some(url::Host::Ipv4(v4)) => v4.into(),
            Some(url::Host::Ipv6(v6)) => v6.into(),
            Some(url::Host::Domain(_)) => return Ok(()),
            None => return Err(format!("URL `{url}` has no host")),
        };
        self.policy
            .check(address)
            .map_err(|rejected: TargetRejected| rejected.to_string())
    }

    async fn post(
        &self,
        request: &WebhookRequest<'_>,
        started_at: SystemTime,
    ) -> Result<Response, (AttemptResult, String)> {
        let timestamp_secs = unix_seconds(started_at);
        let mut builder = self
            .client
            .post(request.url)
            .header(CONTENT_TYPE, "application/json")
            .header("webhook-id", request.webhook_id)
            .header("webhook-timestamp", timestamp_secs.to_string());
        if !request.keys.is_empty() {
            let signature = signature_header(
                request.keys,
                request.webhook_id,
                timestamp_secs,
                request.body.as_bytes(),
            );
            builder = builder.header("webhook-signature", signature);
        }

        builder
            .body(request.body.to_owned())
            .send()
            .await
            .map_err(|err| (result_of_error(&err), describe_error(&err)))
    }
}

async fn read_report(response: Response, started_at: SystemTime, clock: Instant) -> AttemptReport {
    let status = response.status().as_u16();
    let retry_after = retry_after_of(response.headers());
    let (response_body, error) = match read_body_prefix(response).await {
        Ok(body) => (Some(body), None),
        Err(err) => (None, Some(describe_error(&err))),
    };
    AttemptReport {
        result: AttemptResult::Status(status),
        started_at,
        duration: clock.elapsed(),
        retry_after,
        response_body,
        error,
    }
}

/// Reads at most [`RESPONSE_BODY_LIMIT_BYTES`] of the body and drops the rest.
async fn read_body_prefix(mut response: Response) -> Result<String, reqwest::Error> {
    let mut prefix = Vec::new();
    while prefix.len() < RESPONSE_BODY_LIMIT_BYTES {
        let Some(chunk) = response.chunk().await? else {
            break;
        };
        let room = RESPONSE_BODY_LIMIT_BYTES - prefix.len();
        prefix.extend_from_slice(&chunk[..chunk.len().min(room)]);
    }
    Ok(String::from_utf8_lossy(&prefix).into_owned())
}

fn retry_after_of(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    parse_retry_after(value, SystemTime::now())
}

fn result_of_error(err: &reqwest::Error) -> AttemptResult {
    if err.is_timeout() {
        AttemptResult::TimedOut
    } else {
        AttemptResult::ConnectionFailed
    }
}

/// Describes a failed request by its kind and its causes, without the URL,
/// which can carry a token of the receiver.
fn describe_error(err: &reqwest::Error) -> String {
    let kind = if err.is_timeout() {
        "request timed out"
    } else if err.is_connect() {
        "connection failed"
    } else if err.is_body() || err.is_decode() {
        "reading the response failed"
    } else {
        "request failed"
    };
    let mut message = kind.to_owned();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

fn unix_seconds(at: SystemTime) -> i64 {
    let seconds = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    i64::try_from(seconds).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strict_sender() -> WebhookSender {
        WebhookSender::new(&DeliveryConfig::default()).expect("client builds")
    }

    #[test]
    fn literal_private_hosts_are_rejected() {
        let sender = strict_sender();
        for url in [
            "http://127.0.0.1/hook",
            "http://[::1]:8080/hook",
            "http://[::ffff:10.0.0.1]/hook",
            "http://2130706433/hook",
            "https://169.254.169.254/latest/meta-data",
        ] {
            let err = sender.check_literal_target(url).expect_err(url);
            assert!(err.contains("delivery.allowed_networks"), "{url}: {err}");
        }
    }

    #[test]
    fn public_and_named_hosts_pass_literal_check() {
        let sender = strict_sender();
        for url in [
            "https://example.com/hook",
            "http://8.8.8.8/hook",
            "https://[2606:4700::1111]/",
        ] {
            assert_eq!(sender.check_literal_target(url), Ok(()), "{url}");
        }
    }

    #[test]
    fn non_http_urls_are_rejected() {
        let sender = strict_sender();
        for url in ["ftp://example.com/hook", "not a url", "file:///etc/passwd"] {
            assert!(sender.check_literal_target(url).is_err(), "{url}");
        }
    }

    #[test]
    fn unix_seconds_counts_from_epoch() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_614_265_330);
        assert_eq!(unix_seconds(at), 1_614_265_330);
    }
}

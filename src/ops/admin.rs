//! The admin API under `/v1/`: PING requests, listing and redelivering
//! queued webhooks, and re-enabling a subscription that a receiver turned off
//! with 410 Gone.
//!
//! Every request needs `Authorization: Bearer TOKEN` with the token of
//! `http.admin_token_file`, compared in constant time. Without that file the
//! admin API returns 404 for every request.

use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{async_trait, Json, Router};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::database::{emit_ping, DatabaseError};
use super::http::OpsState;
use super::repeats::{Repeats, REPEAT_INTERVAL};
use crate::config::Secret;
use crate::queue::admin::{self as queue_admin, DeliveryFilter};
use crate::routing::SubscriptionKey;

/// Rows that `GET /v1/deliveries` returns when `limit` is absent.
const DEFAULT_LIST_LIMIT: i64 = 100;
/// Maximum `limit` of `GET /v1/deliveries`.
const MAX_LIST_LIMIT: i64 = 1000;

/// The bearer token of the admin API.
pub struct AdminToken(Secret);

impl AdminToken {
    /// Wraps the token read from `http.admin_token_file`.
    pub fn new(token: Secret) -> AdminToken {
        AdminToken(token)
    }

    /// Compares `presented` with the token in constant time. Comparing the
    /// SHA-256 digests keeps the token's length from showing in the timing.
    fn matches(&self, presented: &str) -> bool {
        let expected = Sha256::digest(self.0.expose().as_bytes());
        let presented = Sha256::digest(presented.as_bytes());
        bool::from(expected.ct_eq(&presented))
    }
}

/// Returns the routes of the admin API, relative to `/v1`.
pub fn router() -> Router<Arc<OpsState>> {
    Router::new()
        .route("/ping", post(request_ping))
        .route("/deliveries", get(list_deliveries))
        .route("/deliveries/retry", post(retry_deliveries))
        .route("/subscriptions/:id/enable", post(enable_subscription))
}

/// Proof that a request carried the admin token.
struct Authorized;

/// Log lines of rejected requests, which a client without the token can
/// repeat as fast as it likes.
static UNAUTHORIZED_REQUESTS: Repeats = Repeats::new(REPEAT_INTERVAL);

#[async_trait]
impl FromRequestParts<Arc<OpsState>> for Authorized {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<OpsState>,
    ) -> Result<Self, Self::Rejection> {
        let Some(token) = state.admin_token() else {
            return Err(error(
                StatusCode::NOT_FOUND,
                "the admin API is off: set http.admin_token_file and reload walhook (SIGHUP)",
            ));
        };
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "));
        match presented {
            Some(presented) if token.matches(presented.trim()) => Ok(Authorized),
            _ => {
                if let Some(suppressed) = UNAUTHORIZED_REQUESTS.admit() {
                    tracing::warn!(path = %parts.uri.path(), suppressed, "admin request without a valid bearer token rejected");
                }
                let mut response = error(
                    StatusCode::UNAUTHORIZED,
                    "missing or invalid bearer token: send `Authorization: Bearer` with the token of http.admin_token_file",
                );
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    "Bearer".parse().expect("a valid header value"),
                );
                Err(response)
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PingBody {
    subscription: i64,
    jobs: Vec<i64>,
}

async fn request_ping(
    _: Authorized,
    State(state): State<Arc<OpsState>>,
    Json(body): Json<PingBody>,
) -> Response {
    if body.jobs.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "`jobs` is empty: list at least one job id",
        );
    }
    match emit_ping(
        &state.source,
        &state.subscriptions,
        body.subscription,
        &body.jobs,
    )
    .await
    {
        Ok(lsn) => {
            tracing::info!(subscription_id = body.subscription, jobs = body.jobs.len(), lsn = %lsn, "PING requested through the admin API");
            (
                StatusCode::ACCEPTED,
                Json(json!({ "lsn": lsn.to_string() })),
            )
                .into_response()
        }
        Err(err) => database_error(&err),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
    subscription: Option<String>,
    job: Option<i64>,
    limit: Option<i64>,
}

async fn list_deliveries(
    _: Authorized,
    State(state): State<Arc<OpsState>>,
    Query(query): Query<ListQuery>,
) -> Response {
    if let Some(status) = &query.status {
        if !["pending", "delivered", "failed"].contains(&status.as_str()) {
            let message = format!("invalid status `{status}`: use pending, delivered or failed");
            return error(StatusCode::BAD_REQUEST, &message);
        }
    }
    let limit = query.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        let message = format!("invalid limit `{limit}`: use 1 to {MAX_LIST_LIMIT}");
        return error(StatusCode::BAD_REQUEST, &message);
    }
    let filter = DeliveryFilter {
        status: query.status,
        subscription: query.subscription.as_deref().map(subscription_key),
        job_id: query.job,
        limit,
    };
    let listed = match state.queue.client().await {
        Ok(client) => {
            let list = queue_admin::list_deliveries(&client, &state.schema, &filter);
            state.queue.within_timeout(list).await
        }
        Err(err) => Err(err),
    };
    match listed {
        Ok(deliveries) => Json(json!({ "deliveries": deliveries })).into_response(),
        Err(err) => database_error(&err),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RetryBody {
    ids: Option<Vec<i64>>,
    #[serde(default)]
    failed: bool,
    /// RFC 3339 time, such as `2026-05-20T00:00:00Z`; only with `failed`.
    since: Option<String>,
}

async fn retry_deliveries(
    _: Authorized,
    State(state): State<Arc<OpsState>>,
    Json(body): Json<RetryBody>,
) -> Response {
    let since = match body.since.as_deref().map(parse_since).transpose() {
        Ok(since) => since,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let client = match state.queue.client().await {
        Ok(client) => client,
        Err(err) => return database_error(&err),
    };
    let retried = match (&body.ids, body.failed) {
        (Some(ids), false) if since.is_none() => {
            let retry = queue_admin::retry_deliveries(&client, &state.schema, ids);
            state.queue.within_timeout(retry).await
        }
        (None, true) => {
            let retry = queue_admin::retry_failed(&client, &state.schema, since);
            state.queue.within_timeout(retry).await
        }
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "send either {\"ids\":[…]} or {\"failed\":true} with an optional \"since\"",
            )
        }
    };
    match retried {
        Ok(count) => {
            tracing::info!(retried = count, "deliveries made due through the admin API");
            Json(json!({ "retried": count })).into_response()
        }
        Err(err) => database_error(&err),
    }
}

async fn enable_subscription(
    _: Authorized,
    State(state): State<Arc<OpsState>>,
    Path(id): Path<String>,
) -> Response {
    let key = subscription_key(&id);
    let enabled = match state.queue.client().await {
        Ok(client) => {
            let enable = queue_admin::enable_subscription(&client, &state.schema, &key);
            state.queue.within_timeout(enable).await
        }
        Err(err) => Err(err),
    };
    match enabled {
        Ok(was_disabled) => {
            tracing::info!(subscription = %key, was_disabled, "subscription enabled through the admin API");
            Json(json!({ "subscription": key, "was_disabled": was_disabled })).into_response()
        }
        Err(err) => database_error(&err),
    }
}

/// Returns the queue's key of a subscription given as an application id
/// (`42`) or as a key (`sub_42`, `endpoint_…`).
fn subscription_key(text: &str) -> String {
    match text.parse::<i64>() {
        Ok(id) => SubscriptionKey::App(id).to_string(),
        Err(_) => text.to_owned(),
    }
}

fn parse_since(text: &str) -> Result<SystemTime, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(SystemTime::from)
        .map_err(|err| {
            format!("invalid since `{text}`: {err}; use RFC 3339, such as `2026-05-20T00:00:00Z`")
        })
}

fn database_error(err: &DatabaseError) -> Response {
    if matches!(err, DatabaseError::SubscriptionNotFound { .. }) {
        return error(StatusCode::NOT_FOUND, &err.to_string());
    }
    tracing::warn!(error = %err, "admin request failed");
    error(StatusCode::SERVICE_UNAVAILABLE, &err.to_string())
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_matches_only_itself() {
        let token = AdminToken::new(Secret::new("s3cret-token".to_owned()));
        assert!(token.matches("s3cret-token"), "the same token matches");
        assert!(
            !token.matches("s3cret-tokeN"),
            "a token differing in one byte does not"
        );
        assert!(!token.matches("s3cret"), "a prefix does not match");
        assert!(!token.matches(""), "an empty token does not match");
    }

    #[test]
    fn subscription_key_accepts_id_or_key() {
        assert_eq!(subscription_key("42"), "sub_42");
        assert_eq!(subscription_key("sub_42"), "sub_42");
        assert_eq!(subscription_key("endpoint_0a1b2c"), "endpoint_0a1b2c");
    }

    #[test]
    fn since_requires_rfc3339() {
        assert!(parse_since("2026-05-20T00:00:00Z").is_ok());
        let error = parse_since("yesterday").expect_err("not a time");
        assert!(error.contains("`yesterday`"), "{error}");
    }
}

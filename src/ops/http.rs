//! The operations HTTP endpoint on `http.listen`: `/metrics`, `/healthz`,
//! `/readyz`, and the admin API under `/v1/` of [`super::admin`].
//!
//! It is meant for a loopback or otherwise private address: `/metrics` and the
//! health checks need no authentication.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::admin::{self, AdminToken};
use super::database::{queue_stats, LazyClient};
use super::repeats::{Repeats, REPEAT_INTERVAL};
use super::{health, metrics};

/// State shared by the handlers.
pub struct OpsState {
    pub queue: Arc<LazyClient>,
    pub source: Arc<LazyClient>,
    pub schema: String,
    /// The application's subscriptions table, which a PING must name a row of.
    pub subscriptions: crate::config::SubscriptionsTable,
    /// `None` when `http.admin_token_file` is unset: the admin API is off.
    /// A reload replaces it.
    pub admin_token: RwLock<Option<Arc<AdminToken>>>,
}

impl OpsState {
    /// Returns the admin token in force.
    pub fn admin_token(&self) -> Option<Arc<AdminToken>> {
        self.admin_token
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces the admin token; `None` turns the admin API off.
    pub fn set_admin_token(&self, token: Option<AdminToken>) {
        *self
            .admin_token
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = token.map(Arc::new);
    }
}

/// A failure to start the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "cannot listen on http.listen `{addr}`: {source}; free the port or change http.listen"
    )]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds `addr` and serves until `shutdown`, on a task of its own.
pub async fn start(
    addr: SocketAddr,
    state: Arc<OpsState>,
    shutdown: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, HttpError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })?;
    let admin_enabled = state.admin_token().is_some();
    let router = Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(serve_readyz))
        .nest("/v1", admin::router())
        .with_state(state);
    tracing::info!(listen = %addr, admin_api = admin_enabled, "operations endpoint listening");

    Ok(tokio::spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(err) = served {
            tracing::error!(error = %err, "operations endpoint failed");
        }
    }))
}

/// Log lines of failed queue statistics, one per scrape while the queue
/// database fails.
static QUEUE_STATS_FAILURES: Repeats = Repeats::new(REPEAT_INTERVAL);

async fn serve_metrics(State(state): State<Arc<OpsState>>) -> Response {
    match queue_stats(&state.queue, &state.schema).await {
        Ok(stats) => metrics::set_queue_stats(stats.pending, stats.oldest_pending_age),
        // The other metrics are still worth a scrape; the queue gauges keep
        // their last values.
        Err(err) => {
            if let Some(suppressed) = QUEUE_STATS_FAILURES.admit() {
                tracing::warn!(error = %err, suppressed, "queue statistics unavailable for /metrics");
            }
        }
    }
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::encode(),
    )
        .into_response()
}

async fn serve_readyz(State(state): State<Arc<OpsState>>) -> Response {
    if let Err(reason) = health::streaming() {
        return not_ready(&reason);
    }
    let reachable = match state.queue.client().await {
        Ok(client) => state
            .queue
            .within_timeout(client.simple_query("SELECT 1"))
            .await
            .map(drop),
        Err(err) => Err(err),
    };
    match reachable {
        Ok(()) => (StatusCode::OK, "ready: streaming, queue reachable\n").into_response(),
        Err(err) => not_ready(&format!("queue unreachable: {err}")),
    }
}

fn not_ready(reason: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready: {reason}\n"),
    )
        .into_response()
}

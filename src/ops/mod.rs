//! Operations: logging, metrics, health, the systemd notification protocol,
//! the operations HTTP endpoint with its admin API, the shutdown deadline, and
//! fault injection for tests.
//!
//! [`start`] runs the operations side beside the pipeline. The pipeline
//! reports to it with one-line calls: [`replication_started`],
//! [`replication_failed`] and the functions of [`metrics`].

pub mod admin;
pub mod database;
pub mod failpoint;
pub mod health;
pub mod http;
mod lag;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod reload;
pub mod repeats;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError, Secret};
use crate::replication::Lsn;
use database::LazyClient;
use http::OpsState;

/// Time that in-flight deliveries get to finish after SIGTERM. Deliveries
/// still running then are abandoned: they stay pending in the queue and are
/// claimed again once their lease ends. The unit's `TimeoutStopSec=60` leaves
/// room for it.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// The running operations side; [`Ops::stop`] ends it.
pub struct Ops {
    tasks: Vec<JoinHandle<()>>,
    stop: CancellationToken,
    state: Arc<OpsState>,
}

/// Starts the operations endpoint and the systemd notifications. `shutdown`
/// is the daemon's signal: when it fires, `STOPPING=1` goes out and `/readyz`
/// turns 503, while `/metrics` keeps serving until [`Ops::stop`].
pub async fn start(config: &Config, shutdown: CancellationToken) -> anyhow::Result<Ops> {
    let admin_token = read_admin_token(config)?.map(Arc::new);
    let queue = Arc::new(LazyClient::new(config.queue_postgres()?, "queue"));
    let state = Arc::new(OpsState {
        queue: Arc::clone(&queue),
        source: Arc::new(LazyClient::new(config.source_postgres()?, "application")),
        schema: config.queue.schema.clone(),
        subscriptions: config.subscriptions.clone(),
        admin_token: std::sync::RwLock::new(admin_token),
    });
    health::mark_progress();

    let stop = CancellationToken::new();
    let mut tasks = vec![http::start(config.http.listen, Arc::clone(&state), stop.clone()).await?];
    tasks.push(tokio::spawn(notify::run_status(
        queue,
        config.queue.schema.clone(),
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(notify::run_watchdog(
        config.source.status_interval,
        shutdown.clone(),
    )));
    tasks.push(tokio::spawn(announce_stopping(shutdown)));
    Ok(Ops { tasks, stop, state })
}

impl Ops {
    /// Returns the state of the operations endpoint, whose admin token a
    /// reload replaces.
    pub fn state(&self) -> Arc<OpsState> {
        Arc::clone(&self.state)
    }

    /// Stops the operations endpoint and waits for its tasks.
    pub async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            task.abort();
            let _ = task.await;
        }
    }
}

async fn announce_stopping(shutdown: CancellationToken) {
    shutdown.cancelled().await;
    health::set_stopping();
    notify::stopping();
}

/// Records that a replication session streams from `start`: `/readyz` turns
/// 200 and systemd gets `READY=1`. The caller has read the stored progress
/// from the queue, so the queue is reachable.
pub fn replication_started(start: Lsn) {
    health::set_streaming(true, "");
    health::mark_progress();
    metrics::session_started(start);
    notify::ready();
}

/// Records that a replication session failed and will be restarted.
pub fn replication_failed(err: &dyn std::fmt::Display) {
    if !health::is_stopping() {
        health::set_streaming(false, &format!("replication session failed: {err}"));
    }
    health::mark_progress();
    metrics::session_failed();
}

/// Records that a replication session failed on a change of the transaction
/// that commits at `commit_lsn`. `/readyz` returns 503 with the error through
/// the reconnections that follow, until the confirmed position passes that
/// transaction because it was fixed or skipped.
pub fn replication_blocked(commit_lsn: Lsn, err: &dyn std::fmt::Display) {
    let reason = format!("replication stopped at a change it cannot process: {err}");
    health::set_blocked(commit_lsn, &reason);
    replication_failed(err);
}

/// Records that this process waits for the replication slot, which another
/// process streams from: `/readyz` returns 503 with `reason`, and the
/// watchdog stays fed because waiting is progress.
pub fn replication_waiting(reason: &str) {
    if !health::is_stopping() {
        health::set_streaming(false, reason);
    }
    health::mark_progress();
}

/// Runs `pipeline` to its end, or until `grace` after `shutdown` fires,
/// whichever comes first. Abandoning the pipeline at the deadline is
/// not an error: its unfinished deliveries stay pending in the queue.
pub async fn run_with_grace(
    pipeline: impl Future<Output = anyhow::Result<()>>,
    shutdown: &CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = pipeline => result,
        _ = deadline => {
            tracing::warn!(
                grace_ms = grace.as_millis(),
                "deliveries still in flight at the shutdown deadline were abandoned; they stay pending and are sent again later"
            );
            Ok(())
        }
    }
}

/// Resolves a credential path of config.toml: a relative path names a file
/// of `$CREDENTIALS_DIRECTORY`, where systemd's `LoadCredential=` puts it.
/// Absolute paths, and every path outside systemd, stay as they are.
pub fn credential_path(path: &Path) -> PathBuf {
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(directory) if path.is_relative() => Path::new(&directory).join(path),
        _ => path.to_owned(),
    }
}

/// Reads the token of `http.admin_token_file`; `None` when the key is unset.
pub fn read_admin_token(config: &Config) -> Result<Option<admin::AdminToken>, ConfigError> {
    match &config.http.admin_token_file {
        Some(path) => Ok(Some(admin::AdminToken::new(read_token(path)?))),
        None => Ok(None),
    }
}

fn read_token(path: &Path) -> Result<Secret, ConfigError> {
    let path = credential_path(path);
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::ReadSecret {
        key: "http.admin_token_file".to_owned(),
        path: path.clone(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(ConfigError::Invalid {
            key: "http.admin_token_file".to_owned(),
            message: format!(
                "names the empty file `{}`; write a random token into it",
                path.display()
            ),
        });
    }
    Ok(Secret::new(token.to_owned()))
}

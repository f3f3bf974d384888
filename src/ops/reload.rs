//! Reloading config.toml on SIGHUP, the signal of the unit's `ExecReload=`,
//! without restarting the replication stream.
//!
//! A reload reads the file again, with the files it names
//! (`source.password_file`, `endpoints[].secret_file`,
//! `http.admin_token_file`, resolved against `$CREDENTIALS_DIRECTORY` as at
//! start). A file that fails to load changes nothing. Otherwise the log
//! filter, the admin token and the static endpoints are replaced here. The
//! new configuration then goes out on a `watch` channel. The delivery workers
//! take `[delivery]` from it, and the pipeline takes `delivery.max_batch` and
//! the settings of the connections it opens later. The keys of
//! [`crate::config::RESTART_KEYS`] keep their running value, with a warning.
//!
//! systemd learns of the reload through `RELOADING=1` and the `READY=1` that
//! ends it (`sd_notify(3)`).

use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::admin::AdminToken;
use super::http::OpsState;
use super::logging::{self, FilterChange};
use super::notify;
use crate::config::{self, Config, ConfigError};
use crate::routing::Subscriptions;

/// The configuration in force and what a reload replaces.
pub struct Reloader {
    path: PathBuf,
    /// The configuration in force: the start values of the restart keys and
    /// the latest loaded values of every other key.
    running: Config,
    live: watch::Sender<Arc<Config>>,
    subscriptions: Arc<Subscriptions>,
    ops: Arc<OpsState>,
}

/// Installs the SIGHUP handler, which replaces the default action of ending
/// the process. Install it before anything slow, so an early SIGHUP waits for
/// [`Reloader::run`] instead of killing the daemon.
pub fn listen() -> std::io::Result<Signal> {
    signal(SignalKind::hangup())
}

impl Reloader {
    /// Creates the reloader of the file at `path`, whose loaded content
    /// `running` is, and which `live` publishes.
    pub fn new(
        path: PathBuf,
        running: Config,
        live: watch::Sender<Arc<Config>>,
        subscriptions: Arc<Subscriptions>,
        ops: Arc<OpsState>,
    ) -> Reloader {
        Reloader {
            path,
            running,
            live,
            subscriptions,
            ops,
        }
    }

    /// Reloads on every SIGHUP until `shutdown`.
    pub async fn run(mut self, mut hangups: Signal, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                received = hangups.recv() => {
                    if received.is_none() {
                        return;
                    }
                }
            }
            self.reload();
        }
    }

    /// Loads the file and applies it, or logs why it cannot and keeps the
    /// configuration in force.
    pub fn reload(&mut self) {
        let announced = notify::reloading();
        info!(config = %self.path.display(), "SIGHUP received, reloading the configuration");
        match self.load() {
            Ok((config, admin_token)) => self.apply(config, admin_token),
            Err(err) => error!(
                error = %format!("{:#}", anyhow::Error::from(err)),
                config = %self.path.display(),
                "reloading the configuration failed, the running configuration stays in force; fix the file and send SIGHUP again"
            ),
        }
        if announced {
            notify::reloaded();
        }
    }

    fn load(&self) -> Result<(Config, Option<AdminToken>), ConfigError> {
        let config = config::load(&self.path)?;
        let admin_token = super::read_admin_token(&config)?;
        Ok((config, admin_token))
    }

    fn apply(&mut self, loaded: Config, admin_token: Option<AdminToken>) {
        let (config, restart_keys) = config::keep_restart_keys(&self.running, loaded);
        for key in &restart_keys {
            warn!(
                key,
                "config key changed, but its new value applies only after a restart; restart walhook (systemctl restart walhook)"
            );
        }
        if config.log.filter != self.running.log.filter {
            apply_log_filter(&config.log.filter);
        }
        self.ops.set_admin_token(admin_token);
        for key in self.subscriptions.replace_endpoints(&config.endpoints) {
            warn!(
                subscription = %key,
                "static endpoint removed, its pending deliveries fail when claimed; an [[endpoints]] entry with an `id` keeps its deliveries when its url changes"
            );
        }

        self.live.send_replace(Arc::new(config.clone()));
        self.running = config;
        info!(
            endpoints = self.running.endpoints.len(),
            restart_needed = restart_keys.len(),
            "configuration reloaded"
        );
    }
}

fn apply_log_filter(filter: &str) {
    match logging::set_filter(filter) {
        Ok(FilterChange::Applied) => info!(filter, "log filter applied"),
        Ok(FilterChange::OverriddenByEnv) => {
            info!(
                filter,
                "RUST_LOG is set and overrides log.filter, which stays unused"
            )
        }
        Err(message) => error!(error = %message, "log filter not applied"),
    }
}

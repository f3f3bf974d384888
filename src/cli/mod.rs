//! The command line: `run`, `check`, `setup`, `skip`, `ping` and `demo`.

mod check;
mod deliveries;
mod ping;
mod setup;
mod skip;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{self, ConfigError};
use crate::ops::reload::Reloader;
use crate::routing::Subscriptions;

/// Exit status for invalid configuration (`EX_CONFIG` of sysexits.h).
const EXIT_CONFIG: u8 = 78;

/// Turns PostgreSQL logical replication changes into signed webhooks.
#[derive(Parser)]
#[command(name = "walhook", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: stream changes, store deliveries, send webhooks.
    Run {
        /// Configuration file.
        #[arg(long, default_value = "/etc/walhook/config.toml")]
        config: PathBuf,
    },
    /// Verify every prerequisite and print the fix for each failure.
    Check {
        /// Configuration file.
        #[arg(long, default_value = "/etc/walhook/config.toml")]
        config: PathBuf,
    },
    /// Create what is missing: queue schema, publication, replication slot.
    Setup {
        /// Configuration file.
        #[arg(long, default_value = "/etc/walhook/config.toml")]
        config: PathBuf,
        /// Print the SQL instead of running it.
        #[arg(long)]
        print: bool,
    },
    /// Request a PING: write the logical decoding message that the daemon
    /// turns into a PING webhook for the subscription.
    Ping {
        /// Configuration file.
        #[arg(long, default_value = "/etc/walhook/config.toml")]
        config: PathBuf,
        /// Id of the subscription in the application's subscriptions table.
        #[arg(long)]
        subscription: i64,
        /// Id of a job to include; repeat for several jobs.
        #[arg(long = "job", required = true, num_args = 1..)]
        jobs: Vec<i64>,
    },
    /// Skip one source transaction that cannot be processed: its webhooks are
    /// not sent, and the stream continues after it.
    Skip {
        /// Configuration file.
        #[arg(long, default_value = "/etc/walhook/config.toml")]
        config: PathBuf,
        /// LSN of the transaction's commit, as the error log names it (`0/1A2B3C4`).
        #[arg(long)]
        lsn: String,
        /// Reason for skipping, stored with the decision.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Run the whole pipeline on a throwaway local PostgreSQL cluster and print
    /// each webhook that arrives.
    Demo,
    /// Inspect queued deliveries and send them again.
    #[command(subcommand)]
    Deliveries(deliveries::DeliveriesCommand),
    /// Manage subscriptions that receivers disabled.
    #[command(subcommand)]
    Subscriptions(deliveries::SubscriptionsCommand),
}

/// Parses the arguments and runs the command.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Run { .. } | Command::Demo) {
        stop_on_closed_pipe();
    }
    let result = match cli.command {
        Command::Run { config } => run(&config).await,
        Command::Check { config } => check::run(&config).await,
        Command::Setup { config, print } => setup::run(&config, print).await,
        Command::Ping {
            config,
            subscription,
            jobs,
        } => ping::run(&config, subscription, &jobs).await,
        Command::Skip {
            config,
            lsn,
            reason,
        } => skip::run(&config, &lsn, &reason).await,
        Command::Deliveries(command) => deliveries::run_deliveries(command).await,
        Command::Subscriptions(command) => deliveries::run_subscriptions(command).await,
        Command::Demo => {
            crate::ops::logging::init("warn,walhook=info");
            return match crate::demo::run().await {
                Ok(code) => code,
                Err(err) => report(&err),
            };
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => report(&err),
    }
}

async fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let hangups = crate::ops::reload::listen()
        .map_err(|err| anyhow::anyhow!("cannot install the SIGHUP handler: {err}"))?;
    let config = load_config(path)?;
    crate::ops::logging::init(&config.log.filter);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %path.display(), "walhook starting");
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let ops = crate::ops::start(&config, shutdown.clone()).await?;

    let (live_sender, live) = tokio::sync::watch::channel(Arc::new(config.clone()));
    let subscriptions = Arc::new(Subscriptions::default());
    let reloader = Reloader::new(
        path.to_owned(),
        config,
        live_sender,
        Arc::clone(&subscriptions),
        ops.state(),
    );
    tokio::spawn(reloader.run(hangups, shutdown.clone()));
    let pipeline = crate::pipeline::run(live, subscriptions, shutdown.clone());
    let result = crate::ops::run_with_grace(pipeline, &shutdown, crate::ops::SHUTDOWN_GRACE).await;
    ops.stop().await;
    result?;
    tracing::info!("walhook stopped");
    Ok(())
}

/// Loads the configuration file.
pub fn load_config(path: &std::path::Path) -> Result<config::Config, ConfigError> {
    config::load(path)
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop walhook with SIGKILL");
        return;
    };
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received, stopping"),
        _ = interrupt.recv() => tracing::info!("SIGINT received, stopping"),
    }
    shutdown.cancel();
}

/// Lets a command that prints end quietly when the reader of its output goes
/// away (`walhook check | head -1`), as other command-line tools do, instead
/// of failing on the write. The daemon keeps SIGPIPE ignored, so a receiver
/// or database that closes its socket gives an error, not a signal.
fn stop_on_closed_pipe() {
    use nix::sys::signal::{signal, SigHandler, Signal};
    // SAFETY: the default disposition runs no handler code in the process,
    // and sigaction may be called from any thread.
    if let Err(err) = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) } {
        tracing::debug!(error = %err, "cannot restore the default SIGPIPE action");
    }
}

fn report(err: &anyhow::Error) -> ExitCode {
    eprintln!("walhook: {err:#}");
    let needs_operator = err
        .downcast_ref::<crate::pipeline::PipelineError>()
        .is_some_and(crate::pipeline::PipelineError::is_fatal);
    if needs_operator || err.downcast_ref::<ConfigError>().is_some() {
        ExitCode::from(EXIT_CONFIG)
    } else {
        ExitCode::FAILURE
    }
}

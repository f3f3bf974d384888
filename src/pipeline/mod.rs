//! The daemon's pipeline: replication → pgoutput decoding → rules → routing →
//! queue, with the delivery workers beside it.
//!
//! A failed session (lost connection, a change that cannot be processed)
//! restarts the whole stream from the stored position with a fresh relation
//! cache, after a capped exponential backoff. A slot that cannot be streamed
//! from (invalidated, or made for another plugin) stops the daemon with that
//! error instead, because only the operator can fix it.

mod accounts;
mod processor;
mod slot;
mod store;
mod stream;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::pgoutput::{DecodeError, Oid};
use crate::queue::OutboxError;
use crate::replication::{Lsn, ReplicationError};
use crate::routing::{subscriptions_table, Subscriptions};

pub use processor::RuleFailure;
pub use stream::StreamContext;

const FIRST_RETRY_DELAY: Duration = Duration::from_secs(1);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);
/// Interval of a standby instance's attempts to take over a slot in use.
const SLOT_IN_USE_RETRY_DELAY: Duration = Duration::from_secs(2);

/// A failure that ends one replication session.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("replication connection: {0}")]
    Replication(#[from] ReplicationError),
    #[error("invalid pgoutput message: {0}")]
    Decode(#[from] DecodeError),
    #[error("unexpected pgoutput message order: {0}")]
    Protocol(&'static str),
    #[error("change for relation id `{0}` arrived before its Relation message")]
    UnknownRelation(Oid),
    #[error("change of table `{table}` has {found} values but its Relation message lists {expected} columns")]
    TupleWidth {
        table: String,
        expected: usize,
        found: usize,
    },
    #[error("transaction `{lsn}`, table `{table}`: {source}; nothing past it is confirmed until it is fixed, or skipped with `walhook skip --lsn {lsn}`")]
    Rule {
        lsn: Lsn,
        table: String,
        source: RuleFailure,
    },
    #[error(transparent)]
    Outbox(#[from] OutboxError),
    #[error("queue database: {}", crate::db::describe(.0))]
    Queue(tokio_postgres::Error),
    #[error("application database: {}", crate::db::describe(.0))]
    Source(tokio_postgres::Error),
    #[error("replication slot `{slot}` uses plugin `{plugin}`, not `pgoutput`: drop it or set source.slot to another name")]
    SlotPlugin { slot: String, plugin: String },
    #[error("replication slot `{slot}` was invalidated (wal_status = lost): the changes from `{confirmed}` to `{current}` were removed before walhook read them; raise max_slot_wal_keep_size, set replication.recreate_invalidated_slot = true to continue from the current WAL position, and redeliver the gap from the application")]
    SlotInvalidated {
        slot: String,
        /// The slot's confirmed position, where the gap starts.
        confirmed: Lsn,
        /// The server's current WAL position, close to where a re-created
        /// slot would start.
        current: Lsn,
    },
    #[error("replication slot `{slot}` is missing, but the queue has stored progress up to `{stored}`: the changes after it are gone with the slot; set replication.recreate_invalidated_slot = true to create the slot at the current WAL position (`{current}`), and redeliver the gap from the application")]
    SlotDropped {
        slot: String,
        /// The last position stored in the queue, where the gap starts.
        stored: Lsn,
        /// The server's current WAL position, close to where a new slot
        /// would start.
        current: Lsn,
    },
    #[error("the server ended the replication stream")]
    StreamEnded,
    #[error("replication task panicked: {0}")]
    Panicked(String),
    #[error(transparent)]
    Injected(#[from] crate::ops::failpoint::InjectedError),
    #[error("queue writer task stopped")]
    WriterStopped,
}

impl PipelineError {
    /// Tells whether another process streams from the slot (SQLSTATE 55006).
    pub fn is_slot_in_use(&self) -> bool {
        matches!(self, PipelineError::Replication(err) if err.is_slot_in_use())
    }

    /// Tells whether reconnecting cannot help, because the slot itself must
    /// be fixed by the operator.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            PipelineError::SlotInvalidated { .. }
                | PipelineError::SlotDropped { .. }
                | PipelineError::SlotPlugin { .. }
        )
    }
}

/// Runs the daemon until `shutdown` is cancelled. `live` carries the
/// configuration in force, which a reload replaces, and `subscriptions` is
/// the registry that routing and delivery share.
pub async fn run(
    live: watch::Receiver<Arc<Config>>,
    subscriptions: Arc<Subscriptions>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let config = Arc::clone(&live.borrow());
    load_subscriptions(&config, &subscriptions).await?;

    let deliveries_stored = Arc::new(Notify::new());
    let delivery = tokio::spawn(deliver(
        live.clone(),
        Arc::clone(&subscriptions),
        Arc::clone(&deliveries_stored),
        shutdown.clone(),
    ));

    let context = StreamContext {
        live,
        subscriptions,
        deliveries_stored,
        shutdown: shutdown.clone(),
    };
    let replicated = replicate(Arc::new(context)).await;
    if replicated.is_err() {
        // The delivery workers stop with the pipeline, and what they have
        // not sent stays pending in the queue.
        shutdown.cancel();
    }

    delivery
        .await
        .map_err(|err| anyhow::anyhow!("delivery task failed: {err}"))?;
    replicated?;
    Ok(())
}

/// Runs the delivery workers, restarting them on a new queue connection when
/// theirs fails, until shutdown.
async fn deliver(
    live: watch::Receiver<Arc<Config>>,
    subscriptions: Arc<Subscriptions>,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut delay = FIRST_RETRY_DELAY;
    while !shutdown.is_cancelled() {
        match run_workers(&live, &subscriptions, &wake, &shutdown).await {
            Ok(()) => return,
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), retry_in = ?delay, "delivery workers failed, restarting");
                stream::pause(&shutdown, delay).await;
                delay = next_retry_delay(delay);
            }
        }
    }
}

async fn run_workers(
    live: &watch::Receiver<Arc<Config>>,
    subscriptions: &Arc<Subscriptions>,
    wake: &Arc<Notify>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let config = Arc::clone(&live.borrow());
    let client = stream::connect_queue(&config).await?;
    let workers = crate::delivery::DeliveryWorkers::new(
        Arc::new(client),
        &config.queue.schema,
        &config.delivery,
        Arc::clone(subscriptions),
        Arc::clone(wake),
    )?
    .follow(live.clone());
    workers.run(shutdown.clone()).await
}

/// Streams, reconnecting after each failure, until shutdown. Each session
/// runs in a task of its own, so a panic in it ends only that session, and
/// the next one starts from the stored position with a fresh relation cache.
/// Returns the error of a session that reconnecting cannot fix.
async fn replicate(context: Arc<StreamContext>) -> Result<(), PipelineError> {
    let mut delay = FIRST_RETRY_DELAY;
    let mut waiting_for_slot = false;
    while !context.shutdown.is_cancelled() {
        let started = tokio::time::Instant::now();
        let session = tokio::spawn(stream::stream_once(Arc::clone(&context)));
        let err = match session.await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(err)) => err,
            Err(join_error) => PipelineError::Panicked(join_error.to_string()),
        };

        if err.is_fatal() {
            tracing::error!(error = %err, slot = %context.config().source.slot, "replication cannot continue, stopping");
            crate::ops::replication_failed(&err);
            return Err(err);
        }

        if err.is_slot_in_use() {
            if !waiting_for_slot {
                tracing::info!(slot = %context.config().source.slot, "replication slot is in use by another process, waiting to take over");
                waiting_for_slot = true;
            }
            crate::ops::replication_waiting("replication slot is in use by another process");
            refresh_subscriptions(&context).await;
            stream::pause(&context.shutdown, SLOT_IN_USE_RETRY_DELAY).await;
            continue;
        }
        waiting_for_slot = false;
        if started.elapsed() > MAX_RETRY_DELAY * 2 {
            delay = FIRST_RETRY_DELAY;
        }
        tracing::error!(error = %err, retry_in = ?delay, "replication session failed, reconnecting");
        match &err {
            PipelineError::Rule { lsn, .. } => crate::ops::replication_blocked(*lsn, &err),
            _ => crate::ops::replication_failed(&err),
        }
        let jittered = delay.mul_f64(rand::Rng::gen_range(&mut rand::thread_rng(), 0.8..1.2));
        stream::pause(&context.shutdown, jittered).await;
        delay = next_retry_delay(delay);
    }
    Ok(())
}

/// Returns the delay after `delay` in the reconnection backoff: twice as
/// long, up to [`MAX_RETRY_DELAY`].
fn next_retry_delay(delay: Duration) -> Duration {
    (delay * 2).min(MAX_RETRY_DELAY)
}

/// Reloads the subscriptions table while another process streams from the slot, so
/// this process's delivery workers see subscriptions changed meanwhile.
async fn refresh_subscriptions(context: &StreamContext) {
    if let Err(err) = load_subscriptions(&context.config(), &context.subscriptions).await {
        tracing::warn!(error = %format!("{err:#}"), "reloading subscriptions failed");
    }
}

/// Loads the subscriptions table and the static endpoints.
async fn load_subscriptions(config: &Config, subscriptions: &Subscriptions) -> anyhow::Result<()> {
    subscriptions.replace_endpoints(&config.endpoints);
    let client = connect_source(config).await?;
    let loaded = subscriptions_table::load_all(&client, &config.subscriptions, subscriptions)
        .await
        .map_err(|err| {
            anyhow::anyhow!(
                "cannot read subscriptions table `{}`: {}",
                config.subscriptions.table,
                crate::db::describe(&err)
            )
        })?;
    tracing::info!(
        subscriptions = loaded,
        endpoints = config.endpoints.len(),
        "subscriptions loaded"
    );
    Ok(())
}

/// Opens an ordinary (non-replication) connection to the application database.
pub async fn connect_source(config: &Config) -> Result<tokio_postgres::Client, PipelineError> {
    crate::db::connect(&config.source_postgres()?, "application")
        .await
        .map_err(PipelineError::Source)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_up_to_cap() {
        let mut delays = vec![FIRST_RETRY_DELAY];
        for _ in 0..7 {
            let last = *delays.last().expect("delays start with one entry");
            delays.push(next_retry_delay(last));
        }
        let seconds: Vec<u64> = delays.iter().map(Duration::as_secs).collect();
        assert_eq!(seconds, [1, 2, 4, 8, 16, 30, 30, 30]);
    }
}

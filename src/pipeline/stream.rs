//! One replication session: connect, stream from the stored position, hand
//! each committed transaction's events to the [`Store`], confirm what it has
//! written, and reply to keepalives.
//!
//! Three positions are tracked: `received` (the end of WAL the server has sent),
//! `confirmed` (everything up to it is stored in the queue or needs nothing) and
//! the stored commit LSN in the processor. Only `confirmed` is reported as
//! flushed, and it never goes backwards.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::processor::Processor;
use super::store::Store;
use super::PipelineError;
use crate::config::Config;
use crate::pgoutput;
use crate::queue::Outbox;
use crate::replication::{
    Lsn, ReplicationClient, ReplicationMessage, ReplicationStream, StandbyStatus,
};
use crate::routing::Subscriptions;

/// Buffered messages handled in a row before the streaming loop checks its
/// timers and shutdown again.
const MAX_BUFFERED_RUN: usize = 256;

/// State that the streaming loop shares with the rest of the daemon.
pub struct StreamContext {
    /// The configuration in force; a reload replaces it, except for the keys
    /// that need a restart.
    pub live: watch::Receiver<Arc<Config>>,
    pub subscriptions: Arc<Subscriptions>,
    /// Woken after each queue commit that stored deliveries.
    pub deliveries_stored: Arc<Notify>,
    pub shutdown: CancellationToken,
}

impl StreamContext {
    /// Returns the configuration in force.
    pub fn config(&self) -> Arc<Config> {
        Arc::clone(&self.live.borrow())
    }
}

struct Positions {
    received: Lsn,
    confirmed: Lsn,
}

impl Positions {
    /// Moves the confirmed position forward, never backwards.
    fn confirm(&mut self, lsn: Option<Lsn>) {
        if let Some(lsn) = lsn {
            self.confirmed = self.confirmed.max(lsn);
        }
    }
}

/// Streams until shutdown (`Ok`) or until the connection or a change fails.
pub async fn stream_once(context: Arc<StreamContext>) -> Result<(), PipelineError> {
    let context = context.as_ref();
    let config = &context.config();
    let outbox = Outbox::new(
        connect_queue(config).await?,
        &config.queue.schema,
        &config.source.slot,
    );
    let lookups = super::connect_source(config).await?;
    let progress = outbox.progress().await?;
    let slot_confirmed = super::slot::prepare(&lookups, config, progress).await?;
    // Reporting a position below the slot's would move it backwards on
    // PostgreSQL 15, so the stream starts at the later of the two.
    let start = progress
        .map(|p| p.end_lsn)
        .unwrap_or(Lsn::ZERO)
        .max(slot_confirmed);
    let stored_commit = progress.map(|p| p.commit_lsn).unwrap_or(Lsn::ZERO);
    let skipped = outbox.skipped_transactions().await?;

    let client = ReplicationClient::connect(&config.source_postgres()?).await?;
    let mut stream = client
        .start_logical_replication(&config.source.slot, start, &config.source.publication)
        .await?;
    tracing::info!(slot = %config.source.slot, lsn = %start, "replication started");
    crate::ops::replication_started(start);

    let mut processor = Processor::new(
        Arc::clone(config),
        Arc::clone(&context.subscriptions),
        lookups,
        stored_commit,
        skipped,
    );
    let mut positions = Positions {
        received: start,
        confirmed: start,
    };
    let mut store = Store::new(
        outbox,
        Arc::clone(&context.subscriptions),
        context.live.clone(),
        Arc::clone(&context.deliveries_stored),
    );
    let mut status_timer = tokio::time::interval(config.source.status_interval);
    status_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let flush_at = store.flush_deadline();
        tokio::select! {
            biased;
            _ = context.shutdown.cancelled() => {
                positions.confirm(store.finish(&mut processor).await?);
                send_status(&mut stream, &positions, false).await?;
                tracing::info!(lsn = %positions.confirmed, "replication stopped");
                return Ok(());
            }
            stored = store.next_stored() => {
                positions.confirm(Some(stored?));
                // Hand over what gathered while the writer was busy.
                store.flush(&mut processor).await?;
            }
            _ = sleep_until_or_never(flush_at) => store.flush(&mut processor).await?,
            _ = status_timer.tick() => send_status(&mut stream, &positions, false).await?,
            message = stream.next_message() => {
                let Some(message) = message? else {
                    return Err(PipelineError::StreamEnded);
                };
                handle_message(&mut stream, &mut processor, &mut store, &mut positions, message).await?;
                handle_buffered(&mut stream, &mut processor, &mut store, &mut positions).await?;
            }
        }
    }
}

/// Handles up to [`MAX_BUFFERED_RUN`] messages that are already buffered, so the
/// timers and cancellation token of the streaming loop's `select!` are polled
/// once per run, not once per message.
async fn handle_buffered(
    stream: &mut ReplicationStream,
    processor: &mut Processor,
    store: &mut Store,
    positions: &mut Positions,
) -> Result<(), PipelineError> {
    for _ in 0..MAX_BUFFERED_RUN {
        // `next_message` is cancel-safe, so dropping it when it would wait
        // loses nothing.
        let Some(message) = stream.next_message().now_or_never() else {
            return Ok(());
        };
        let Some(message) = message? else {
            return Err(PipelineError::StreamEnded);
        };
        handle_message(stream, processor, store, positions, message).await?;
    }
    Ok(())
}

/// Waits until `deadline`, or forever when there is none.
async fn sleep_until_or_never(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn handle_message(
    stream: &mut ReplicationStream,
    processor: &mut Processor,
    store: &mut Store,
    positions: &mut Positions,
    message: ReplicationMessage,
) -> Result<(), PipelineError> {
    match message {
        ReplicationMessage::XLogData(xlog) => {
            positions.received = positions.received.max(xlog.wal_end);
            crate::ops::metrics::wal_received(xlog.wal_end, xlog.server_clock);
            crate::ops::failpoint::hit("decode-message")?;
            let decoded = pgoutput::decode(&xlog.data)?;
            if let Some(batch) = processor.handle(decoded).await? {
                let confirmed = store.accept(processor, batch).await?;
                positions.confirm(confirmed);
            }
        }
        ReplicationMessage::PrimaryKeepalive(keepalive) => {
            positions.received = positions.received.max(keepalive.wal_end);
            crate::ops::metrics::wal_received(keepalive.wal_end, keepalive.server_clock);
            // Every change before the keepalive has arrived, so when no
            // transaction is open and nothing waits to be stored, there is
            // nothing left to store below it.
            if !processor.in_transaction() && store.is_idle() {
                positions.confirm(Some(keepalive.wal_end));
            }
            if keepalive.reply_requested {
                send_status(stream, positions, false).await?;
            }
        }
    }
    Ok(())
}

async fn send_status(
    stream: &mut ReplicationStream,
    positions: &Positions,
    reply_requested: bool,
) -> Result<(), PipelineError> {
    let status = StandbyStatus {
        written: positions.received,
        flushed: positions.confirmed,
        applied: positions.confirmed,
        reply_requested,
    };
    stream.send_status(status).await?;
    crate::ops::metrics::status_sent(positions.received, positions.confirmed);
    tracing::debug!(received = %positions.received, confirmed = %positions.confirmed, "status update sent");
    Ok(())
}

/// Opens a connection to the queue database.
pub async fn connect_queue(config: &Config) -> Result<tokio_postgres::Client, PipelineError> {
    crate::db::connect(&config.queue_postgres()?, "queue")
        .await
        .map_err(PipelineError::Queue)
}

/// Waits `delay`, or returns early on shutdown.
pub async fn pause(shutdown: &CancellationToken, delay: Duration) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = tokio::time::sleep(delay) => {}
    }
}

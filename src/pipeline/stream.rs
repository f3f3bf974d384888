//! One replication session: connect, stream from the stored position, store
//! each committed transaction's deliveries, confirm, and answer keepalives.
//!
//! Three positions are tracked: `received` (the end of WAL the server has sent),
//! `confirmed` (everything up to it is stored in the queue or needs nothing) and
//! the stored commit LSN in the processor. Only `confirmed` is reported as
//! flushed, and it never goes backwards.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::processor::{CommittedTransaction, Processor};
use super::PipelineError;
use crate::config::Config;
use crate::pgoutput;
use crate::queue::{Outbox, Progress};
use crate::replication::{
    Lsn, ReplicationClient, ReplicationMessage, ReplicationStream, StandbyStatus,
};
use crate::routing::{route, Subscriptions};

/// What the streaming loop shares with the rest of the daemon.
pub struct StreamContext {
    pub config: Arc<Config>,
    pub subscriptions: Arc<Subscriptions>,
    /// Woken after each queue commit that stored deliveries.
    pub deliveries_stored: Arc<Notify>,
    pub shutdown: CancellationToken,
}

struct Positions {
    received: Lsn,
    confirmed: Lsn,
}

/// Streams until shutdown (`Ok`) or until the connection or a change fails.
pub async fn stream_once(context: &StreamContext) -> Result<(), PipelineError> {
    let config = &context.config;
    let mut outbox = Outbox::new(
        connect_queue(config).await?,
        &config.queue.schema,
        &config.source.slot,
    );
    let lookups = super::connect_source(config).await?;
    let progress = outbox.progress().await?;
    let slot_confirmed = slot_confirmed_lsn(&lookups, &config.source.slot).await?;
    // Reporting a position below the slot's would move it backwards on
    // PostgreSQL 15, so the stream starts at the later of the two.
    let start = progress
        .map(|p| p.end_lsn)
        .unwrap_or(Lsn::ZERO)
        .max(slot_confirmed);
    let stored_commit = progress.map(|p| p.commit_lsn).unwrap_or(Lsn::ZERO);

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
    );
    let mut positions = Positions {
        received: start,
        confirmed: start,
    };
    let mut status_timer = tokio::time::interval(config.source.status_interval);
    status_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        tokio::select! {
            biased;
            _ = context.shutdown.cancelled() => {
                send_status(&mut stream, &positions, false).await?;
                tracing::info!(lsn = %positions.confirmed, "replication stopped");
                return Ok(());
            }
            _ = status_timer.tick() => send_status(&mut stream, &positions, false).await?,
            message = stream.next_message() => {
                let Some(message) = message? else {
                    return Err(PipelineError::StreamEnded);
                };
                handle_message(context, &mut stream, &mut processor, &mut outbox, &mut positions, message).await?;
            }
        }
    }
}

async fn handle_message(
    context: &StreamContext,
    stream: &mut ReplicationStream,
    processor: &mut Processor,
    outbox: &mut Outbox,
    positions: &mut Positions,
    message: ReplicationMessage,
) -> Result<(), PipelineError> {
    match message {
        ReplicationMessage::XLogData(xlog) => {
            positions.received = positions.received.max(xlog.wal_end);
            crate::ops::metrics::wal_received(xlog.wal_end, xlog.server_clock);
            let decoded = pgoutput::decode(&xlog.data)?;
            if let Some(committed) = processor.handle(decoded).await? {
                let end_lsn = store(context, processor, outbox, committed).await?;
                positions.confirmed = positions.confirmed.max(end_lsn);
            }
        }
        ReplicationMessage::PrimaryKeepalive(keepalive) => {
            positions.received = positions.received.max(keepalive.wal_end);
            crate::ops::metrics::wal_received(keepalive.wal_end, keepalive.server_clock);
            // Every change before the keepalive has arrived, so when no
            // transaction is open there is nothing left to store below it.
            if !processor.in_transaction() {
                positions.confirmed = positions.confirmed.max(keepalive.wal_end);
            }
            if keepalive.reply_requested {
                send_status(stream, positions, false).await?;
            }
        }
    }
    Ok(())
}

/// Stores the deliveries of a committed transaction and returns the LSN that
/// may now be confirmed.
async fn store(
    context: &StreamContext,
    processor: &mut Processor,
    outbox: &mut Outbox,
    committed: CommittedTransaction,
) -> Result<Lsn, PipelineError> {
    let lsn = committed.commit_lsn;
    if committed.already_stored {
        tracing::debug!(lsn = %lsn, "transaction already stored, skipped");
        return Ok(committed.end_lsn);
    }
    crate::ops::metrics::events_detected(&committed.events);
    let max_batch = context.config.delivery.max_batch;
    let deliveries = route(lsn, &committed.events, &context.subscriptions, max_batch);
    if deliveries.is_empty() {
        return Ok(committed.end_lsn);
    }

    let progress = Progress {
        commit_lsn: lsn,
        end_lsn: committed.end_lsn,
    };
    outbox.store(progress, &deliveries).await?;
    processor.mark_stored(lsn);
    for delivery in &deliveries {
        tracing::debug!(
            lsn = %lsn,
            webhook_id = %delivery.webhook_id,
            event = %delivery.kind,
            subscription = %delivery.subscription,
            "delivery stored"
        );
    }
    context.deliveries_stored.notify_one();
    crate::ops::failpoint::hit("after-queue-commit");
    Ok(committed.end_lsn)
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

/// Returns the slot's confirmed position, failing with the fix when the slot is missing.
async fn slot_confirmed_lsn(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<Lsn, PipelineError> {
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(PipelineError::Source)?;
    let Some(row) = row else {
        return Err(PipelineError::SlotMissing(slot.to_owned()));
    };
    let text: Option<String> = row.get(0);
    Ok(text.and_then(|text| text.parse().ok()).unwrap_or(Lsn::ZERO))
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

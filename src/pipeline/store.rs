//! Handing events to the queue: several committed source transactions share
//! one queue transaction, which carries the commit LSN of the last of them.
//!
//! Deliveries of committed transactions gather in memory while the queue
//! writer stores the previous batch, and go to it as soon as it is idle, or
//! after [`FLUSH_DELAY`], or once [`FLUSH_DELIVERIES`] have gathered. Their
//! transactions are confirmed to the server only after the queue commit, so a
//! crash loses only what was never confirmed, and the server sends it again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::processor::{EventBatch, Processor};
use super::writer::{QueueWrite, QueueWriter};
use super::PipelineError;
use crate::config::Config;
use crate::queue::{Outbox, Progress};
use crate::replication::Lsn;
use crate::routing::{route, NewDelivery, Subscriptions};

/// Maximum time a stored transaction's deliveries wait for others to share
/// their queue transaction.
pub const FLUSH_DELAY: Duration = Duration::from_millis(10);

/// Deliveries that make the store hand its batch to the writer at once.
pub const FLUSH_DELIVERIES: usize = 1_000;

/// The enqueue side of one replication session.
pub struct Store {
    writer: QueueWriter,
    subscriptions: Arc<Subscriptions>,
    /// The configuration in force, for `delivery.max_batch`.
    live: watch::Receiver<Arc<Config>>,
    pending: Vec<NewDelivery>,
    /// Progress of the last complete transaction whose deliveries are pending.
    pending_progress: Option<Progress>,
    pending_since: Option<Instant>,
}

impl Store {
    pub fn new(
        outbox: Outbox,
        subscriptions: Arc<Subscriptions>,
        live: watch::Receiver<Arc<Config>>,
        deliveries_stored: Arc<Notify>,
    ) -> Store {
        Store {
            writer: QueueWriter::spawn(outbox, deliveries_stored),
            subscriptions,
            live,
            pending: Vec::new(),
            pending_progress: None,
            pending_since: None,
        }
    }

    /// Tells whether every accepted transaction is stored or needs nothing.
    pub fn is_idle(&self) -> bool {
        self.pending_progress.is_none() && self.writer.is_idle()
    }

    /// Returns when the pending deliveries must go to the writer.
    pub fn flush_deadline(&self) -> Option<Instant> {
        self.pending_since.map(|since| since + FLUSH_DELAY)
    }

    /// Accepts the events of a batch and returns the LSN that may now be
    /// confirmed, if any.
    ///
    /// A chunk of an open transaction is written without progress: a replay
    /// after a crash inserts it again under the same webhook ids, which the
    /// queue ignores.
    pub async fn accept(
        &mut self,
        processor: &mut Processor,
        batch: EventBatch,
    ) -> Result<Option<Lsn>, PipelineError> {
        let lsn = batch.commit_lsn;
        if batch.end_lsn.is_some() {
            crate::ops::failpoint::hit("route-transaction")?;
        }
        let deliveries = if batch.already_stored {
            tracing::debug!(lsn = %lsn, "transaction already stored, skipped");
            Vec::new()
        } else {
            crate::ops::metrics::events_detected(&batch.events);
            let first = batch.first_event_index;
            let max_batch = self.live.borrow().delivery.max_batch;
            route(lsn, first, &batch.events, &self.subscriptions, max_batch)
        };

        let Some(end_lsn) = batch.end_lsn else {
            if !deliveries.is_empty() {
                // The writer stores in order, so earlier transactions go first.
                self.flush(processor).await?;
                self.writer.send(QueueWrite::Chunk(deliveries)).await?;
            }
            return Ok(None);
        };
        if deliveries.is_empty() && self.is_idle() {
            return Ok(Some(end_lsn));
        }

        self.pending.extend(deliveries);
        self.pending_progress = Some(Progress {
            commit_lsn: lsn,
            end_lsn,
        });
        self.pending_since.get_or_insert_with(Instant::now);
        if self.pending.len() >= FLUSH_DELIVERIES || self.writer.is_idle() {
            self.flush(processor).await?;
        }
        Ok(None)
    }

    /// Hands the pending deliveries and progress to the writer, to be stored
    /// in one queue transaction.
    pub async fn flush(&mut self, processor: &mut Processor) -> Result<(), PipelineError> {
        let Some(progress) = self.pending_progress.take() else {
            return Ok(());
        };
        let deliveries = std::mem::take(&mut self.pending);
        self.pending_since = None;
        processor.mark_stored(progress.commit_lsn);
        let write = QueueWrite::Commit {
            progress,
            deliveries,
        };
        self.writer.send(write).await
    }

    /// Waits until the writer commits another queue transaction, and returns
    /// the end LSN it stored, which may now be confirmed. Cancel-safe.
    pub async fn next_stored(&mut self) -> Result<Lsn, PipelineError> {
        self.writer.next_stored().await
    }

    /// Stores everything accepted, stops the writer, and returns the end LSN
    /// of the last progress stored.
    pub async fn finish(
        &mut self,
        processor: &mut Processor,
    ) -> Result<Option<Lsn>, PipelineError> {
        self.flush(processor).await?;
        self.writer.finish().await
    }
}

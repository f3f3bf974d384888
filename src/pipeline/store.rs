//! Handing events to the queue: several committed source transactions share
//! one queue transaction, which carries the commit LSN of the last of them.
//!
//! Deliveries wait in memory for at most [`FLUSH_DELAY`] or until
//! [`FLUSH_DELIVERIES`] have gathered. Their transactions are confirmed to
//! the server only after the queue commit, so a crash loses only what was
//! never confirmed, and the server sends it again.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::processor::{EventBatch, Processor};
use super::PipelineError;
use crate::config::Config;
use crate::queue::{Outbox, Progress};
use crate::replication::Lsn;
use crate::routing::{route, NewDelivery, Subscriptions};

/// Maximum time a stored transaction's deliveries wait for others to share
/// their queue transaction.
pub const FLUSH_DELAY: Duration = Duration::from_millis(10);

/// Deliveries that make the store write to the queue at once.
pub const FLUSH_DELIVERIES: usize = 1_000;

/// The enqueue side of one replication session.
pub struct Store {
    outbox: Outbox,
    subscriptions: Arc<Subscriptions>,
    /// The configuration in force, for `delivery.max_batch`.
    live: watch::Receiver<Arc<Config>>,
    deliveries_stored: Arc<Notify>,
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
            outbox,
            subscriptions,
            live,
            deliveries_stored,
            pending: Vec::new(),
            pending_progress: None,
            pending_since: None,
        }
    }

    /// Tells whether every accepted transaction is stored or needs nothing.
    pub fn is_idle(&self) -> bool {
        self.pending_progress.is_none()
    }

    /// Returns when the pending deliveries must be written.
    pub fn flush_deadline(&self) -> Option<Instant> {
        self.pending_since.map(|since| since + FLUSH_DELAY)
    }

    /// Accepts the events of a batch and returns the LSN that may now be
    /// confirmed, if any.
    ///
    /// A chunk of an open transaction is written at once, without progress:
    /// a replay after a crash inserts it again under the same webhook ids,
    /// which the queue ignores.
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
            if deliveries.is_empty() {
                return Ok(None);
            }
            // Rows are sent in queue order, so earlier transactions go first.
            let confirmed = self.flush(processor).await?;
            self.outbox.store_chunk(&deliveries).await?;
            log_stored(lsn, &deliveries);
            self.deliveries_stored.notify_one();
            return Ok(confirmed);
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
        if self.pending.len() >= FLUSH_DELIVERIES {
            return self.flush(processor).await;
        }
        Ok(None)
    }

    /// Writes the pending deliveries and progress in one queue transaction,
    /// and returns the LSN that may now be confirmed.
    pub async fn flush(&mut self, processor: &mut Processor) -> Result<Option<Lsn>, PipelineError> {
        let Some(progress) = self.pending_progress else {
            return Ok(None);
        };
        self.outbox.store(progress, &self.pending).await?;
        processor.mark_stored(progress.commit_lsn);
        log_stored(progress.commit_lsn, &self.pending);
        if !self.pending.is_empty() {
            self.deliveries_stored.notify_one();
        }
        crate::ops::failpoint::hit("after-queue-commit")?;

        self.pending.clear();
        self.pending_progress = None;
        self.pending_since = None;
        Ok(Some(progress.end_lsn))
    }
}

fn log_stored(lsn: Lsn, deliveries: &[NewDelivery]) {
    for delivery in deliveries {
        tracing::debug!(
            lsn = %delivery.commit_lsn,
            webhook_id = %delivery.webhook_id,
            event = %delivery.kind,
            subscription = %delivery.subscription,
            "delivery stored"
        );
    }
    if !deliveries.is_empty() {
        tracing::debug!(lsn = %lsn, deliveries = deliveries.len(), "queue transaction committed");
    }
}

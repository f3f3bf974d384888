//! The queue writer: a task that stores the writes the [`super::store::Store`]
//! hands it, one after the other, while the stream goes on decoding.
//!
//! Writes are stored in the order they are sent. After each queue commit that
//! stores progress, the task publishes the end LSN it stored, and only then may
//! the stream report that LSN as flushed. At most [`MAX_WRITES_QUEUED`] writes
//! wait for the task, so memory stays bounded when the queue database is
//! slower than the stream.

use std::sync::Arc;

use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;

use super::PipelineError;
use crate::queue::{Outbox, Progress};
use crate::replication::Lsn;
use crate::routing::NewDelivery;

/// Writes sent to the task that wait while it stores an earlier one.
const MAX_WRITES_QUEUED: usize = 2;

/// One write to the queue.
pub enum QueueWrite {
    /// Deliveries of a transaction that is still arriving, without progress.
    Chunk(Vec<NewDelivery>),
    /// Deliveries of complete transactions and the progress of the last one,
    /// in one queue transaction.
    Commit {
        progress: Progress,
        deliveries: Vec<NewDelivery>,
    },
}

/// The handle of the writer task.
pub struct QueueWriter {
    sender: Option<mpsc::Sender<QueueWrite>>,
    /// End LSN of the last progress the task stored.
    stored: watch::Receiver<Option<Lsn>>,
    task: Option<JoinHandle<Result<(), PipelineError>>>,
    /// End LSN of the last progress sent to the task.
    sent: Option<Lsn>,
}

impl QueueWriter {
    /// Starts the task on `outbox`; it wakes `deliveries_stored` after each
    /// queue commit that stored deliveries.
    pub fn spawn(outbox: Outbox, deliveries_stored: Arc<Notify>) -> QueueWriter {
        let (sender, receiver) = mpsc::channel(MAX_WRITES_QUEUED);
        let (stored_sender, stored) = watch::channel(None);
        let task = tokio::spawn(write_all(
            outbox,
            receiver,
            stored_sender,
            deliveries_stored,
        ));
        QueueWriter {
            sender: Some(sender),
            stored,
            task: Some(task),
            sent: None,
        }
    }

    /// Tells whether the task stored every progress sent to it.
    pub fn is_idle(&self) -> bool {
        self.sent.is_none() || *self.stored.borrow() == self.sent
    }

    /// Hands a write to the task, waiting while [`MAX_WRITES_QUEUED`] others
    /// wait. Fails with the task's error when it has stopped.
    pub async fn send(&mut self, write: QueueWrite) -> Result<(), PipelineError> {
        let end_lsn = match &write {
            QueueWrite::Commit { progress, .. } => Some(progress.end_lsn),
            QueueWrite::Chunk(_) => None,
        };
        let Some(sender) = &self.sender else {
            return Err(self.stopped().await);
        };
        if sender.send(write).await.is_err() {
            return Err(self.stopped().await);
        }
        if end_lsn.is_some() {
            self.sent = end_lsn;
        }
        Ok(())
    }

    /// Waits until the task stores another progress and returns its end LSN.
    ///
    /// Cancel-safe, so it can be a branch of `tokio::select!`.
    pub async fn next_stored(&mut self) -> Result<Lsn, PipelineError> {
        loop {
            if self.stored.changed().await.is_err() {
                return Err(self.stopped().await);
            }
            if let Some(lsn) = *self.stored.borrow_and_update() {
                return Ok(lsn);
            }
        }
    }

    /// Waits until the task has stored every write sent to it, stops it, and
    /// returns the end LSN of the last progress stored.
    pub async fn finish(&mut self) -> Result<Option<Lsn>, PipelineError> {
        self.sender = None;
        if let Some(task) = self.task.take() {
            join(task).await?;
        }
        Ok(*self.stored.borrow())
    }

    /// Returns why the task stopped before it was asked to.
    async fn stopped(&mut self) -> PipelineError {
        self.sender = None;
        let Some(task) = self.task.take() else {
            return PipelineError::WriterStopped;
        };
        match join(task).await {
            Ok(()) => PipelineError::WriterStopped,
            Err(err) => err,
        }
    }
}

impl Drop for QueueWriter {
    /// Stops a task that was not finished, as when the session fails: its
    /// open queue transaction rolls back, and nothing it would have stored
    /// was confirmed, so the next session stores it again.
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

async fn join(task: JoinHandle<Result<(), PipelineError>>) -> Result<(), PipelineError> {
    match task.await {
        Ok(result) => result,
        Err(join_error) => Err(PipelineError::Panicked(join_error.to_string())),
    }
}

/// Stores each write in order until the sending side is dropped.
async fn write_all(
    mut outbox: Outbox,
    mut receiver: mpsc::Receiver<QueueWrite>,
    stored: watch::Sender<Option<Lsn>>,
    deliveries_stored: Arc<Notify>,
) -> Result<(), PipelineError> {
    while let Some(write) = receiver.recv().await {
        match write {
            QueueWrite::Chunk(deliveries) => {
                outbox.store_chunk(&deliveries).await?;
                log_stored(None, &deliveries);
                deliveries_stored.notify_one();
            }
            QueueWrite::Commit {
                progress,
                deliveries,
            } => {
                outbox.store(progress, &deliveries).await?;
                log_stored(Some(progress.commit_lsn), &deliveries);
                if !deliveries.is_empty() {
                    deliveries_stored.notify_one();
                }
                crate::ops::failpoint::hit("after-queue-commit")?;
                stored.send_replace(Some(progress.end_lsn));
            }
        }
    }
    Ok(())
}

fn log_stored(lsn: Option<Lsn>, deliveries: &[NewDelivery]) {
    for delivery in deliveries {
        tracing::debug!(
            lsn = %delivery.commit_lsn,
            webhook_id = %delivery.webhook_id,
            event = %delivery.kind,
            subscription = %delivery.subscription,
            "delivery stored"
        );
    }
    if let Some(lsn) = lsn {
        tracing::debug!(lsn = %lsn, deliveries = deliveries.len(), "queue transaction committed");
    }
}

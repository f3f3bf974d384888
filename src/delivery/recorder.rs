//! Batched recording of finished attempts.
//!
//! Send tasks hand each finished attempt to one recorder task and wait for
//! its result. The recorder stores everything that arrived while its previous
//! statement ran in one `record_attempts` statement, so a burst of finished
//! attempts costs one round trip instead of one each.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tracing::debug;

use crate::queue::{AttemptRecord, DeliveryQueue, NextStep};

/// Maximum attempts stored by one statement.
const MAX_BATCH: usize = 256;

/// One finished attempt, owned, for the attempts table and the delivery row.
#[derive(Clone, Debug)]
pub struct FinishedAttempt {
    pub delivery_id: i64,
    /// The attempt number returned by the claim.
    pub attempt: i32,
    pub started_at: SystemTime,
    pub duration: Duration,
    /// HTTP status, when a response arrived.
    pub status: Option<u16>,
    pub response_body: Option<String>,
    pub error: Option<String>,
    pub next: NextStep,
}

/// A failed record statement.
#[derive(Clone, Debug, thiserror::Error)]
pub enum RecordError {
    #[error("queue database: {}", crate::db::describe(.0))]
    Postgres(Arc<tokio_postgres::Error>),
    #[error("the recorder task stopped")]
    Stopped,
}

struct Request {
    attempt: FinishedAttempt,
    reply: oneshot::Sender<Result<bool, RecordError>>,
}

/// The sending side of the recorder task. Cloning it is cheap.
#[derive(Clone, Debug)]
pub struct Recorder {
    requests: mpsc::Sender<Request>,
}

impl Recorder {
    /// Spawns the recorder task on `client`. The task ends when every
    /// [`Recorder`] is dropped, after storing what it received.
    pub fn spawn(client: Arc<Client>, queue: DeliveryQueue) -> (Recorder, JoinHandle<()>) {
        let (requests, receiver) = mpsc::channel(MAX_BATCH);
        let task = tokio::spawn(run(client, queue, receiver));
        (Recorder { requests }, task)
    }

    /// Stores one attempt, batched with others, and returns whether its
    /// delivery was updated, as [`DeliveryQueue::record_attempt`] does.
    pub async fn record(&self, attempt: FinishedAttempt) -> Result<bool, RecordError> {
        let (reply, result) = oneshot::channel();
        self.requests
            .send(Request { attempt, reply })
            .await
            .map_err(|_| RecordError::Stopped)?;
        result.await.map_err(|_| RecordError::Stopped)?
    }
}

async fn run(client: Arc<Client>, queue: DeliveryQueue, mut receiver: mpsc::Receiver<Request>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while receiver.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let records: Vec<AttemptRecord<'_>> = batch
            .iter()
            .map(|request: &Request| borrow_record(&request.attempt))
            .collect();
        let result = queue.record_attempts(&client, &records).await;
        drop(records);
        debug!(attempts = batch.len(), "recorded delivery attempts");

        match result {
            Ok(applied) => {
                for (request, applied) in batch.drain(..).zip(applied) {
                    // A send task that stopped waiting needs no reply.
                    let _ = request.reply.send(Ok(applied));
                }
            }
            Err(err) => {
                let err = RecordError::Postgres(Arc::new(err));
                for request in batch.drain(..) {
                    let _ = request.reply.send(Err(err.clone()));
                }
            }
        }
    }
}

fn borrow_record(attempt: &FinishedAttempt) -> AttemptRecord<'_> {
    AttemptRecord {
        delivery_id: attempt.delivery_id,
        attempt: attempt.attempt,
        started_at: attempt.started_at,
        duration: attempt.duration,
        status: attempt.status,
        response_body: attempt.response_body.as_deref(),
        error: attempt.error.as_deref(),
        next: attempt.next,
    }
}

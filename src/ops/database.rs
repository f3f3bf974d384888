//! Database access of the operations side: queue statistics for `/metrics`,
//! `/readyz` and the systemd status line, the admin API's queue operations,
//! and PING requests on the application database.
//!
//! Each database gets one connection of its own, opened on first use and
//! opened again after it closes, so a database outage shows up in `/readyz`
//! without taking the HTTP endpoint down.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::Client;

use crate::config::{quote_ident, PostgresTarget, QualifiedName, SubscriptionsTable};
use crate::payload::EventKind;
use crate::replication::Lsn;

/// Maximum time to open a connection or run one statement.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

/// A failed operations query.
#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("{database} database: {}", crate::db::describe(source))]
    Postgres {
        database: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("{database} database did not respond within {STATEMENT_TIMEOUT:?}")]
    TimedOut { database: &'static str },
    #[error("subscription {id} not found in `{table}`: PING a subscription id of that table")]
    SubscriptionNotFound { id: i64, table: String },
    #[error("pg_logical_emit_message returned an invalid LSN `{0}`")]
    InvalidLsn(String),
}

/// One connection to a database, opened when needed.
pub struct LazyClient {
    config: PostgresTarget,
    database: &'static str,
    client: Mutex<Option<Arc<Client>>>,
}

impl LazyClient {
    /// Creates the handle without connecting; `database` names the database
    /// in errors and logs (`queue`, `application`).
    pub fn new(config: PostgresTarget, database: &'static str) -> LazyClient {
        LazyClient {
            config,
            database,
            client: Mutex::new(None),
        }
    }

    /// Returns the open connection, connecting when there is none or it closed.
    pub async fn client(&self) -> Result<Arc<Client>, DatabaseError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref().filter(|client| !client.is_closed()) {
            return Ok(Arc::clone(client));
        }
        let connect = crate::db::connect(&self.config, self.database);
        let client = Arc::new(self.within_timeout(connect).await?);
        *slot = Some(Arc::clone(&client));
        Ok(client)
    }

    /// Runs `future` with [`STATEMENT_TIMEOUT`], naming this database in errors.
    pub async fn within_timeout<T>(
        &self,
        future: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, DatabaseError> {
        let database = self.database;
        match tokio::time::timeout(STATEMENT_TIMEOUT, future).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(DatabaseError::Postgres { database, source }),
            Err(_) => Err(DatabaseError::TimedOut { database }),
        }
    }
}

/// Pending deliveries and the age of the oldest one.
#[derive(Clone, Copy, Debug, Default)]
pub struct QueueStats {
    pub pending: i64,
    pub oldest_pending_age: Duration,
}

/// Queries the number of pending deliveries and the age of the oldest one.
pub async fn queue_stats(queue: &LazyClient, schema: &str) -> Result<QueueStats, DatabaseError> {
    let client = queue.client().await?;
    let sql = format!(
        "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8
         FROM {}.deliveries WHERE status = 'pending'",
        quote_ident(schema)
    );
    let row = queue.within_timeout(client.query_one(&sql, &[])).await?;
    let age_seconds: f64 = row.get(1);
    Ok(QueueStats {
        pending: row.get(0),
        oldest_pending_age: Duration::try_from_secs_f64(age_seconds).unwrap_or_default(),
    })
}

/// Requests a PING of `jobs` for the application subscription `subscription`
/// by writing the logical decoding message that the pipeline reads, and
/// returns the message's LSN.
///
/// The message goes through the WAL like the application's own requests, so
/// the webhook-id derives from its LSN. PostgreSQL 15 lets every role call
/// `pg_logical_emit_message`: it needs no grant and no REPLICATION attribute.
pub async fn emit_ping(
    source: &LazyClient,
    table: &SubscriptionsTable,
    subscription: i64,
    jobs: &[i64],
) -> Result<Lsn, DatabaseError> {
    let client = source.client().await?;
    let message = serde_json::json!({
        "event": EventKind::Ping.as_str(),
        "subscription": subscription,
        "jobs": jobs,
    });
    // One statement checks the subscription and writes the message, so no
    // message is written for an id that the table does not contain.
    let sql = format!(
        "SELECT pg_logical_emit_message(true, 'walhook', $1::text)::text FROM {} WHERE {}::text = $2 LIMIT 1",
        QualifiedName::parse(&table.table).quoted(),
        quote_ident(&table.id)
    );
    let row = source
        .within_timeout(client.query_opt(&sql, &[&message.to_string(), &subscription.to_string()]))
        .await?
        .ok_or_else(|| DatabaseError::SubscriptionNotFound {
            id: subscription,
            table: table.table.clone(),
        })?;
    let text: String = row.get(0);
    text.parse().map_err(|_| DatabaseError::InvalidLsn(text))
}

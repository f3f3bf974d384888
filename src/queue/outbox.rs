//! The enqueue side of the queue: one queue transaction stores a source
//! transaction's deliveries together with its commit LSN.
//!
//! Only after that transaction commits does the pipeline report the LSN to the
//! server as flushed, so nothing is confirmed that is not stored. On restart,
//! source transactions whose commit LSN is at or below the stored one are
//! skipped, so each change is enqueued once.

use std::collections::HashSet;
use std::fmt::Write as _;

use tokio_postgres::{Client, GenericClient, Statement};

use crate::config::quote_ident;
use crate::replication::Lsn;
use crate::routing::NewDelivery;

/// The last source transaction whose deliveries are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
}

/// A failed queue read or write.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("queue database: {}", crate::db::describe(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("queue table `progress` holds an invalid LSN `{0}`")]
    InvalidLsn(String),
}

/// Writes deliveries and progress for one replication slot.
///
/// The insert and progress statements are prepared on first use and reused
/// for the life of the connection, so no write waits for a Parse round trip.
pub struct Outbox {
    client: Client,
    slot: String,
    insert_sql: String,
    progress_sql: String,
    insert: Option<Statement>,
    progress: Option<Statement>,
    select_progress_sql: String,
    select_skipped_sql: String,
}

impl Outbox {
    /// Wraps a connection to the queue database; the schema must exist.
    pub fn new(client: Client, schema: &str, slot: &str) -> Outbox {
        let schema = quote_ident(schema);
        Outbox {
            client,
            slot: slot.to_owned(),
            insert_sql: format!(
                "INSERT INTO {schema}.deliveries
                     (webhook_id, commit_lsn, event_index, subscription, url, event, job_ids, body)
                 SELECT w, c::pg_lsn, i, s, u, e, j::bigint[], b
                 FROM unnest($1::text[], $2::text[], $3::int4[], $4::text[], $5::text[],
                             $6::text[], $7::text[], $8::text[]) AS t(w, c, i, s, u, e, j, b)
                 ON CONFLICT (webhook_id) DO NOTHING"
            ),
            progress_sql: format!(
                "INSERT INTO {schema}.progress (slot, commit_lsn, end_lsn, updated_at)
                 VALUES ($1, $2::text::pg_lsn, $3::text::pg_lsn, now())
                 ON CONFLICT (slot) DO UPDATE
                 SET commit_lsn = excluded.commit_lsn, end_lsn = excluded.end_lsn, updated_at = now()"
            ),
            select_progress_sql: format!(
                "SELECT commit_lsn::text, end_lsn::text FROM {schema}.progress WHERE slot = $1"
            ),
            select_skipped_sql: format!(
                "SELECT commit_lsn::text FROM {schema}.skipped_transactions WHERE slot = $1"
            ),
            insert: None,
            progress: None,
        }
    }

    /// Returns the stored progress of the slot, if any transaction was stored.
    pub async fn progress(&self) -> Result<Option<Progress>, OutboxError> {
        let Some(row) = self
            .client
            .query_opt(&self.select_progress_sql, &[&self.slot])
            .await?
        else {
            return Ok(None);
        };
        let parse = |text: String| {
            text.parse::<Lsn>()
                .map_err(|_| OutboxError::InvalidLsn(text))
        };
        Ok(Some(Progress {
            commit_lsn: parse(row.get(0))?,
            end_lsn: parse(row.get(1))?,
        }))
    }

    /// Returns the commit LSNs of the transactions the operator chose to skip.
    pub async fn skipped_transactions(&self) -> Result<HashSet<Lsn>, OutboxError> {
        let rows = self
            .client
            .query(&self.select_skipped_sql, &[&self.slot])
            .await?;
        rows.iter()
            .map(|row| {
                let text: String = row.get(0);
                text.parse::<Lsn>()
                    .map_err(|_| OutboxError::InvalidLsn(text))
            })
            .collect()
    }

    /// Stores the deliveries of one or more source transactions and the
    /// progress of the last one, in one queue transaction.
    pub async fn store(
        &mut self,
        progress: Progress,
        deliveries: &[NewDelivery],
    ) -> Result<(), OutboxError> {
        let (insert, progress_statement) = self.statements().await?;
        let transaction = self.client.transaction().await?;
        insert_deliveries(&transaction, &insert, deliveries).await?;
        let commit = progress.commit_lsn.to_string();
        let end = progress.end_lsn.to_string();
        transaction
            .execute(&progress_statement, &[&self.slot, &commit, &end])
            .await?;
        transaction.commit().await?;
        Ok(())
    }

    /// Stores deliveries of a transaction that is still arriving, without
    /// progress; storing them again later is a no-op.
    pub async fn store_chunk(&mut self, deliveries: &[NewDelivery]) -> Result<(), OutboxError> {
        let (insert, _) = self.statements().await?;
        insert_deliveries(&self.client, &insert, deliveries).await
    }

    /// Returns the insert and progress statements, preparing them on first use.
    async fn statements(&mut self) -> Result<(Statement, Statement), OutboxError> {
        let insert = prepared(&self.client, &mut self.insert, &self.insert_sql).await?;
        let progress = prepared(&self.client, &mut self.progress, &self.progress_sql).await?;
        Ok((insert, progress))
    }
}

/// Returns the statement in `cache`, preparing `sql` into it when it is empty.
async fn prepared(
    client: &Client,
    cache: &mut Option<Statement>,
    sql: &str,
) -> Result<Statement, OutboxError> {
    if let Some(statement) = cache {
        return Ok(statement.clone());
    }
    let statement = client.prepare(sql).await?;
    *cache = Some(statement.clone());
    Ok(statement)
}

/// Inserts `deliveries` with one statement whose parameters are one array
/// per column. Webhook ids, URLs and bodies are borrowed, not copied.
async fn insert_deliveries(
    client: &impl GenericClient,
    insert: &Statement,
    deliveries: &[NewDelivery],
) -> Result<(), OutboxError> {
    if deliveries.is_empty() {
        return Ok(());
    }
    let webhook_ids: Vec<&str> = deliveries.iter().map(|d| d.webhook_id.as_str()).collect();
    let commit_lsns: Vec<String> = deliveries
        .iter()
        .map(|d| d.commit_lsn.to_string())
        .collect();
    let event_indexes: Vec<i32> = deliveries
        .iter()
        .map(|d| i32::try_from(d.event_index).unwrap_or(i32::MAX))
        .collect();
    let subscriptions: Vec<String> = deliveries
        .iter()
        .map(|d| d.subscription.to_string())
        .collect();
    let urls: Vec<&str> = deliveries.iter().map(|d| d.url.as_str()).collect();
    let events: Vec<&str> = deliveries.iter().map(|d| d.kind.as_str()).collect();
    let job_ids: Vec<String> = deliveries
        .iter()
        .map(|d| array_literal(&d.job_ids))
        .collect();
    let bodies: Vec<&str> = deliveries.iter().map(|d| d.body.as_str()).collect();
    client
        .execute(
            insert,
            &[
                &webhook_ids,
                &commit_lsns,
                &event_indexes,
                &subscriptions,
                &urls,
                &events,
                &job_ids,
                &bodies,
            ],
        )
        .await?;
    Ok(())
}

/// Returns the array literal of `ids`, such as `{3,17}`.
fn array_literal(ids: &[i64]) -> String {
    let mut literal = String::with_capacity(2 + ids.len() * 8);
    literal.push('{');
    for (index, id) in ids.iter().enumerate() {
        if index > 0 {
            literal.push(',');
        }
        write!(literal, "{id}").expect("writing to a String cannot fail");
    }
    literal.push('}');
    literal
}

//! Inspection and redelivery of queued webhooks, for the CLI and the admin API.

use std::time::SystemTime;

use serde::Serialize;
use tokio_postgres::Client;

use crate::config::quote_ident;

/// Filter of the deliveries to list; `None` fields match everything.
#[derive(Clone, Debug, Default)]
pub struct DeliveryFilter {
    /// `pending`, `delivered` or `failed`.
    pub status: Option<String>,
    /// Subscription key, such as `sub_42`.
    pub subscription: Option<String>,
    pub job_id: Option<i64>,
    /// Most rows returned, newest first.
    pub limit: i64,
}

/// One delivery as the operator sees it.
#[derive(Clone, Debug, Serialize)]
pub struct DeliverySummary {
    pub id: i64,
    pub webhook_id: String,
    pub subscription: String,
    pub event: String,
    pub job_ids: Vec<i64>,
    pub status: String,
    pub attempts: i32,
    /// UTC, ISO 8601, or `infinity` while a claim has parked the delivery
    /// because its subscription is disabled.
    pub next_attempt_at: String,
    pub created_at: String,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
}

const TIME_FORMAT: &str = r#"'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'"#;

/// Returns the deliveries that match `filter`, newest first.
pub async fn list_deliveries(
    client: &Client,
    schema: &str,
    filter: &DeliveryFilter,
) -> Result<Vec<DeliverySummary>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT id, webhook_id, subscription, event, job_ids, status, attempts,
                CASE WHEN isfinite(next_attempt_at)
                     THEN to_char(next_attempt_at AT TIME ZONE 'UTC', {TIME_FORMAT})
                     ELSE 'infinity' END,
                to_char(created_at AT TIME ZONE 'UTC', {TIME_FORMAT}),
                last_status, last_error
         FROM {}.deliveries
         WHERE ($1::text IS NULL OR status = $1)
           AND ($2::text IS NULL OR subscription = $2)
           AND ($3::bigint IS NULL OR $3 = ANY (job_ids))
         ORDER BY id DESC
         LIMIT $4",
        quote_ident(schema)
    );
    let rows = client
        .query(
            &sql,
            &[
                &filter.status,
                &filter.subscription,
                &filter.job_id,
                &filter.limit,
            ],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| DeliverySummary {
            id: row.get(0),
            webhook_id: row.get(1),
            subscription: row.get(2),
            event: row.get(3),
            job_ids: row.get(4),
            status: row.get(5),
            attempts: row.get(6),
            next_attempt_at: row.get(7),
            created_at: row.get(8),
            last_status: row.get(9),
            last_error: row.get(10),
        })
        .collect())
}

/// Makes the given deliveries pending and due now, whatever their status;
/// returns how many exist. Earlier attempts stay recorded, so a delivery that
/// had used up its retry schedule gets one more attempt.
pub async fn retry_deliveries(
    client: &Client,
    schema: &str,
    ids: &[i64],
) -> Result<u64, tokio_postgres::Error> {
    let sql = format!(
        "UPDATE {}.deliveries
         SET status = 'pending', next_attempt_at = now()
         WHERE id = ANY ($1)",
        quote_ident(schema)
    );
    client.execute(&sql, &[&ids]).await
}

/// Makes every failed delivery created at or after `since` (all when `None`)
/// pending and due now, for one more attempt each; returns how many.
pub async fn retry_failed(
    client: &Client,
    schema: &str,
    since: Option<SystemTime>,
) -> Result<u64, tokio_postgres::Error> {
    let sql = format!(
        "UPDATE {}.deliveries
         SET status = 'pending', next_attempt_at = now()
         WHERE status = 'failed' AND ($1::timestamptz IS NULL OR created_at >= $1)",
        quote_ident(schema)
    );
    client.execute(&sql, &[&since]).await
}

/// Re-enables a subscription that a receiver disabled with 410 Gone; returns
/// whether it was disabled. Its pending deliveries, which claims parked at
/// `infinity`, become due now.
pub async fn enable_subscription(
    client: &Client,
    schema: &str,
    subscription: &str,
) -> Result<bool, tokio_postgres::Error> {
    let schema = quote_ident(schema);
    let sql = format!(
        "WITH enabled AS ( \
             DELETE FROM {schema}.disabled_subscriptions WHERE subscription = $1 \
             RETURNING subscription), \
         unparked AS ( \
             UPDATE {schema}.deliveries SET next_attempt_at = now() \
             WHERE subscription = $1 AND status = 'pending' AND next_attempt_at = 'infinity') \
         SELECT count(*) FROM enabled"
    );
    let enabled: i64 = client.query_one(&sql, &[&subscription]).await?.get(0);
    Ok(enabled > 0)
}

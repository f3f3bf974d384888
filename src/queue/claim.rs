//! Claiming due deliveries and recording their attempts.
//!
//! Many delivery processes share one queue. A claim selects due rows with
//! `FOR UPDATE SKIP LOCKED`, so concurrent claimers never take the same row,
//! and in the same statement moves `next_attempt_at` forward by a lease and
//! counts the attempt. A sender that dies mid-request thus leaves a row that
//! comes due again when the lease runs out.
//!
//! Order is kept per (subscription, job). A pending row is claimable only
//! when no older pending row of its subscription shares a job id with it.
//! The table `pending_jobs`, which triggers on `deliveries` keep in step,
//! contains one (subscription, job id, delivery id) row per job id of every
//! pending delivery, so that check is one index probe per job id. So the
//! webhooks about one job reach a subscription in commit order, one at a
//! time, and other jobs are not held up. A row without job ids is never held.
//!
//! A claim examines a window of the oldest due rows, a small multiple of the
//! rows requested, so its cost does not grow with the backlog.
//!
//! The claim also takes the per-endpoint room of the caller: an endpoint is the
//! `host[:port]` of the URL as written, lowercased and without user info, and
//! no more rows of one endpoint are claimed than its room allows.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};

use crate::config::quote_ident;

/// A delivery taken from the queue for one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedDelivery {
    pub id: i64,
    pub webhook_id: String,
    /// Text form of the subscription key, such as `sub_42`.
    pub subscription: String,
    pub url: String,
    pub event: String,
    /// The exact JSON text to POST.
    pub body: String,
    /// Number of this attempt, starting at 1; the claim already counted it.
    pub attempt: i32,
    /// `host[:port]` of `url` as written, lowercased, without user info.
    pub endpoint: String,
}

/// How many more rows of each endpoint a claim may take.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointRooms {
    /// Endpoints whose room differs from `default_room`, such as those with
    /// requests in flight or an open circuit breaker (room 0).
    pub rooms: Vec<(String, i32)>,
    /// Room of every endpoint not in `rooms`.
    pub default_room: i32,
}

/// Next state of a delivery after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextStep {
    /// Accepted by the receiver: status `delivered`.
    Delivered,
    /// Stays `pending`, due again after this delay.
    RetryAfter(Duration),
    /// Given up: status `failed`.
    Failed,
}

/// One finished attempt, for the attempts table and the delivery row.
#[derive(Clone, Debug)]
pub struct AttemptRecord<'a> {
    pub delivery_id: i64,
    /// The attempt number returned by the claim.
    pub attempt: i32,
    pub started_at: SystemTime,
    pub duration: Duration,
    /// HTTP status, when a response arrived.
    pub status: Option<u16>,
    pub response_body: Option<&'a str>,
    pub error: Option<&'a str>,
    pub next: NextStep,
}

/// The claim and record statements of one queue schema, built once, and
/// prepared on one connection by [`DeliveryQueue::prepare`].
#[derive(Clone, Debug)]
pub struct DeliveryQueue {
    /// The queue schema, quoted as an identifier.
    schema: String,
    claim_sql: String,
    record_sql: String,
    disable_sql: String,
    prepared: Option<PreparedStatements>,
}

/// The claim and record statements, prepared on one connection.
#[derive(Clone, Debug)]
struct PreparedStatements {
    /// The claim with a fixed window, so that PostgreSQL can plan it once.
    claim: Statement,
    record: Statement,
}

/// Source of the size of the claim statement's window of due rows.
#[derive(Clone, Copy, Debug)]
enum WindowSize {
    /// As parameter `$6`, computed from each claim's limit.
    Parameter,
    /// As a constant in the statement text.
    Fixed(usize),
}

impl DeliveryQueue {
    /// Builds the statements for the queue tables in `schema`, which is quoted
    /// as an identifier.
    pub fn new(schema: &str) -> DeliveryQueue {
        let schema = quote_ident(schema);
        DeliveryQueue {
            claim_sql: claim_sql(&schema, WindowSize::Parameter),
            record_sql: record_sql(&schema),
            disable_sql: format!(
                "INSERT INTO {schema}.disabled_subscriptions (subscription, reason) \
                 VALUES ($1, $2) ON CONFLICT (subscription) DO NOTHING"
            ),
            prepared: None,
            schema,
        }
    }

    /// Prepares the claim and record statements on `client`, so that each
    /// claim and record is one round trip without parsing. The claim's window
    /// is fixed for claims of up to `max_claim` rows, because with the window
    /// as a parameter PostgreSQL 15 plans every execution anew: its generic
    /// plan, which assumes an unknown limit, joins by a sequential scan of
    /// all deliveries. Use the returned queue only with that connection.
    pub async fn prepare(
        self,
        client: &Client,
        max_claim: usize,
    ) -> Result<DeliveryQueue, tokio_postgres::Error> {
        let window = WindowSize::Fixed(claim_window(max_claim));
        let claim_sql = claim_sql(&self.schema, window);
        let prepared = PreparedStatements {
            claim: client.prepare(&claim_sql).await?,
            record: client.prepare(&self.record_sql).await?,
        };
        Ok(DeliveryQueue {
            prepared: Some(prepared),
            ..self
        })
    }

    /// Claims up to `limit` due deliveries, oldest first, leasing each for
    /// `lease`, with no limit per endpoint. Rows of subscriptions in
    /// `disabled_subscriptions` stay pending and unclaimed.
    pub async fn claim_due(
        &self,
        client: &Client,
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedDelivery>, tokio_postgres::Error> {
        let rooms = EndpointRooms {
            rooms: Vec::new(),
            default_room: i32::MAX,
        };
        self.claim_due_within(client, limit, lease, &rooms).await
    }

    /// Claims like [`DeliveryQueue::claim_due`], taking at most the room of
    /// each endpoint in `rooms`.
    pub async fn claim_due_within(
        &self,
        client: &Client,
        limit: usize,
        lease: Duration,
        rooms: &EndpointRooms,
    ) -> Result<Vec<ClaimedDelivery>, tokio_postgres::Error> {
        let window = i64::try_from(claim_window(limit)).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (endpoints, room_sizes): (Vec<&str>, Vec<i32>) = rooms
            .rooms
            .iter()
            .map(|(endpoint, room)| (endpoint.as_str(), *room))
            .unzip();
        let lease_ms = millis(lease);
        let params: [&(dyn ToSql + Sync); 6] = [
            &limit,
            &lease_ms,
            &endpoints,
            &room_sizes,
            &rooms.default_room,
            &window,
        ];
        let rows = match &self.prepared {
            Some(prepared) => client.query(&prepared.claim, &params[..5]).await?,
            None => client.query(&self.claim_sql, &params).await?,
        };

        let mut claimed: Vec<ClaimedDelivery> = rows
            .iter()
            .map(|row| ClaimedDelivery {
                id: row.get("id"),
                webhook_id: row.get("webhook_id"),
                subscription: row.get("subscription"),
                url: row.get("url"),
                event: row.get("event"),
                body: row.get("body"),
                attempt: row.get("attempts"),
                endpoint: row.get("endpoint"),
            })
            .collect();
        claimed.sort_by_key(|delivery| delivery.id);
        Ok(claimed)
    }

    /// Stores one attempt and moves its delivery on. Returns `false` when the
    /// delivery was not updated, because its lease ran out and a later claim
    /// counted another attempt. The attempt row is stored either way.
    pub async fn record_attempt(
        &self,
        client: &Client,
        record: &AttemptRecord<'_>,
    ) -> Result<bool, tokio_postgres::Error> {
        let applied = self
            .record_attempts(client, std::slice::from_ref(record))
            .await?;
        Ok(applied.first().copied().unwrap_or(false))
    }

    /// Stores several attempts in one statement, like
    /// [`DeliveryQueue::record_attempt`], and returns for each record, in
    /// order, whether its delivery was updated.
    pub async fn record_attempts(
        &self,
        client: &Client,
        records: &[AttemptRecord<'_>],
    ) -> Result<Vec<bool>, tokio_postgres::Error> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let columns = AttemptColumns::new(records);
        let params: [&(dyn ToSql + Sync); 9] = [
            &columns.delivery_ids,
            &columns.attempts,
            &columns.started_at,
            &columns.duration_ms,
            &columns.statuses,
            &columns.response_bodies,
            &columns.errors,
            &columns.next_statuses,
            &columns.retry_ms,
        ];
        let rows = match &self.prepared {
            Some(prepared) => client.query(&prepared.record, &params).await?,
            None => client.query(&self.record_sql, &params).await?,
        };

        let applied: HashSet<(i64, i32)> =
            rows.iter().map(|row| (row.get(0), row.get(1))).collect();
        Ok(records
            .iter()
            .map(|record| applied.contains(&(record.delivery_id, record.attempt)))
            .collect())
    }

    /// Marks a subscription disabled with `reason`; its pending deliveries
    /// stay in the queue unclaimed until the row is deleted.
    pub async fn disable_subscription(
        &self,
        client: &Client,
        subscription: &str,
        reason: &str,
    ) -> Result<(), tokio_postgres::Error> {
        client
            .execute(&self.disable_sql, &[&subscription, &reason])
            .await?;
        Ok(())
    }
}

/// Due rows that a claim of `limit` rows examines, oldest first: enough that
/// held rows and rows of endpoints without room among them rarely leave the
/// claim short, few enough that the hold checks stay cheap.
fn claim_window(limit: usize) -> usize {
    limit
        .saturating_mul(CLAIM_WINDOW_PER_ROW)
        .max(MIN_CLAIM_WINDOW)
}

/// Window rows per requested row; see [`claim_window`].
const CLAIM_WINDOW_PER_ROW: usize = 2;

/// Smallest window, so that a claim of one row still looks past a few held ones.
const MIN_CLAIM_WINDOW: usize = 32;

/// Extracts the endpoint of `d.url`: the authority without user info, lowercased.
const ENDPOINT_SQL: &str = "coalesce(lower(substring(d.url \
     from '^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?([^/?#]*)')), '')";

/// Builds the claim. `window_ids` takes the first `window` due rows in id order
/// from `deliveries_pending_by_id`, whose second column lets the index skip
/// rows that are not due without reading their heap tuples. It selects only
/// the id and orders by both index columns, so the planner picks that index
/// over the primary key, which would read every delivered row before the
/// first pending one while the statistics still count them as pending.
/// It skips the rows of endpoints that have no room (`full_endpoints`: all
/// their requests in flight, or an open circuit breaker), so that a failing
/// endpoint's backlog does not fill the window. `window_rows` then reads
/// those rows. Within that window,
/// `parked` moves the rows of disabled subscriptions to `infinity`, so they
/// stop taking window places until [`crate::queue::admin::enable_subscription`]
/// makes them due again. `ranked` drops the rows that an older pending row of
/// the same subscription holds, with one primary key probe of `pending_jobs`
/// per job id, and numbers the rest per endpoint. This happens outside the
/// locking query, because a locking query cannot contain a window function.
/// `due` then locks the rows within each endpoint's room. It repeats the
/// status and time conditions because PostgreSQL rechecks them on a row that
/// a concurrent claim changed after this statement's snapshot.
///
/// NOTE: the window bounds the rows ranked, not the rows scanned. Skipping a
/// full endpoint's rows reads each of them and evaluates `ENDPOINT_SQL`, so a
/// claim behind a large backlog of such rows costs time in proportion to it.
/// More than `window` held rows at the head, or rows of an endpoint with
/// little room left, still make the rows behind them wait until the head
/// drains.
fn claim_sql(schema: &str, window: WindowSize) -> String {
    let window = match window {
        WindowSize::Parameter => "$6".to_owned(),
        WindowSize::Fixed(rows) => rows.to_string(),
    };
    format!(
        "WITH disabled AS MATERIALIZED ( \
             SELECT coalesce(array_agg(x.subscription), '{{}}') AS subscriptions \
             FROM {schema}.disabled_subscriptions x), \
         full_endpoints AS MATERIALIZED ( \
             SELECT coalesce(array_agg(r.endpoint), '{{}}') AS endpoints \
             FROM unnest($3::text[], $4::int4[]) AS r(endpoint, room) \
             WHERE r.room <= 0), \
         window_ids AS MATERIALIZED ( \
             SELECT d.id FROM {schema}.deliveries d \
             WHERE d.status = 'pending' AND d.next_attempt_at <= now() \
               AND {ENDPOINT_SQL} <> ALL ((SELECT endpoints FROM full_endpoints)::text[]) \
             ORDER BY d.id, d.next_attempt_at \
             LIMIT {window}), \
         window_rows AS MATERIALIZED ( \
             SELECT d.id, d.subscription, d.job_ids, {ENDPOINT_SQL} AS endpoint \
             FROM window_ids i JOIN {schema}.deliveries d ON d.id = i.id), \
         parked AS ( \
             UPDATE {schema}.deliveries d SET next_attempt_at = 'infinity' \
             FROM window_rows w \
             WHERE d.id = w.id \
               AND w.subscription = ANY ((SELECT subscriptions FROM disabled)::text[]) \
               AND d.status = 'pending'), \
         ranked AS MATERIALIZED ( \
             SELECT w.id, w.endpoint, \
                    row_number() OVER (PARTITION BY w.endpoint ORDER BY w.id) AS endpoint_rank \
             FROM window_rows w \
             WHERE w.subscription <> ALL ((SELECT subscriptions FROM disabled)::text[]) \
               AND NOT EXISTS ( \
                   SELECT 1 FROM unnest(w.job_ids) AS j(job_id) \
                   JOIN {schema}.pending_jobs p \
                     ON p.subscription = w.subscription \
                    AND p.job_id = j.job_id \
                    AND p.delivery_id < w.id)), \
         due AS ( \
             SELECT d.id, c.endpoint FROM {schema}.deliveries d \
             JOIN ranked c ON c.id = d.id \
             LEFT JOIN unnest($3::text[], $4::int4[]) AS r(endpoint, room) \
                 ON r.endpoint = c.endpoint \
             WHERE c.endpoint_rank <= coalesce(r.room, $5::int4) \
               AND d.status = 'pending' \
               AND d.next_attempt_at <= now() \
             ORDER BY d.id \
             LIMIT $1 \
             FOR UPDATE OF d SKIP LOCKED) \
         UPDATE {schema}.deliveries d \
         SET attempts = d.attempts + 1, \
             next_attempt_at = now() + $2::bigint * interval '1 millisecond' \
         FROM due WHERE d.id = due.id \
         RETURNING d.id, d.webhook_id, d.subscription, d.url, d.event, d.body, d.attempts, \
                   due.endpoint"
    )
}

/// Builds the statement that stores a batch of attempts, given as parallel
/// arrays, and updates their deliveries. An update only applies while
/// `attempts` still equals the attempt's number, so a sender whose lease ran
/// out cannot overwrite a newer attempt. It returns the (id, attempt) pairs
/// that it applied.
fn record_sql(schema: &str) -> String {
    format!(
        "WITH input AS ( \
             SELECT * FROM unnest($1::int8[], $2::int4[], $3::timestamptz[], $4::int4[], \
                                  $5::int4[], $6::text[], $7::text[], $8::text[], $9::int8[]) \
                 AS t(delivery_id, attempt, started_at, duration_ms, status, response_body, \
                      error, next_status, retry_ms)), \
         attempt AS ( \
             INSERT INTO {schema}.attempts \
                 (delivery_id, attempt, started_at, duration_ms, status, response_body, error) \
             SELECT delivery_id, attempt, started_at, duration_ms, status, response_body, error \
             FROM input \
             ON CONFLICT (delivery_id, attempt) DO NOTHING) \
         UPDATE {schema}.deliveries d \
         SET status = i.next_status, \
             next_attempt_at = CASE WHEN i.retry_ms IS NULL THEN d.next_attempt_at \
                                    ELSE now() + i.retry_ms * interval '1 millisecond' END, \
             delivered_at = CASE WHEN i.next_status = 'delivered' THEN now() END, \
             last_status = i.status, \
             last_error = i.error \
         FROM input i \
         WHERE d.id = i.delivery_id AND d.attempts = i.attempt AND d.status = 'pending' \
         RETURNING d.id, i.attempt"
    )
}

/// The parameters of `record_sql`: one array per column, one element per record.
struct AttemptColumns<'a> {
    delivery_ids: Vec<i64>,
    attempts: Vec<i32>,
    started_at: Vec<SystemTime>,
    duration_ms: Vec<i32>,
    statuses: Vec<Option<i32>>,
    response_bodies: Vec<Option<&'a str>>,
    errors: Vec<Option<&'a str>>,
    next_statuses: Vec<&'static str>,
    retry_ms: Vec<Option<i64>>,
}

impl<'a> AttemptColumns<'a> {
    fn new(records: &[AttemptRecord<'a>]) -> AttemptColumns<'a> {
        let mut columns = AttemptColumns {
            delivery_ids: Vec::with_capacity(records.len()),
            attempts: Vec::with_capacity(records.len()),
            started_at: Vec::with_capacity(records.len()),
            duration_ms: Vec::with_capacity(records.len()),
            statuses: Vec::with_capacity(records.len()),
            response_bodies: Vec::with_capacity(records.len()),
            errors: Vec::with_capacity(records.len()),
            next_statuses: Vec::with_capacity(records.len()),
            retry_ms: Vec::with_capacity(records.len()),
        };
        for record in records {
            let (status, retry_ms) = match record.next {
                NextStep::Delivered => ("delivered", None),
                NextStep::RetryAfter(delay) => ("pending", Some(millis(delay))),
                NextStep::Failed => ("failed", None),
            };
            columns.delivery_ids.push(record.delivery_id);
            columns.attempts.push(record.attempt);
            columns.started_at.push(record.started_at);
            columns
                .duration_ms
                .push(i32::try_from(record.duration.as_millis()).unwrap_or(i32::MAX));
            columns.statuses.push(record.status.map(i32::from));
            columns.response_bodies.push(record.response_body);
            columns.errors.push(record.error);
            columns.next_statuses.push(status);
            columns.retry_ms.push(retry_ms);
        }
        columns
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

//! Prometheus metrics, encoded as OpenMetrics text by `prometheus-client`.
//!
//! The metrics live in one process-wide registry, so the pipeline and the
//! delivery workers update them with a one-line call next to the matching log
//! line. Queue depth and the age of the oldest pending delivery are queried at
//! scrape time by [`super::http`] and stored with [`set_queue_stats`].

use std::sync::{LazyLock, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::health;
use super::lag::LagTracker;
use crate::queue::NextStep;
use crate::replication::Lsn;
use crate::rules::Event;

/// Content type of [`encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    outcome: &'static str,
    subscription: String,
}

/// Every metric of the process.
struct Metrics {
    registry: Registry,
    lag_bytes: Gauge,
    lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    received_lsn: Gauge,
    flushed_lsn: Gauge,
    streaming: Gauge,
    reconnects: Counter,
    events: Family<EventLabels, Counter>,
    deliveries: Family<DeliveryLabels, Counter>,
    delivery_seconds: Histogram,
    queue_pending: Gauge,
    queue_oldest_pending_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    lag: Mutex<LagTracker>,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let metrics = Metrics {
            registry: Registry::default(),
            lag_bytes: Gauge::default(),
            lag_seconds: Gauge::default(),
            received_lsn: Gauge::default(),
            flushed_lsn: Gauge::default(),
            streaming: Gauge::default(),
            reconnects: Counter::default(),
            events: Family::default(),
            deliveries: Family::default(),
            // 5 ms to about 41 s, doubling.
            delivery_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 14)),
            queue_pending: Gauge::default(),
            queue_oldest_pending_seconds: Gauge::default(),
            lag: Mutex::new(LagTracker::default()),
        };
        metrics.register()
    }

    fn register(mut self) -> Metrics {
        let r = &mut self.registry;
        r.register(
            "walhook_replication_lag_bytes",
            "Bytes of WAL between the server's end of WAL and the position walhook confirmed",
            self.lag_bytes.clone(),
        );
        r.register(
            "walhook_replication_lag_seconds",
            "Age of the oldest WAL position not yet confirmed, by the server's send time",
            self.lag_seconds.clone(),
        );
        r.register(
            "walhook_replication_received_lsn",
            "Server end of WAL in the last message received, as a byte position",
            self.received_lsn.clone(),
        );
        r.register(
            "walhook_replication_flushed_lsn",
            "Position last reported to the server as flushed, as a byte position",
            self.flushed_lsn.clone(),
        );
        r.register(
            "walhook_replication_streaming",
            "1 while a replication session streams, 0 otherwise",
            self.streaming.clone(),
        );
        r.register(
            "walhook_replication_reconnects",
            "Replication sessions that failed and were restarted",
            self.reconnects.clone(),
        );
        r.register(
            "walhook_events",
            "Events detected in committed source transactions, by event type",
            self.events.clone(),
        );
        r.register(
            "walhook_deliveries",
            "Delivery attempts by outcome (delivered, retry, failed) and subscription key",
            self.deliveries.clone(),
        );
        r.register(
            "walhook_delivery_duration_seconds",
            "Duration of webhook HTTP requests, from connect to the end of the response",
            self.delivery_seconds.clone(),
        );
        r.register(
            "walhook_queue_pending",
            "Deliveries in the queue with status pending, queried at scrape time",
            self.queue_pending.clone(),
        );
        r.register(
            "walhook_queue_oldest_pending_age_seconds",
            "Age of the oldest pending delivery, queried at scrape time",
            self.queue_oldest_pending_seconds.clone(),
        );
        self
    }

    fn lag(&self) -> MutexGuard<'_, LagTracker> {
        // A panic while holding the lock leaves the samples valid.
        self.lag
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Records a replication session that starts streaming at `start`.
pub fn session_started(start: Lsn) {
    let metrics = &*METRICS;
    metrics.lag().reset();
    metrics.streaming.set(1);
    metrics.flushed_lsn.set(lsn_value(start));
    metrics.received_lsn.set(lsn_value(start));
    metrics.lag_bytes.set(0);
}

/// Records a replication session that failed and will be restarted.
pub fn session_failed() {
    METRICS.streaming.set(0);
    METRICS.reconnects.inc();
}

/// Records an XLogData or keepalive message: the server's end of WAL and its
/// clock (microseconds since 2000-01-01 UTC) when sending.
pub fn wal_received(wal_end: Lsn, server_clock: i64) {
    let metrics = &*METRICS;
    metrics.lag().received(wal_end, server_clock);
    let received = lsn_value(wal_end).max(metrics.received_lsn.get());
    metrics.received_lsn.set(received);
    health::mark_progress();
}

/// Records a standby status update that reported `flushed` with the server's
/// end of WAL at `received`.
pub fn status_sent(received: Lsn, flushed: Lsn) {
    let metrics = &*METRICS;
    metrics.lag().confirmed(flushed, SystemTime::now());
    metrics.flushed_lsn.set(lsn_value(flushed));
    let lag_bytes = received.as_u64().saturating_sub(flushed.as_u64());
    metrics
        .lag_bytes
        .set(i64::try_from(lag_bytes).unwrap_or(i64::MAX));
    health::confirmed(flushed);
    health::mark_progress();
}

/// Counts the events of a committed source transaction.
pub fn events_detected(events: &[Event]) {
    for event in events {
        let labels = EventLabels {
            event: event.kind.as_str(),
        };
        METRICS.events.get_or_create(&labels).inc();
    }
}

/// Counts the outcome of one delivery attempt.
pub fn delivery_recorded(subscription: &str, next: NextStep) {
    let outcome = match next {
        NextStep::Delivered => "delivered",
        NextStep::RetryAfter(_) => "retry",
        NextStep::Failed => "failed",
    };
    let labels = DeliveryLabels {
        outcome,
        subscription: subscription.to_owned(),
    };
    METRICS.deliveries.get_or_create(&labels).inc();
}

/// Records the duration of one webhook request.
pub fn delivery_sent(duration: Duration) {
    METRICS.delivery_seconds.observe(duration.as_secs_f64());
}

/// Stores the queue statistics of a scrape.
pub fn set_queue_stats(pending: i64, oldest_pending_age: Duration) {
    METRICS.queue_pending.set(pending);
    METRICS
        .queue_oldest_pending_seconds
        .set(oldest_pending_age.as_secs_f64());
}

/// Returns the replication lag in bytes at the last status update.
pub fn lag_bytes() -> i64 {
    METRICS.lag_bytes.get()
}

/// Returns the number of pending deliveries at the last scrape or status.
pub fn queue_pending() -> i64 {
    METRICS.queue_pending.get()
}

/// Encodes every metric as OpenMetrics text.
pub fn encode() -> String {
    let metrics = &*METRICS;
    let lag = metrics.lag().lag(SystemTime::now());
    metrics.lag_seconds.set(lag.as_secs_f64());
    let mut text = String::new();
    if let Err(err) = prometheus_client::encoding::text::encode(&mut text, &metrics.registry) {
        tracing::error!(error = %err, "encoding metrics failed");
    }
    text
}

/// LSNs are byte positions below 2^63 in practice; larger values saturate.
fn lsn_value(lsn: Lsn) -> i64 {
    i64::try_from(lsn.as_u64()).unwrap_or(i64::MAX)
}

//! The systemd notification protocol (`sd_notify(3)`), for a `Type=notify`
//! unit: `READY=1` once a replication session streams, `STATUS=` with lag and
//! queue depth, `WATCHDOG=1` while the pipeline makes progress,
//! `RELOADING=1` and `READY=1` around a reload, and `STOPPING=1` when
//! shutdown begins.
//!
//! Every message is a no-op when `NOTIFY_SOCKET` is unset, which is the case
//! outside systemd.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use super::database::{queue_stats, LazyClient};
use super::repeats::{Repeats, REPEAT_INTERVAL};
use super::{health, metrics};

/// Interval between two `STATUS=` lines.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

static READY_SENT: AtomicBool = AtomicBool::new(false);

/// Sends `READY=1`, once per process.
pub fn ready() {
    if !READY_SENT.swap(true, Ordering::Relaxed) {
        send(&[NotifyState::Ready, NotifyState::Status("streaming")]);
    }
}

/// Sends `RELOADING=1` with `MONOTONIC_USEC`, the `CLOCK_MONOTONIC` time of
/// the reload's start, which `Type=notify-reload` (systemd 253 and later)
/// needs to match the notification to its reload request. Returns
/// whether it was sent: before the first `READY=1` nothing is sent, because
/// the `READY=1` that ends a reload would report a start that has not
/// finished.
pub fn reloading() -> bool {
    if !READY_SENT.load(Ordering::Relaxed) {
        return false;
    }
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading configuration"),
        ]),
        Err(err) => {
            tracing::warn!(error = %err, "reading CLOCK_MONOTONIC failed, RELOADING=1 not sent to systemd");
            return false;
        }
    }
    true
}

/// Sends `READY=1` to end a reload that [`reloading`] announced.
pub fn reloaded() {
    send(&[
        NotifyState::Ready,
        NotifyState::Status("configuration reloaded"),
    ]);
}

/// Sends `STOPPING=1`.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping: draining in-flight deliveries"),
    ]);
}

/// Sends `WATCHDOG=1` every half of `WATCHDOG_USEC` while the pipeline has
/// made progress within `WATCHDOG_USEC`, until `shutdown`. Without
/// `WATCHDOG_USEC` (or with a `WATCHDOG_PID` of another process) it returns
/// at once.
///
/// `status_interval` is `source.status_interval`: a status update counts as
/// progress, so an idle stream stays alive only when updates come more often
/// than the watchdog's limit.
pub async fn run_watchdog(status_interval: Duration, shutdown: CancellationToken) {
    let Some(limit) = sd_notify::watchdog_enabled() else {
        return;
    };
    if status_interval * 2 > limit {
        tracing::warn!(
            watchdog_ms = limit.as_millis(),
            status_interval_ms = status_interval.as_millis(),
            "source.status_interval is more than half of WatchdogSec, so an idle stream can miss the watchdog; lower status_interval or raise WatchdogSec"
        );
    }
    let mut ticks = tokio::time::interval(limit / 2);
    let mut starved = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let since = health::since_progress();
        if since < limit {
            send(&[NotifyState::Watchdog]);
            starved = false;
        } else if !starved {
            tracing::warn!(
                since_progress_ms = since.as_millis(),
                "pipeline made no progress, watchdog not fed; systemd restarts walhook after WatchdogSec"
            );
            starved = true;
        }
    }
}

/// Sends a `STATUS=` line every [`STATUS_INTERVAL`] until `shutdown`, when
/// running under systemd.
pub async fn run_status(queue: Arc<LazyClient>, schema: String, shutdown: CancellationToken) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let mut ticks = tokio::time::interval(STATUS_INTERVAL);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let line = status_line(&queue, &schema).await;
        send(&[NotifyState::Status(&line)]);
    }
}

async fn status_line(queue: &LazyClient, schema: &str) -> String {
    let state = match health::streaming() {
        Ok(()) => "streaming".to_owned(),
        Err(reason) => format!("not streaming ({reason})"),
    };
    let queue = match queue_stats(queue, schema).await {
        Ok(stats) => {
            metrics::set_queue_stats(stats.pending, stats.oldest_pending_age);
            format!("{} pending deliveries", stats.pending)
        }
        Err(err) => format!("queue unreachable: {err}"),
    };
    format!("{state}, lag {} bytes, {queue}", metrics::lag_bytes())
}

/// Log lines of failed notifications, one per status update while the
/// socket fails.
static SEND_FAILURES: Repeats = Repeats::new(REPEAT_INTERVAL);

fn send(states: &[NotifyState]) {
    if let Err(err) = sd_notify::notify(states) {
        if let Some(suppressed) = SEND_FAILURES.admit() {
            tracing::warn!(error = %err, suppressed, "sending a notification to systemd failed");
        }
    }
}

//! Process health as `/readyz` and the systemd watchdog see it: whether a
//! replication session streams, whether it is stuck on a transaction it
//! failed to process, why not ready, and when the pipeline last made progress.
//!
//! The state is process-wide, so the pipeline reports it with one-line calls
//! ([`super::replication_started`], [`super::replication_failed`],
//! [`super::replication_blocked`]) and the metric hooks of [`super::metrics`]
//! mark progress and the confirmed position.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use crate::replication::Lsn;

struct Health {
    /// Reference point of `last_progress_ms`.
    started: Instant,
    last_progress_ms: AtomicU64,
    streaming: AtomicBool,
    stopping: AtomicBool,
    /// Reason the pipeline is not streaming, empty while it streams.
    reason: Mutex<String>,
    /// Commit LSN of a transaction that the pipeline failed to process, and
    /// the failure. It outlives reconnections, because each new session
    /// streams until it reaches that transaction again.
    blocked: Mutex<Option<(Lsn, String)>>,
}

static HEALTH: LazyLock<Health> = LazyLock::new(|| Health {
    started: Instant::now(),
    last_progress_ms: AtomicU64::new(0),
    streaming: AtomicBool::new(false),
    stopping: AtomicBool::new(false),
    reason: Mutex::new("replication has not started yet".to_owned()),
    blocked: Mutex::new(None),
});

/// Records that the pipeline made progress: it handled a message, sent a
/// status update, or finished a reconnection attempt.
pub fn mark_progress() {
    let elapsed = HEALTH.started.elapsed().as_millis();
    let elapsed = u64::try_from(elapsed).unwrap_or(u64::MAX);
    HEALTH.last_progress_ms.store(elapsed, Ordering::Relaxed);
}

/// Returns the time since the last progress.
pub fn since_progress() -> Duration {
    let last = Duration::from_millis(HEALTH.last_progress_ms.load(Ordering::Relaxed));
    HEALTH.started.elapsed().saturating_sub(last)
}

/// Records whether a replication session streams, with the reason when not.
pub fn set_streaming(streaming: bool, reason: &str) {
    HEALTH.streaming.store(streaming, Ordering::Relaxed);
    let mut stored = HEALTH
        .reason
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    reason.clone_into(&mut stored);
}

/// Records that shutdown began.
pub fn set_stopping() {
    HEALTH.stopping.store(true, Ordering::Relaxed);
    set_streaming(false, "walhook is shutting down");
}

/// Returns whether shutdown began.
pub fn is_stopping() -> bool {
    HEALTH.stopping.load(Ordering::Relaxed)
}

/// Records that the pipeline failed on the transaction that commits at
/// `commit_lsn`, so it is not ready until [`confirmed`] passes that LSN.
pub fn set_blocked(commit_lsn: Lsn, reason: &str) {
    *lock(&HEALTH.blocked) = Some((commit_lsn, reason.to_owned()));
}

/// Records that every change below `lsn` is stored or needs nothing, which
/// ends a blocked state of an earlier transaction.
pub fn confirmed(lsn: Lsn) {
    let mut blocked = lock(&HEALTH.blocked);
    if blocked.as_ref().is_some_and(|(at, _)| lsn > *at) {
        *blocked = None;
    }
}

/// Returns `Ok` while a session streams past every failed transaction, or
/// why it does not.
pub fn streaming() -> Result<(), String> {
    if !HEALTH.streaming.load(Ordering::Relaxed) {
        return Err(lock(&HEALTH.reason).clone());
    }
    match &*lock(&HEALTH.blocked) {
        Some((_, reason)) => Err(reason.clone()),
        None => Ok(()),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

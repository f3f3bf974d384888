//! Replication lag in time, measured the way PostgreSQL's walsender measures a
//! standby's lag (`LagTracker` in `walsender.c`).
//!
//! Each XLogData and keepalive message carries the server's end of WAL and the
//! server's clock at sending. The tracker keeps those samples in order. When
//! the confirmed position passes a sample, every change the server had written
//! at that moment is stored, so the time since the sample was sent is the lag.
//! While samples wait for confirmation, the age of the oldest one is the lag,
//! so a stuck pipeline shows a growing value.
//!
//! The server clock is compared with the local clock, so clock skew between
//! the two hosts adds to the value.
//!
//! NOTE: a keepalive that arrives inside a transaction may report an end of
//! WAL past that transaction's end. Its sample then waits for the next
//! confirmation beyond it, so on a database that goes idle right after, the
//! value grows until the server's next keepalive.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::replication::Lsn;

/// Seconds from the Unix epoch to 2000-01-01 UTC, the epoch of the
/// replication protocol's timestamps.
const POSTGRES_EPOCH_UNIX_SECONDS: u64 = 946_684_800;

/// Maximum number of samples kept. Past it, the newest sample is replaced, so
/// the oldest samples and the latest end of WAL stay exact.
const MAX_SAMPLES: usize = 4096;

/// Samples of (server end of WAL, server send time) waiting for confirmation.
#[derive(Debug, Default)]
pub struct LagTracker {
    pending: VecDeque<(Lsn, SystemTime)>,
    /// Lag measured when the confirmed position last passed a sample.
    last_measured: Duration,
}

impl LagTracker {
    /// Records that the server had written WAL up to `wal_end` at
    /// `server_clock` (microseconds since 2000-01-01 UTC).
    pub fn received(&mut self, wal_end: Lsn, server_clock: i64) {
        let sent_at = server_time(server_clock);
        let is_full = self.pending.len() >= MAX_SAMPLES;
        match self.pending.back_mut() {
            Some(last) if last.0 >= wal_end => {}
            Some(last) if is_full => *last = (wal_end, sent_at),
            _ => self.pending.push_back((wal_end, sent_at)),
        }
    }

    /// Drops the samples at or below `confirmed` and measures the lag of the
    /// newest one dropped, as of `now`.
    pub fn confirmed(&mut self, confirmed: Lsn, now: SystemTime) {
        let mut newest_passed = None;
        while let Some(&(wal_end, sent_at)) = self.pending.front() {
            if wal_end > confirmed {
                break;
            }
            newest_passed = Some(sent_at);
            self.pending.pop_front();
        }
        if let Some(sent_at) = newest_passed {
            self.last_measured = now.duration_since(sent_at).unwrap_or_default();
        }
    }

    /// Returns the lag as of `now`: the age of the oldest unconfirmed sample,
    /// or the lag measured at the last confirmation when none waits.
    pub fn lag(&self, now: SystemTime) -> Duration {
        match self.pending.front() {
            Some(&(_, sent_at)) => now.duration_since(sent_at).unwrap_or_default(),
            None => self.last_measured,
        }
    }

    /// Forgets every sample, for a new replication session.
    pub fn reset(&mut self) {
        self.pending.clear();
        self.last_measured = Duration::ZERO;
    }
}

/// Converts a protocol timestamp to `SystemTime`; negative values, which a
/// server never sends, become the PostgreSQL epoch.
fn server_time(server_clock: i64) -> SystemTime {
    let since_postgres_epoch = Duration::from_micros(u64::try_from(server_clock).unwrap_or(0));
    UNIX_EPOCH + Duration::from_secs(POSTGRES_EPOCH_UNIX_SECONDS) + since_postgres_epoch
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns the protocol timestamp of `unix_seconds`.
    fn clock(unix_seconds: u64) -> i64 {
        ((unix_seconds - POSTGRES_EPOCH_UNIX_SECONDS) * 1_000_000) as i64
    }

    fn at(unix_seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(unix_seconds)
    }

    const T0: u64 = 1_800_000_000;

    #[test]
    fn lag_is_age_of_oldest_unconfirmed_sample() {
        let mut tracker = LagTracker::default();
        tracker.received(Lsn::from_u64(100), clock(T0));
        tracker.received(Lsn::from_u64(200), clock(T0 + 5));

        assert_eq!(tracker.lag(at(T0 + 7)), Duration::from_secs(7));
    }

    #[test]
    fn confirmation_measures_newest_passed_sample() {
        let mut tracker = LagTracker::default();
        tracker.received(Lsn::from_u64(100), clock(T0));
        tracker.received(Lsn::from_u64(200), clock(T0 + 5));
        tracker.confirmed(Lsn::from_u64(200), at(T0 + 6));

        assert_eq!(
            tracker.lag(at(T0 + 60)),
            Duration::from_secs(1),
            "with nothing pending, the lag stays as measured at confirmation"
        );
    }

    #[test]
    fn partial_confirmation_keeps_later_samples() {
        let mut tracker = LagTracker::default();
        tracker.received(Lsn::from_u64(100), clock(T0));
        tracker.received(Lsn::from_u64(200), clock(T0 + 5));
        tracker.confirmed(Lsn::from_u64(150), at(T0 + 6));

        assert_eq!(tracker.lag(at(T0 + 8)), Duration::from_secs(3));
    }

    #[test]
    fn full_tracker_replaces_newest_sample() {
        let mut tracker = LagTracker::default();
        for i in 0..(MAX_SAMPLES as u64 + 10) {
            tracker.received(Lsn::from_u64(i + 1), clock(T0 + i));
        }
        assert_eq!(tracker.pending.len(), MAX_SAMPLES);
        assert_eq!(
            tracker.pending.back().map(|sample| sample.0),
            Some(Lsn::from_u64(MAX_SAMPLES as u64 + 10)),
            "the newest end of WAL is kept"
        );
    }

    #[test]
    fn repeated_wal_end_adds_no_sample() {
        let mut tracker = LagTracker::default();
        tracker.received(Lsn::from_u64(100), clock(T0));
        tracker.received(Lsn::from_u64(100), clock(T0 + 5));

        assert_eq!(tracker.lag(at(T0 + 5)), Duration::from_secs(5));
    }
}

//! A rate limit for log lines that a lasting condition repeats, such as a
//! claim that fails every second while the queue database is down, or
//! requests without a valid admin token.
//!
//! The first line is logged at once. Further lines within the interval are
//! counted instead, and the next line after the interval is logged with
//! that count, so the log shows that the condition went on.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Interval of the log lines of one repeated condition.
pub const REPEAT_INTERVAL: Duration = Duration::from_secs(60);

/// The state of one repeated log line.
pub struct Repeats {
    interval: Duration,
    /// When the last line was logged, and the lines counted since.
    state: Mutex<Option<(Instant, u64)>>,
}

impl Repeats {
    /// Creates a limit of one line per `interval`.
    pub const fn new(interval: Duration) -> Repeats {
        Repeats {
            interval,
            state: Mutex::new(None),
        }
    }

    /// Returns the number of lines left out since the last one when a line
    /// is due now, or `None` when this one is to be left out.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match state.as_mut() {
            Some((logged_at, skipped)) if now.duration_since(*logged_at) < self.interval => {
                *skipped += 1;
                None
            }
            Some((logged_at, skipped)) => {
                let left_out = *skipped;
                *logged_at = now;
                *skipped = 0;
                Some(left_out)
            }
            None => {
                *state = Some((now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_within_interval_are_counted() {
        let repeats = Repeats::new(Duration::from_secs(60));
        let start = Instant::now();

        assert_eq!(repeats.admit_at(start), Some(0), "the first line is logged");
        assert_eq!(repeats.admit_at(start + Duration::from_secs(1)), None);
        assert_eq!(repeats.admit_at(start + Duration::from_secs(59)), None);
        assert_eq!(
            repeats.admit_at(start + Duration::from_secs(60)),
            Some(2),
            "the line after the interval carries the count"
        );
        assert_eq!(repeats.admit_at(start + Duration::from_secs(61)), None);
    }
}

//! The circuit breaker of one endpoint: after [`FAILURE_THRESHOLD`]
//! consecutive failed attempts, the endpoint gets no requests for a pause that
//! doubles on each reopening, from [`FIRST_PAUSE`] up to [`MAX_PAUSE`].
//!
//! When the pause ends, the breaker is half-open: one probe request may go. A
//! success closes the breaker, and a failure opens it again for a longer
//! pause. The failure of an attempt that started before the breaker opened
//! is ignored, because it shows nothing about the endpoint since then, but
//! its success closes the breaker. The state machine is pure: callers pass the clock.

use std::time::{Duration, Instant};

/// Consecutive failed attempts that open the breaker.
pub const FAILURE_THRESHOLD: u32 = 5;

/// Pause after the breaker opens for the first time.
pub const FIRST_PAUSE: Duration = Duration::from_secs(5);

/// Maximum pause of a breaker that keeps reopening.
pub const MAX_PAUSE: Duration = Duration::from_secs(10 * 60);

/// A change of the breaker that callers log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The breaker opened, or reopened after a failed probe, for `pause`.
    Opened {
        consecutive_failures: u32,
        pause: Duration,
    },
    /// A request succeeded while the breaker was open or half-open.
    Closed,
}

/// State of one endpoint's breaker.
#[derive(Clone, Debug, Default)]
pub struct Breaker {
    consecutive_failures: u32,
    /// Openings since the last close; the pause doubles with each one.
    openings: u32,
    /// When the breaker last opened, and until when it stays open.
    open: Option<(Instant, Instant)>,
}

impl Breaker {
    /// Tells whether no failure is counted and the breaker is closed, so the
    /// state can be dropped.
    pub fn is_idle(&self) -> bool {
        self.consecutive_failures == 0 && self.open.is_none()
    }

    /// Returns how many requests may be in flight at `now`: `limit` when
    /// closed, none while open, and one probe when the pause is over.
    pub fn allowed_in_flight(&self, now: Instant, limit: usize) -> usize {
        match self.open {
            None => limit,
            Some((_, until)) if now < until => 0,
            Some(_) => 1,
        }
    }

    /// Records the outcome of an attempt that started at `started`.
    pub fn record(&mut self, success: bool, started: Instant, now: Instant) -> Option<Transition> {
        if success {
            self.consecutive_failures = 0;
            self.openings = 0;
            return self.open.take().map(|_| Transition::Closed);
        }

        match self.open {
            Some((opened_at, _)) if started < opened_at => None,
            Some((_, until)) if now < until => None,
            Some(_) => {
                self.consecutive_failures += 1;
                Some(self.open_now(now))
            }
            None => {
                self.consecutive_failures += 1;
                if self.consecutive_failures < FAILURE_THRESHOLD {
                    return None;
                }
                Some(self.open_now(now))
            }
        }
    }

    fn open_now(&mut self, now: Instant) -> Transition {
        let doublings = self.openings.min(16);
        let pause = FIRST_PAUSE.saturating_mul(1 << doublings).min(MAX_PAUSE);
        self.openings += 1;
        self.open = Some((now, now + pause));
        Transition::Opened {
            consecutive_failures: self.consecutive_failures,
            pause,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail_times(breaker: &mut Breaker, times: u32, now: Instant) -> Option<Transition> {
        let mut last = None;
        for _ in 0..times {
            last = breaker.record(false, now, now);
        }
        last
    }

    #[test]
    fn opens_after_threshold_failures() {
        let now = Instant::now();
        let mut breaker = Breaker::default();
        assert_eq!(fail_times(&mut breaker, FAILURE_THRESHOLD - 1, now), None);
        assert_eq!(breaker.allowed_in_flight(now, 8), 8, "still closed");

        let opened = breaker.record(false, now, now);
        assert_eq!(
            opened,
            Some(Transition::Opened {
                consecutive_failures: FAILURE_THRESHOLD,
                pause: FIRST_PAUSE
            })
        );
        assert_eq!(breaker.allowed_in_flight(now, 8), 0, "open");
    }

    #[test]
    fn success_resets_the_count() {
        let now = Instant::now();
        let mut breaker = Breaker::default();
        fail_times(&mut breaker, FAILURE_THRESHOLD - 1, now);
        assert_eq!(breaker.record(true, now, now), None, "closed stays closed");
        assert_eq!(fail_times(&mut breaker, FAILURE_THRESHOLD - 1, now), None);
        assert!(!breaker.is_idle(), "failures are counted");
    }

    #[test]
    fn half_open_allows_one_probe() {
        let now = Instant::now();
        let mut breaker = Breaker::default();
        fail_times(&mut breaker, FAILURE_THRESHOLD, now);
        let later = now + FIRST_PAUSE;
        assert_eq!(breaker.allowed_in_flight(later, 8), 1);
    }

    #[test]
    fn failed_probe_doubles_the_pause() {
        let now = Instant::now();
        let mut breaker = Breaker::default();
        fail_times(&mut breaker, FAILURE_THRESHOLD, now);
        let probe = now + FIRST_PAUSE;
        let reopened = breaker.record(false, probe, probe);
        assert_eq!(
            reopened,
            Some(Transition::Opened {
                consecutive_failures: FAILURE_THRESHOLD + 1,
                pause: FIRST_PAUSE * 2
            })
        );
        assert_eq!(breaker.allowed_in_flight(probe + FIRST_PAUSE, 8), 0);
    }

    #[test]
    fn pause_is_capped() {
        let mut now = Instant::now();
        let mut breaker = Breaker::default();
        fail_times(&mut breaker, FAILURE_THRESHOLD, now);
        let mut last = None;
        for _ in 0..30 {
            now += MAX_PAUSE;
            last = breaker.record(false, now, now);
        }
        assert_eq!(
            last,
            Some(Transition::Opened {
                consecutive_failures: FAILURE_THRESHOLD + 30,
                pause: MAX_PAUSE
            })
        );
    }

    #[test]
    fn failures_while_open_are_ignored() {
        let now = Instant::now();
        let mut breaker = Breaker::default();
        fail_times(&mut breaker, FAILURE_THRESHOLD, now);
        let early = now - Duration::from_secs(1);
        let after_pause = now + FIRST_PAUSE * 3;
        assert_eq!(
            breaker.record(false, early, after_pause),
            None,
            "an attempt started before the opening is no probe"
        );
        assert_eq!(
            breaker.record(false, now, now + Duration::from_secs(1)),
            None,
            "a failure during the pause does not extend it"
        );
        assert_eq!(breaker.allowed_in_flight(after_pause, 8), 1);
    }

    #[test]
    fn success_closes_and_resets() {
        let now = Instant::now();
        let mut breaker = Breaker::default();
        fail_times(&mut breaker, FAILURE_THRESHOLD, now);
        let probe = now + FIRST_PAUSE;
        assert_eq!(breaker.record(true, probe, probe), Some(Transition::Closed));
        assert!(breaker.is_idle());
        assert_eq!(breaker.allowed_in_flight(probe, 8), 8);
        assert_eq!(
            fail_times(&mut breaker, FAILURE_THRESHOLD, probe),
            Some(Transition::Opened {
                consecutive_failures: FAILURE_THRESHOLD,
                pause: FIRST_PAUSE
            }),
            "the pause starts over after a close"
        );
    }
}

//! The retry decision: what one HTTP attempt means for its delivery, and how
//! long to wait before the next one.
//!
//! Both functions are pure, so the worker only supplies the outcome, the
//! schedule and a random jitter. Redirects are not followed, so a 3xx counts
//! as a failed attempt like any non-2xx status other than 410 Gone.

use std::time::{Duration, SystemTime};

use chrono::DateTime;

/// Largest share by which jitter moves a scheduled delay, up or down.
pub const JITTER_RATIO: f64 = 0.2;

/// Longest `Retry-After` that is honored; longer values are cut to this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// Outcome of one HTTP attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptResult {
    /// The receiver responded with this HTTP status code.
    Status(u16),
    /// The request did not complete within `delivery.timeout`.
    TimedOut,
    /// No response: DNS, a rejected target address, connect, TLS or I/O failure.
    ConnectionFailed,
}

/// Next action for a delivery after an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The receiver accepted the webhook.
    Delivered,
    /// Try again later, unless the retry schedule is used up.
    Retry,
    /// The receiver responded 410 Gone, so sending to this subscription stops.
    Disable,
}

/// Classifies one attempt: 2xx is delivered, 410 disables the subscription,
/// and every other status, a timeout or a connection failure is retried.
pub fn classify(result: AttemptResult) -> Decision {
    match result {
        AttemptResult::Status(code) if (200..300).contains(&code) => Decision::Delivered,
        AttemptResult::Status(410) => Decision::Disable,
        AttemptResult::Status(_) | AttemptResult::TimedOut | AttemptResult::ConnectionFailed => {
            Decision::Retry
        }
    }
}

/// Returns the delay before the next attempt, or `None` when the delivery has
/// used up its schedule and is failed.
///
/// `attempts_made` counts the attempts so far, this one included, so after
/// attempt `n` the delay is `schedule[n - 1]`. `jitter` is a number in
/// `[-1, 1]` that moves the delay by up to [`JITTER_RATIO`] either way. A
/// `Retry-After` of the receiver replaces the jittered delay when it is
/// longer, cut to [`MAX_RETRY_AFTER`].
pub fn next_delay(
    attempts_made: u32,
    schedule: &[Duration],
    retry_after: Option<Duration>,
    jitter: f64,
) -> Option<Duration> {
    let index = usize::try_from(attempts_made.checked_sub(1)?).ok()?;
    let step = *schedule.get(index)?;

    let factor = 1.0 + JITTER_RATIO * jitter.clamp(-1.0, 1.0);
    let jittered = step.mul_f64(factor);

    match retry_after {
        Some(requested) => Some(jittered.max(requested.min(MAX_RETRY_AFTER))),
        None => Some(jittered),
    }
}

/// Parses a `Retry-After` header value (RFC 9110 section 10.2.3): delay
/// seconds or an HTTP-date, measured from `now`. A date in the past means no
/// wait. Returns `None` for anything else.
///
/// NOTE: only the IMF-fixdate form of HTTP-date is parsed; the obsolete
/// RFC 850 and asctime forms are ignored, which falls back to the schedule.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }

    let date = DateTime::parse_from_rfc2822(value).ok()?;
    let at = SystemTime::from(date);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn success_statuses_are_delivered() {
        for code in [200, 201, 202, 204, 299] {
            assert_eq!(
                classify(AttemptResult::Status(code)),
                Decision::Delivered,
                "status {code}"
            );
        }
    }

    #[test]
    fn gone_disables() {
        assert_eq!(classify(AttemptResult::Status(410)), Decision::Disable);
    }

    #[test]
    fn failures_are_retried() {
        for code in [
            100, 301, 302, 304, 400, 401, 404, 409, 429, 500, 502, 503, 599,
        ] {
            assert_eq!(
                classify(AttemptResult::Status(code)),
                Decision::Retry,
                "status {code}"
            );
        }
        assert_eq!(classify(AttemptResult::TimedOut), Decision::Retry);
        assert_eq!(classify(AttemptResult::ConnectionFailed), Decision::Retry);
    }

    #[test]
    fn delay_follows_schedule() {
        let schedule = [secs(5), secs(300)];
        assert_eq!(next_delay(1, &schedule, None, 0.0), Some(secs(5)));
        assert_eq!(next_delay(2, &schedule, None, 0.0), Some(secs(300)));
    }

    #[test]
    fn schedule_used_up_gives_none() {
        let schedule = [secs(5), secs(300)];
        assert_eq!(next_delay(3, &schedule, None, 0.0), None);
        assert_eq!(
            next_delay(1, &[], None, 0.0),
            None,
            "empty schedule: one attempt"
        );
        assert_eq!(
            next_delay(0, &schedule, None, 0.0),
            None,
            "zero attempts is invalid"
        );
    }

    #[test]
    fn jitter_stays_within_ratio() {
        let schedule = [secs(100)];
        assert_eq!(next_delay(1, &schedule, None, 1.0), Some(secs(120)));
        assert_eq!(next_delay(1, &schedule, None, -1.0), Some(secs(80)));
        assert_eq!(
            next_delay(1, &schedule, None, 7.0),
            Some(secs(120)),
            "jitter outside [-1, 1] is clamped"
        );
    }

    #[test]
    fn longer_retry_after_wins() {
        let schedule = [secs(5)];
        assert_eq!(
            next_delay(1, &schedule, Some(secs(60)), 0.0),
            Some(secs(60))
        );
    }

    #[test]
    fn shorter_retry_after_keeps_schedule() {
        let schedule = [secs(300)];
        assert_eq!(
            next_delay(1, &schedule, Some(secs(1)), 0.0),
            Some(secs(300))
        );
    }

    #[test]
    fn retry_after_is_capped() {
        let schedule = [secs(5)];
        let delay = next_delay(1, &schedule, Some(secs(30 * 24 * 3600)), 0.0);
        assert_eq!(delay, Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn retry_after_does_not_revive_used_up_schedule() {
        assert_eq!(next_delay(2, &[secs(5)], Some(secs(60)), 0.0), None);
    }

    #[test]
    fn retry_after_parses_seconds() {
        let now = SystemTime::UNIX_EPOCH;
        assert_eq!(parse_retry_after(" 120 ", now), Some(secs(120)));
    }

    #[test]
    fn retry_after_parses_http_date() {
        // Wed, 21 Oct 2015 07:28:00 GMT is 1445412480 seconds after the epoch.
        let now = SystemTime::UNIX_EPOCH + secs(1_445_412_480 - 90);
        let parsed = parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now);
        assert_eq!(parsed, Some(secs(90)));
    }

    #[test]
    fn retry_after_in_past_is_zero() {
        let now = SystemTime::UNIX_EPOCH + secs(1_445_412_480 + 10);
        let parsed = parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now);
        assert_eq!(parsed, Some(Duration::ZERO));
    }

    #[test]
    fn retry_after_rejects_garbage() {
        let now = SystemTime::UNIX_EPOCH;
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}

//! Fault injection for the crash and fault tests.
//!
//! The environment variable `WALHOOK_FAILPOINT` arms named points in the
//! code, as a comma-separated list of `POINT[=ACTION][@N]`:
//!
//! - `abort` (the default) ends the process as `kill -9` would, without
//!   running destructors or sending a final status update;
//! - `panic` panics in the task that reached the point;
//! - `error` makes [`hit`] return an [`InjectedError`].
//!
//! With `@N` the action runs only the Nth time the process reaches the point,
//! counting from 1, so it fires once per process. Without `@N` it runs every
//! time. An example is `route-transaction=panic@3,decode-message=error@40`.
//! Operators never set the variable.
//!
//! Points: `decode-message` (each XLogData message, before decoding),
//! `route-transaction` (each committed transaction, before routing its
//! events) and `after-queue-commit` (after a queue transaction commits,
//! before its position is confirmed).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// The error that an armed `error` failpoint returns.
#[derive(Debug, thiserror::Error)]
#[error("failpoint `{point}` injected an error")]
pub struct InjectedError {
    pub point: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Abort,
    Panic,
    Error,
}

#[derive(Debug)]
struct Armed {
    point: String,
    action: Action,
    /// The hit, counting from 1, on which the action runs; `None` for every hit.
    nth: Option<u64>,
    hits: AtomicU64,
}

/// Runs the action armed for `point`, if any: aborts, panics, or returns an
/// [`InjectedError`]. Returns `Ok` when `point` is not armed.
pub fn hit(point: &str) -> Result<(), InjectedError> {
    static ARMED: OnceLock<Vec<Armed>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| match std::env::var("WALHOOK_FAILPOINT") {
        Ok(spec) => parse_spec(&spec),
        Err(_) => Vec::new(),
    });
    let Some(entry) = armed.iter().find(|entry| entry.point == point) else {
        return Ok(());
    };
    let hits = entry.hits.fetch_add(1, Ordering::Relaxed) + 1;
    if entry.nth.is_some_and(|nth| nth != hits) {
        return Ok(());
    }
    match entry.action {
        Action::Abort => {
            tracing::error!(point, hits, "failpoint reached, aborting");
            std::process::abort();
        }
        Action::Panic => {
            tracing::error!(point, hits, "failpoint reached, panicking");
            panic!("failpoint `{point}` panicked on hit {hits}");
        }
        Action::Error => {
            tracing::error!(point, hits, "failpoint reached, returning an error");
            Err(InjectedError {
                point: point.to_owned(),
            })
        }
    }
}

/// Parses `WALHOOK_FAILPOINT`, logging and leaving out each invalid entry.
fn parse_spec(spec: &str) -> Vec<Armed> {
    let mut armed = Vec::new();
    for entry in spec.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        match parse_entry(entry) {
            Some(entry) => armed.push(entry),
            None => tracing::error!(
                entry,
                "invalid WALHOOK_FAILPOINT entry ignored; expected POINT[=abort|panic|error][@N]"
            ),
        }
    }
    armed
}

fn parse_entry(entry: &str) -> Option<Armed> {
    let (rest, nth) = match entry.split_once('@') {
        Some((rest, nth)) => (rest, Some(nth.parse::<u64>().ok().filter(|n| *n > 0)?)),
        None => (entry, None),
    };
    let (point, action) = match rest.split_once('=') {
        Some((point, "abort")) => (point, Action::Abort),
        Some((point, "panic")) => (point, Action::Panic),
        Some((point, "error")) => (point, Action::Error),
        Some(_) => return None,
        None => (rest, Action::Abort),
    };
    if point.is_empty() {
        return None;
    }
    Some(Armed {
        point: point.to_owned(),
        action,
        nth,
        hits: AtomicU64::new(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_point_aborts_every_time() {
        let armed = parse_entry("after-queue-commit").expect("valid entry");
        assert_eq!(armed.point, "after-queue-commit");
        assert_eq!(armed.action, Action::Abort);
        assert_eq!(armed.nth, None);
    }

    #[test]
    fn action_and_hit_number_parse() {
        let armed = parse_spec("route-transaction=panic@3, decode-message=error@40");
        assert_eq!(armed.len(), 2, "both entries armed");
        assert_eq!(armed[0].point, "route-transaction");
        assert_eq!(armed[0].action, Action::Panic);
        assert_eq!(armed[0].nth, Some(3));
        assert_eq!(armed[1].point, "decode-message");
        assert_eq!(armed[1].action, Action::Error);
        assert_eq!(armed[1].nth, Some(40));
    }

    #[test]
    fn invalid_entries_are_left_out() {
        for entry in ["=panic", "point=explode", "point@0", "point@x"] {
            assert!(parse_entry(entry).is_none(), "`{entry}` is rejected");
        }
    }
}

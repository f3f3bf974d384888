//! Fault injection for crash tests.
//!
//! When the environment variable `WALHOOK_FAILPOINT` names a point, the process
//! aborts there, as `kill -9` would, without running destructors or sending a
//! final status update. Tests use it to crash at an exact step; operators never
//! set it.

use std::sync::OnceLock;

/// Aborts the process if `WALHOOK_FAILPOINT` names `point`.
pub fn hit(point: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("WALHOOK_FAILPOINT").ok());
    if armed.as_deref() == Some(point) {
        tracing::error!(point, "failpoint reached, aborting");
        std::process::abort();
    }
}

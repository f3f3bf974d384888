//! Operations: logging, fault injection for tests.

pub mod failpoint;
pub mod logging;

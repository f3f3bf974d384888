//! The streaming replication connection to PostgreSQL.

mod lsn;

pub use lsn::{Lsn, ParseLsnError};

//! The durable queue (outbox) in PostgreSQL, in its own schema.

pub mod admin;
mod claim;
mod outbox;

pub use claim::{AttemptRecord, ClaimedDelivery, DeliveryQueue, EndpointRooms, NextStep};
pub use outbox::{Outbox, OutboxError, Progress};

use crate::config::quote_ident;

/// SQL that creates the queue tables; `{schema}` stands for the quoted schema name.
pub const SCHEMA_SQL: &str = include_str!("schema.sql");

/// Returns the statements that create the queue in `schema`; they are idempotent.
pub fn schema_sql(schema: &str) -> String {
    SCHEMA_SQL.replace("{schema}", &quote_ident(schema))
}

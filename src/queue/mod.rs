//! The durable queue (outbox) in PostgreSQL.

/// SQL that creates the queue tables; `{schema}` stands for the quoted schema name.
pub const SCHEMA_SQL: &str = include_str!("schema.sql");

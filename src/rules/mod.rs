//! Rules: from row changes to domain events.
//!
//! Each table role has one file whose functions are pure: a row change and the
//! table's column mapping in, events out. Child tables (chats, hes_scores,
//! tickets) also take the job they belong to, looked up by the pipeline.

pub mod chats;
mod column;
mod event;
pub mod hes_scores;
pub mod jobs;
pub mod ping;
pub mod tickets;
pub mod values;

pub use column::Side;
pub use event::{Audience, Event, JobInfo};

use crate::changes::RowError;

/// A row change that cannot be turned into its events.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error(transparent)]
    Row(#[from] RowError),
    #[error("column `{column}` of table `{table}`: {source}")]
    Value {
        table: String,
        column: String,
        source: values::ValueError,
    },
    #[error("column `{column}` of table `{table}` is NULL but identifies the row; map a NOT NULL column in config.toml")]
    NullId { table: String, column: String },
}

#[cfg(test)]
mod tests;

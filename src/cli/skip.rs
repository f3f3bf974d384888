//! `walhook skip`: marks one source transaction, by the LSN of its commit, as
//! one that raises no webhook.
//!
//! A change that cannot be turned into its events (a watched column dropped,
//! a value of an unexpected format) stops the stream before that transaction,
//! so nothing after it is confirmed. When the operator decides its webhooks
//! can be lost, this records the decision; the running daemon reads it when
//! its next session starts.

use std::path::Path;

use anyhow::Context;

use crate::config::quote_ident;
use crate::replication::Lsn;

/// Records that the transaction committed at `lsn` is to be skipped.
pub async fn run(path: &Path, lsn: &str, reason: &str) -> anyhow::Result<()> {
    let config = super::load_config(path)?;
    let lsn: Lsn = lsn.parse()?;
    let client = crate::db::connect(&config.queue_postgres()?, "queue")
        .await
        .context("cannot connect to the queue database")?;
    let sql = format!(
        "INSERT INTO {}.skipped_transactions (slot, commit_lsn, reason)
         VALUES ($1, $2::text::pg_lsn, $3)
         ON CONFLICT (slot, commit_lsn) DO UPDATE SET reason = excluded.reason",
        quote_ident(&config.queue.schema)
    );
    client
        .execute(&sql, &[&config.source.slot, &lsn.to_string(), &reason])
        .await
        .with_context(|| {
            format!("cannot record transaction `{lsn}` as skipped; run `walhook setup` first")
        })?;
    println!(
        "transaction `{lsn}` of slot `{}` will be skipped; restart walhook or wait for its next reconnect",
        config.source.slot
    );
    Ok(())
}

//! `walhook ping`: requests a PING from the command line.
//!
//! The command writes the same transactional logical decoding message as the
//! application and the admin API, so the running daemon sends the webhook and
//! its webhook-id derives from the message's LSN like every other webhook.

use std::path::Path;

use crate::config::Config;
use crate::ops::database::{emit_ping, LazyClient};

/// Writes the PING request for `jobs` to the application database.
pub async fn run(path: &Path, subscription: i64, jobs: &[i64]) -> anyhow::Result<()> {
    let config: Config = super::load_config(path)?;
    let source = LazyClient::new(config.source_postgres()?, "application");
    let lsn = emit_ping(&source, &config.subscriptions, subscription, jobs).await?;
    println!(
        "PING requested for subscription {subscription}, {} job(s), at LSN {lsn}; the running daemon sends it",
        jobs.len()
    );
    Ok(())
}

//! The replication slot at the start of a session: its confirmed position,
//! and what to do when it is missing or was invalidated.
//!
//! PostgreSQL 15 invalidates a slot whose retained WAL exceeds
//! `max_slot_wal_keep_size` (`wal_status = 'lost'`): the changes it held back
//! are gone, so walhook stops with an error naming the gap unless the operator
//! allowed re-creating the slot.

use tokio_postgres::Client;

use super::PipelineError;
use crate::config::Config;
use crate::queue::Progress;
use crate::replication::Lsn;

/// Returns the slot's confirmed position, creating the slot when it is
/// missing (as `walhook setup` would) and handling an invalidated one.
///
/// A missing slot is created without asking only while the queue contains no
/// progress (`stored`). Once walhook has read from a slot, a missing one
/// means that the changes since `stored` are gone, as with an invalidated
/// slot, and the same setting decides.
pub async fn prepare(
    client: &Client,
    config: &Config,
    stored: Option<Progress>,
) -> Result<Lsn, PipelineError> {
    let slot = &config.source.slot;
    let row = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text, wal_status, plugin::text
             FROM pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await
        .map_err(PipelineError::Source)?;
    let Some(row) = row else {
        return recreate_missing(client, config, stored).await;
    };
    let confirmed = parse_lsn(row.get(0));
    let wal_status: Option<String> = row.get(1);
    let plugin: Option<String> = row.get(2);
    if plugin.as_deref() != Some("pgoutput") {
        return Err(PipelineError::SlotPlugin {
            slot: slot.clone(),
            plugin: plugin.unwrap_or_default(),
        });
    }
    if wal_status.as_deref() != Some("lost") {
        return Ok(confirmed);
    }
    if !config.replication.recreate_invalidated_slot {
        return Err(PipelineError::SlotInvalidated {
            slot: slot.clone(),
            confirmed,
            current: current_wal_lsn(client).await?,
        });
    }
    drop_slot(client, slot).await?;
    let lsn = create(client, slot).await?;
    tracing::error!(
        slot = %slot,
        gap_start = %confirmed,
        gap_end = %lsn,
        "replication slot was invalidated and is re-created; changes committed in the gap are not delivered"
    );
    Ok(lsn)
}

async fn recreate_missing(
    client: &Client,
    config: &Config,
    stored: Option<Progress>,
) -> Result<Lsn, PipelineError> {
    let slot = &config.source.slot;
    let Some(stored) = stored else {
        let lsn = create(client, slot).await?;
        tracing::warn!(slot = %slot, lsn = %lsn, "replication slot was missing and is created; changes committed before it are not delivered");
        return Ok(lsn);
    };
    if !config.replication.recreate_invalidated_slot {
        return Err(PipelineError::SlotDropped {
            slot: slot.clone(),
            stored: stored.end_lsn,
            current: current_wal_lsn(client).await?,
        });
    }
    let lsn = create(client, slot).await?;
    tracing::error!(
        slot = %slot,
        gap_start = %stored.end_lsn,
        gap_end = %lsn,
        "replication slot was dropped and is re-created; changes committed in the gap are not delivered"
    );
    Ok(lsn)
}

async fn create(client: &Client, slot: &str) -> Result<Lsn, PipelineError> {
    let row = client
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .map_err(PipelineError::Source)?;
    Ok(parse_lsn(row.get(0)))
}

async fn current_wal_lsn(client: &Client) -> Result<Lsn, PipelineError> {
    let row = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .map_err(PipelineError::Source)?;
    Ok(parse_lsn(row.get(0)))
}

async fn drop_slot(client: &Client, slot: &str) -> Result<(), PipelineError> {
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .map_err(PipelineError::Source)?;
    Ok(())
}

fn parse_lsn(text: Option<String>) -> Lsn {
    text.and_then(|text| text.parse().ok()).unwrap_or(Lsn::ZERO)
}

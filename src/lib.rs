//! walhook turns PostgreSQL logical replication changes of a job-management
//! application into signed webhooks.
//!
//! The pipeline, one module per stage: [`replication`] reads the WAL stream,
//! [`pgoutput`] decodes it, [`changes`] assembles row changes per transaction,
//! [`rules`] turns them into domain events, [`payload`] gives them their
//! documented JSON shape, [`routing`] finds the subscriptions, [`queue`] stores
//! the deliveries durably and [`delivery`] sends them. [`config`], [`ops`] and
//! [`cli`] sit beside it.

pub mod config;
pub mod payload;
pub mod queue;
pub mod replication;
pub mod routing;

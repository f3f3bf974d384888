//! walhook turns PostgreSQL logical replication changes of a job-management
//! application into signed webhooks.
//!
//! The pipeline, one module per stage: [`replication`] reads the WAL stream,
//! [`pgoutput`] decodes it, [`changes`] assembles row changes, [`rules`] turns
//! them into domain events, [`payload`] gives them their documented JSON
//! shape, [`routing`] finds the subscriptions, [`queue`] stores the deliveries
//! durably and [`delivery`] sends them. [`pipeline`] wires the stages together;
//! [`config`], [`ops`], [`cli`] and [`demo`] sit beside it.

pub mod changes;
pub mod cli;
pub mod config;
pub mod db;
pub mod delivery;
pub mod demo;
pub mod ops;
pub mod payload;
pub mod pgoutput;
pub mod pipeline;
pub mod queue;
pub mod replication;
pub mod routing;
pub mod rules;
pub mod tls;

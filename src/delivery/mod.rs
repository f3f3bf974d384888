//! Delivery: sending the queued webhooks to their receivers.
//!
//! [`worker`] claims due rows from the queue, and [`recorder`] stores the
//! finished attempts in batches.
//! [`http`] sends one signed POST through a client whose resolver applies the
//! SSRF policy of [`guard`]. [`signing`] computes Standard Webhooks
//! signatures, and [`retry`] decides what a response means for the delivery.
//! [`endpoints`] bounds the requests in flight per endpoint and keeps the
//! [`breaker`] that pauses an endpoint whose attempts keep failing.
//! Delivery is at least once: the `webhook-id` is the same on every attempt,
//! so receivers deduplicate on it.

pub mod breaker;
pub mod endpoints;
pub mod guard;
pub mod http;
pub mod recorder;
pub mod retry;
pub mod settings;
pub mod signing;
pub mod worker;

pub use guard::{TargetPolicy, TargetRejected};
pub use http::{AttemptReport, HttpError, WebhookRequest, WebhookSender};
pub use retry::{classify, next_delay, AttemptResult, Decision};
pub use signing::{parse_secrets, signature_header, SigningError, SigningKey};
pub use worker::DeliveryWorkers;

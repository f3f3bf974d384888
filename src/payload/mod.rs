//! The documented JSON payloads of every webhook.

mod kind;

pub use kind::EventKind;

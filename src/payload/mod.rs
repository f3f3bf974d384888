//! The documented JSON payloads of every webhook.
//!
//! A webhook body is `{"event": NAME, "payload": {ARRAY_KEY: [ITEM, …]}}`,
//! with the array key of its kind (`jobs`, `data`, `hesData`, `tickets`).
//! Keys keep the order of the application's documentation.

mod json;
mod kind;

pub use json::{JsonItem, ObjectWriter};
pub use kind::EventKind;

/// Returns the body of one webhook of `kind` carrying `items`.
pub fn webhook_body<'a>(kind: EventKind, items: impl IntoIterator<Item = &'a JsonItem>) -> String {
    json::envelope(kind.as_str(), kind.array_key(), items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_documented_envelope() {
        let item = ObjectWriter::new().integer("jobId", 1).finish();
        let body = webhook_body(EventKind::HesScoreObtained, [&item]);
        assert_eq!(
            body,
            r#"{"event":"HES_SCORE_OBTAINED","payload":{"hesData":[{"jobId":1}]}}"#
        );
    }
}

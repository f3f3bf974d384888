//! The documented JSON payloads of every webhook.
//!
//! A webhook body is `{"event": NAME, "payload": {ARRAY_KEY: [ITEM, …]}}`,
//! with the array key of its kind (`jobs`, `data`, `hesData`, `tickets`).
//! Keys keep the order of the application's documentation.

mod kind;

pub use kind::EventKind;

use serde_json::{json, Map, Value};

/// Returns the body of one webhook of `kind` carrying `items`.
pub fn webhook_body(kind: EventKind, items: &[Value]) -> String {
    let mut payload = Map::new();
    payload.insert(kind.array_key().to_owned(), Value::Array(items.to_vec()));
    json!({ "event": kind.as_str(), "payload": payload }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_documented_envelope() {
        let body = webhook_body(EventKind::HesScoreObtained, &[json!({"jobId": 1})]);
        assert_eq!(
            body,
            r#"{"event":"HES_SCORE_OBTAINED","payload":{"hesData":[{"jobId":1}]}}"#
        );
    }
}

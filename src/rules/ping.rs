//! PING requests: an administrator picks jobs and a subscription, and walhook
//! sends that subscription the jobs' ids.
//!
//! The application requests a PING inside its own transaction with
//! `pg_logical_emit_message(true, 'walhook', '{"event":"PING","subscription":7,"jobs":[42161]}')`,
//! so the webhook goes out only if that transaction commits.

use serde::Deserialize;

use super::event::{Audience, Event};
use crate::payload::{EventKind, ObjectWriter};
use crate::routing::SubscriptionKey;

/// Prefix of the logical messages that walhook reads.
pub const MESSAGE_PREFIX: &str = "walhook";

/// A logical message that is not a valid PING request.
#[derive(Debug, thiserror::Error)]
pub enum PingError {
    #[error("invalid walhook message `{content}`: {reason}; send {{\"event\":\"PING\",\"subscription\":ID,\"jobs\":[JOB_ID, …]}}")]
    Invalid { content: String, reason: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PingRequest {
    event: String,
    subscription: i64,
    jobs: Vec<JobRef>,
}

/// A job id given as a number or a string.
#[derive(Deserialize)]
#[serde(untagged)]
enum JobRef {
    Number(i64),
    Text(String),
}

/// Returns one PING item per job of the request, all for its subscription.
pub fn events_from_message(content: &[u8]) -> Result<Vec<Event>, PingError> {
    let invalid = |reason: String| PingError::Invalid {
        content: String::from_utf8_lossy(content).chars().take(200).collect(),
        reason,
    };
    let request: PingRequest =
        serde_json::from_slice(content).map_err(|err| invalid(err.to_string()))?;
    if request.event != EventKind::Ping.as_str() {
        return Err(invalid(format!(
            "event `{}` cannot be requested, only `PING`",
            request.event
        )));
    }
    let key = SubscriptionKey::App(request.subscription);
    request
        .jobs
        .into_iter()
        .map(|job| ping_event(&key, job).map_err(invalid))
        .collect()
}

/// Returns one PING item for a job of a request made outside the database,
/// through the CLI or the admin API.
pub fn event_for_job(subscription: SubscriptionKey, job_id: i64) -> Event {
    Event {
        kind: EventKind::Ping,
        audience: Audience::Subscription(subscription),
        job_ids: vec![job_id],
        item: ObjectWriter::new()
            .string("id", Some(&job_id.to_string()))
            .finish(),
    }
}

fn ping_event(key: &SubscriptionKey, job: JobRef) -> Result<Event, String> {
    let id = match job {
        JobRef::Number(id) => id,
        JobRef::Text(text) => text
            .trim()
            .parse()
            .map_err(|_| format!("job id `{text}` is not an integer"))?,
    };
    Ok(event_for_job(key.clone(), id))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn ping_ids_are_strings() {
        let events =
            events_from_message(br#"{"event":"PING","subscription":7,"jobs":[42161,"42482"]}"#)
                .expect("valid request");
        let items: Vec<_> = events.iter().map(|event| event.item.to_value()).collect();
        assert_eq!(items, vec![json!({"id": "42161"}), json!({"id": "42482"})]);
        assert_eq!(
            events[0].audience,
            Audience::Subscription(SubscriptionKey::App(7))
        );
    }

    #[test]
    fn ping_rejects_other_events() {
        let result =
            events_from_message(br#"{"event":"STAGE_CHANGED","subscription":7,"jobs":[1]}"#);
        assert!(result.is_err());
    }

    #[test]
    fn ping_rejects_non_numeric_job() {
        let result = events_from_message(br#"{"event":"PING","subscription":7,"jobs":["x1"]}"#);
        assert!(result.is_err());
    }
}

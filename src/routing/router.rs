//! Grouping a transaction's events into webhooks per subscription.
//!
//! Events of one kind, from one source transaction, for one subscription go out
//! as one webhook whose array contains every item, up to `delivery.max_batch`
//! items. Each webhook's id is derived from the commit LSN, the index of its
//! first event in the transaction and the subscription, so it is the same
//! whenever the transaction is decoded again.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Subscription, SubscriptionKey, Subscriptions};
use crate::payload::{webhook_body, EventKind};
use crate::replication::Lsn;
use crate::rules::{Audience, Event};

/// A webhook ready to be stored in the queue.
#[derive(Clone, Debug, PartialEq)]
pub struct NewDelivery {
    pub webhook_id: String,
    pub commit_lsn: Lsn,
    pub event_index: u32,
    pub subscription: SubscriptionKey,
    pub url: String,
    pub kind: EventKind,
    pub job_ids: Vec<i64>,
    pub body: String,
}

struct Group {
    kind: EventKind,
    subscription: Arc<Subscription>,
    /// Indexes of the group's events in the transaction.
    event_indexes: Vec<usize>,
}

/// Returns the webhooks of events of one committed transaction; the first of
/// `events` has index `first_event_index` in the whole transaction.
pub fn route(
    commit_lsn: Lsn,
    first_event_index: usize,
    events: &[Event],
    subscriptions: &Subscriptions,
    max_batch: usize,
) -> Vec<NewDelivery> {
    let mut groups: Vec<Group> = Vec::new();
    let mut group_of: HashMap<(EventKind, SubscriptionKey), usize> = HashMap::new();
    for (index, event) in events.iter().enumerate() {
        for subscription in recipients(event, subscriptions) {
            let slot = (event.kind, subscription.key.clone());
            let group = *group_of.entry(slot).or_insert_with(|| {
                groups.push(Group {
                    kind: event.kind,
                    subscription,
                    event_indexes: Vec::new(),
                });
                groups.len() - 1
            });
            groups[group].event_indexes.push(index);
        }
    }

    let mut deliveries = Vec::new();
    for group in &groups {
        for chunk in group.event_indexes.chunks(max_batch.max(1)) {
            deliveries.push(delivery(
                commit_lsn,
                first_event_index,
                events,
                group,
                chunk,
            ));
        }
    }
    deliveries
}

fn recipients(event: &Event, subscriptions: &Subscriptions) -> Vec<Arc<Subscription>> {
    match &event.audience {
        Audience::Owners(owners) => subscriptions.matching(owners, event.kind),
        Audience::Subscription(key) => match subscriptions.get(key) {
            Some(subscription) if subscription.wants(event.kind) => vec![subscription],
            Some(_) => {
                tracing::warn!(subscription = %key, event = %event.kind, "subscription is disabled or does not list the event, webhook not sent");
                Vec::new()
            }
            None => {
                tracing::warn!(subscription = %key, event = %event.kind, "subscription not found, webhook not sent");
                Vec::new()
            }
        },
    }
}

fn delivery(
    commit_lsn: Lsn,
    first_event_index: usize,
    events: &[Event],
    group: &Group,
    chunk: &[usize],
) -> NewDelivery {
    let first = first_event_index + chunk[0];
    let mut job_ids: Vec<i64> = chunk
        .iter()
        .flat_map(|&i| events[i].job_ids.iter().copied())
        .collect();
    job_ids.sort_unstable();
    job_ids.dedup();
    let key = group.subscription.key.clone();
    NewDelivery {
        webhook_id: webhook_id(commit_lsn, first, &key),
        commit_lsn,
        event_index: u32::try_from(first).unwrap_or(u32::MAX),
        subscription: key,
        url: group.subscription.url.clone(),
        kind: group.kind,
        job_ids,
        body: webhook_body(group.kind, chunk.iter().map(|&i| &events[i].item)),
    }
}

/// Returns the `webhook-id` of a delivery, such as `msg_000000000169A2F8_3_sub_7`.
pub fn webhook_id(commit_lsn: Lsn, event_index: usize, subscription: &SubscriptionKey) -> String {
    format!(
        "msg_{:016X}_{event_index}_{subscription}",
        commit_lsn.as_u64()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::ObjectWriter;
    use crate::routing::Owner;

    fn subscription(id: i64, owner: Owner, events: Option<&[EventKind]>) -> Subscription {
        Subscription {
            key: SubscriptionKey::App(id),
            owner,
            url: format!("http://127.0.0.1:9/{id}"),
            secrets: Vec::new(),
            events: events.map(|kinds| kinds.iter().copied().collect()),
            enabled: true,
        }
    }

    fn stage_event(job_id: i64, company: i64) -> Event {
        Event {
            kind: EventKind::StageChanged,
            audience: Audience::Owners(vec![Owner::Company(company)]),
            job_ids: vec![job_id],
            item: ObjectWriter::new().integer("jobId", job_id).finish(),
        }
    }

    #[test]
    fn same_kind_items_share_one_webhook() {
        let subscriptions = Subscriptions::default();
        subscriptions.upsert(subscription(7, Owner::Company(3), None));
        let events = [stage_event(1, 3), stage_event(2, 3)];
        let deliveries = route(Lsn::from_u64(0x10), 0, &events, &subscriptions, 100);
        assert_eq!(deliveries.len(), 1);
        assert_eq!(
            deliveries[0].body,
            r#"{"event":"STAGE_CHANGED","payload":{"jobs":[{"jobId":1},{"jobId":2}]}}"#
        );
        assert_eq!(deliveries[0].job_ids, vec![1, 2]);
    }

    #[test]
    fn batches_split_at_max_batch() {
        let subscriptions = Subscriptions::default();
        subscriptions.upsert(subscription(7, Owner::Company(3), None));
        let events: Vec<Event> = (0..5).map(|job| stage_event(job, 3)).collect();
        let deliveries = route(Lsn::from_u64(0x10), 0, &events, &subscriptions, 2);
        let indexes: Vec<u32> = deliveries.iter().map(|d| d.event_index).collect();
        assert_eq!(indexes, vec![0, 2, 4]);
        let ids: std::collections::HashSet<_> =
            deliveries.iter().map(|d| d.webhook_id.clone()).collect();
        assert_eq!(ids.len(), 3, "each batch has its own webhook id");
    }

    #[test]
    fn only_owners_and_wanted_events_receive() {
        let subscriptions = Subscriptions::default();
        subscriptions.upsert(subscription(
            1,
            Owner::Company(3),
            Some(&[EventKind::StageChanged]),
        ));
        subscriptions.upsert(subscription(
            2,
            Owner::Company(3),
            Some(&[EventKind::ChatPosted]),
        ));
        subscriptions.upsert(subscription(3, Owner::Company(4), None));
        let mut disabled = subscription(4, Owner::Company(3), None);
        disabled.enabled = false;
        subscriptions.upsert(disabled);
        let deliveries = route(
            Lsn::from_u64(0x10),
            0,
            &[stage_event(1, 3)],
            &subscriptions,
            100,
        );
        let receivers: Vec<_> = deliveries.iter().map(|d| d.subscription.clone()).collect();
        assert_eq!(receivers, vec![SubscriptionKey::App(1)]);
    }

    #[test]
    fn chunk_offset_keeps_ids_distinct() {
        let subscriptions = Subscriptions::default();
        subscriptions.upsert(subscription(7, Owner::Company(3), None));
        let first = route(
            Lsn::from_u64(0x10),
            0,
            &[stage_event(1, 3)],
            &subscriptions,
            100,
        );
        let second = route(
            Lsn::from_u64(0x10),
            1,
            &[stage_event(2, 3)],
            &subscriptions,
            100,
        );
        assert_eq!(
            second[0].event_index, 1,
            "the index counts from the transaction's start"
        );
        assert_ne!(first[0].webhook_id, second[0].webhook_id);
    }

    #[test]
    fn webhook_id_is_deterministic() {
        let key = SubscriptionKey::App(7);
        assert_eq!(
            webhook_id(Lsn::from_u64(0x169A2F8), 3, &key),
            "msg_000000000169A2F8_3_sub_7"
        );
    }
}

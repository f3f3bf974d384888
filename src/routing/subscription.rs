//! Webhook subscriptions: who receives which events, where, signed with what.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};

use crate::config::Secret;
use crate::payload::EventKind;

/// Identity of a subscription, stable across restarts; part of every `webhook-id`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubscriptionKey {
    /// A row of the application's subscriptions table, by its id.
    App(i64),
    /// An `[[endpoints]]` entry of config.toml, by its `id`, or without one
    /// by a hash of its URL.
    Endpoint(String),
}

impl SubscriptionKey {
    /// Returns the key of the static endpoint with this URL.
    pub fn for_endpoint(url: &str) -> SubscriptionKey {
        let digest = Sha256::digest(url.as_bytes());
        let hex: String = digest[..6]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        SubscriptionKey::Endpoint(hex)
    }

    /// Returns the key of an `[[endpoints]]` entry: its `id` when set, else
    /// the hash of its URL.
    pub fn of_endpoint(endpoint: &crate::config::EndpointConfig) -> SubscriptionKey {
        match &endpoint.id {
            Some(id) => SubscriptionKey::Endpoint(id.clone()),
            None => SubscriptionKey::for_endpoint(&endpoint.url),
        }
    }

    /// Parses the text form written by `Display` (`sub_42`, `endpoint_1a2b3c4d5e6f`).
    pub fn parse(text: &str) -> Option<SubscriptionKey> {
        if let Some(id) = text.strip_prefix("sub_") {
            return id.parse().ok().map(SubscriptionKey::App);
        }
        text.strip_prefix("endpoint_")
            .map(|hash| SubscriptionKey::Endpoint(hash.to_owned()))
    }
}

impl fmt::Display for SubscriptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubscriptionKey::App(id) => write!(f, "sub_{id}"),
            SubscriptionKey::Endpoint(hash) => write!(f, "endpoint_{hash}"),
        }
    }
}

/// Whose events a subscription receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    Company(i64),
    Program(i64),
    /// A static endpoint: the events of every tenant.
    Everyone,
}

/// One subscription, as loaded from the application or config.toml.
#[derive(Clone, Debug)]
pub struct Subscription {
    pub key: SubscriptionKey,
    pub owner: Owner,
    pub url: String,
    /// Signing secrets; more than one while a secret rotates.
    pub secrets: Vec<Secret>,
    /// Events wanted; `None` means all.
    pub events: Option<HashSet<EventKind>>,
    pub enabled: bool,
}

impl Subscription {
    /// Tells whether this subscription is enabled and wants `kind`.
    pub fn wants(&self, kind: EventKind) -> bool {
        self.enabled
            && self
                .events
                .as_ref()
                .is_none_or(|events| events.contains(&kind))
    }
}

/// The live set of subscriptions, shared by the router and the delivery workers.
#[derive(Default)]
pub struct Subscriptions {
    index: RwLock<Index>,
}

/// Subscriptions by key, and by owner for routing.
#[derive(Default)]
struct Index {
    by_key: HashMap<SubscriptionKey, Arc<Subscription>>,
    /// Subscriptions of each owner, sorted by key. Static endpoints are under
    /// [`Owner::Everyone`].
    by_owner: HashMap<Owner, Vec<Arc<Subscription>>>,
}

impl Index {
    fn insert(&mut self, subscription: Arc<Subscription>) {
        if let Some(old) = self
            .by_key
            .insert(subscription.key.clone(), Arc::clone(&subscription))
        {
            self.remove_from_owner(&old);
        }
        let list = self.by_owner.entry(subscription.owner).or_default();
        let position = list
            .binary_search_by(|other| other.key.cmp(&subscription.key))
            .unwrap_or_else(|position| position);
        list.insert(position, subscription);
    }

    fn remove(&mut self, key: &SubscriptionKey) {
        if let Some(old) = self.by_key.remove(key) {
            self.remove_from_owner(&old);
        }
    }

    fn remove_from_owner(&mut self, subscription: &Subscription) {
        if let Some(list) = self.by_owner.get_mut(&subscription.owner) {
            list.retain(|other| other.key != subscription.key);
            if list.is_empty() {
                self.by_owner.remove(&subscription.owner);
            }
        }
    }
}

impl Subscriptions {
    /// Returns the subscription with `key`, if it exists.
    pub fn get(&self, key: &SubscriptionKey) -> Option<Arc<Subscription>> {
        self.read().by_key.get(key).cloned()
    }

    /// Adds or replaces a subscription.
    pub fn upsert(&self, subscription: Subscription) {
        self.write().insert(Arc::new(subscription));
    }

    /// Keeps only the subscriptions for whose key `keep` returns true.
    pub fn retain(&self, keep: impl Fn(&SubscriptionKey) -> bool) {
        let mut index = self.write();
        let dropped: Vec<SubscriptionKey> = index
            .by_key
            .keys()
            .filter(|key| !keep(key))
            .cloned()
            .collect();
        for key in &dropped {
            index.remove(key);
        }
    }

    /// Removes a subscription.
    pub fn remove(&self, key: &SubscriptionKey) {
        self.write().remove(key);
    }

    /// Makes the static endpoints those of `endpoints`: adds or replaces each
    /// entry and removes the endpoints no longer listed. Returns the keys of
    /// the removed endpoints.
    pub fn replace_endpoints(
        &self,
        endpoints: &[crate::config::EndpointConfig],
    ) -> Vec<SubscriptionKey> {
        let listed: Vec<Subscription> = endpoints.iter().map(Subscription::from_endpoint).collect();
        let mut index = self.write();
        let removed: Vec<SubscriptionKey> = index
            .by_key
            .keys()
            .filter(|key| matches!(key, SubscriptionKey::Endpoint(_)))
            .filter(|key| listed.iter().all(|subscription| &subscription.key != *key))
            .cloned()
            .collect();
        for key in &removed {
            index.remove(key);
        }
        for subscription in listed {
            index.insert(Arc::new(subscription));
        }
        removed
    }

    /// Returns the enabled subscriptions of the given owners, and every static
    /// endpoint, that want `kind`, sorted by key.
    pub fn matching(&self, owners: &[Owner], kind: EventKind) -> Vec<Arc<Subscription>> {
        let index = self.read();
        let mut found = Vec::new();
        let mut visited: Vec<Owner> = Vec::with_capacity(owners.len() + 1);
        for owner in std::iter::once(Owner::Everyone).chain(owners.iter().copied()) {
            if visited.contains(&owner) {
                continue;
            }
            visited.push(owner);
            if let Some(list) = index.by_owner.get(&owner) {
                found.extend(list.iter().filter(|sub| sub.wants(kind)).cloned());
            }
        }
        found.sort_by(|a, b| a.key.cmp(&b.key));
        found
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Subscription {
    /// Builds the subscription of an `[[endpoints]]` entry, which receives the
    /// events of every tenant.
    pub fn from_endpoint(endpoint: &crate::config::EndpointConfig) -> Subscription {
        let secrets = endpoint
            .secret
            .iter()
            .flat_map(|secret| secret.expose().split_whitespace())
            .map(|part| Secret::new(part.to_owned()))
            .collect();
        let events: HashSet<EventKind> = endpoint
            .events
            .iter()
            .filter_map(|name| EventKind::from_name(name))
            .collect();
        Subscription {
            key: SubscriptionKey::of_endpoint(endpoint),
            owner: Owner::Everyone,
            url: endpoint.url.clone(),
            secrets,
            events: if events.is_empty() {
                None
            } else {
                Some(events)
            },
            enabled: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EndpointConfig;

    fn endpoint(id: Option<&str>, url: &str, secret: &str) -> EndpointConfig {
        EndpointConfig {
            id: id.map(str::to_owned),
            url: url.to_owned(),
            secret: Some(Secret::new(secret.to_owned())),
            secret_file: None,
            events: Vec::new(),
        }
    }

    fn company_subscription(id: i64, company: i64) -> Subscription {
        Subscription {
            key: SubscriptionKey::App(id),
            owner: Owner::Company(company),
            url: format!("http://127.0.0.1:9/{id}"),
            secrets: Vec::new(),
            events: None,
            enabled: true,
        }
    }

    #[test]
    fn endpoint_with_id_keeps_key_on_new_url() {
        let subscriptions = Subscriptions::default();
        subscriptions.replace_endpoints(&[endpoint(Some("hooks"), "https://a.example/x", "s1")]);
        let removed = subscriptions.replace_endpoints(&[endpoint(
            Some("hooks"),
            "https://b.example/x",
            "s2",
        )]);

        assert!(removed.is_empty(), "{removed:?}");
        let key = SubscriptionKey::Endpoint("hooks".to_owned());
        let current = subscriptions.get(&key).expect("the endpoint stays");
        assert_eq!(current.url, "https://b.example/x");
        assert_eq!(current.secrets, [Secret::new("s2".to_owned())]);
    }

    #[test]
    fn endpoint_without_id_is_replaced_on_new_url() {
        let subscriptions = Subscriptions::default();
        subscriptions.upsert(company_subscription(7, 1));
        subscriptions.replace_endpoints(&[endpoint(None, "https://a.example/x", "s1")]);
        let removed =
            subscriptions.replace_endpoints(&[endpoint(None, "https://b.example/x", "s1")]);

        assert_eq!(
            removed,
            [SubscriptionKey::for_endpoint("https://a.example/x")]
        );
        let new_key = SubscriptionKey::for_endpoint("https://b.example/x");
        assert!(
            subscriptions.get(&new_key).is_some(),
            "the new URL is listed"
        );
        assert!(
            subscriptions.get(&SubscriptionKey::App(7)).is_some(),
            "application subscriptions stay"
        );
    }

    fn matching_ids(subscriptions: &Subscriptions, owners: &[Owner]) -> Vec<SubscriptionKey> {
        subscriptions
            .matching(owners, EventKind::StageChanged)
            .iter()
            .map(|sub| sub.key.clone())
            .collect()
    }

    #[test]
    fn upsert_moves_subscription_to_new_owner() {
        let subscriptions = Subscriptions::default();
        subscriptions.upsert(company_subscription(1, 10));
        subscriptions.upsert(company_subscription(1, 20));

        assert_eq!(
            matching_ids(&subscriptions, &[Owner::Company(10)]),
            Vec::<SubscriptionKey>::new(),
            "the old owner no longer receives"
        );
        assert_eq!(
            matching_ids(&subscriptions, &[Owner::Company(20)]),
            vec![SubscriptionKey::App(1)],
            "the new owner receives"
        );
    }

    #[test]
    fn matching_sorts_and_skips_repeated_owners() {
        let subscriptions = Subscriptions::default();
        subscriptions.upsert(company_subscription(3, 10));
        subscriptions.upsert(company_subscription(1, 20));
        subscriptions.upsert(company_subscription(2, 10));

        let owners = [Owner::Company(10), Owner::Company(20), Owner::Company(10)];
        let expected: Vec<_> = (1..=3).map(SubscriptionKey::App).collect();
        assert_eq!(matching_ids(&subscriptions, &owners), expected);
    }

    #[test]
    fn remove_and_retain_drop_from_routing() {
        let subscriptions = Subscriptions::default();
        subscriptions.upsert(company_subscription(1, 10));
        subscriptions.upsert(company_subscription(2, 10));
        subscriptions.upsert(company_subscription(3, 10));

        subscriptions.remove(&SubscriptionKey::App(1));
        subscriptions.retain(|key| *key != SubscriptionKey::App(2));

        assert_eq!(
            matching_ids(&subscriptions, &[Owner::Company(10)]),
            vec![SubscriptionKey::App(3)]
        );
        assert!(subscriptions.get(&SubscriptionKey::App(1)).is_none());
    }
}

//! Routing: from a domain event to the subscriptions that receive it.

mod subscription;

pub use subscription::{Owner, Subscription, SubscriptionKey, Subscriptions};

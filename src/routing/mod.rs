//! Routing: from a domain event to the subscriptions that receive it.
//!
//! A job's events go to the subscriptions of its company and of its program
//! that list the event and are enabled, and to every static endpoint. Rows of
//! chats, hes_scores and tickets reach their job's tenants through the job id.

mod jobs;
mod router;
mod subscription;
pub mod subscriptions_table;

pub use jobs::{id_param, JobDirectory};
pub use router::{route, webhook_id, NewDelivery};
pub use subscription::{Owner, Subscription, SubscriptionKey, Subscriptions};

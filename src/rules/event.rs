//! Domain events: what happened, about which jobs, for whom.

use crate::payload::{EventKind, JsonItem};
use crate::routing::{Owner, SubscriptionKey};

/// One item of a webhook's payload array, with where it goes.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub kind: EventKind,
    pub audience: Audience,
    /// Jobs the item is about, for ordering and inspection of deliveries.
    pub job_ids: Vec<i64>,
    /// The item exactly as documented, such as `{"id":48621,"altId":"234552"}`.
    pub item: JsonItem,
}

/// Who receives an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Audience {
    /// The subscriptions of these companies and programs, and every static endpoint.
    Owners(Vec<Owner>),
    /// One subscription, named by the request (PING).
    Subscription(SubscriptionKey),
}

/// A job's identity and tenants, as the jobs table contains them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobInfo {
    pub id: i64,
    pub alt_id: Option<String>,
    pub company: Option<i64>,
    pub program: Option<i64>,
}

impl JobInfo {
    /// Returns the company and program that receive this job's events.
    pub fn owners(&self) -> Vec<Owner> {
        let company = self.company.map(Owner::Company);
        let program = self.program.map(Owner::Program);
        company.into_iter().chain(program).collect()
    }
}

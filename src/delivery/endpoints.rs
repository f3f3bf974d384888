//! Isolation between endpoints: requests in flight per endpoint and the
//! circuit breaker of each, as the room that the next claim may take.
//!
//! An endpoint is the `host[:port]` of a delivery URL as written, which the
//! claim computes in SQL. `delivery.per_endpoint_concurrency` bounds the
//! requests in flight to one endpoint, so a receiver that hangs holds at most
//! that many of the `delivery.concurrency` permits, and an endpoint whose
//! breaker is open gets no rows claimed at all.
//!
//! NOTE: the counts and breakers live in this process only. Several delivery
//! processes each allow `per_endpoint_concurrency` requests and keep their
//! own breakers, and the same host written with and without its default port
//! counts as two endpoints.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tracing::{info, warn};

use super::breaker::{Breaker, Transition};
use crate::queue::EndpointRooms;

/// Evidence of one attempt about the health of its endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointOutcome {
    /// A 2xx response.
    Succeeded,
    /// A timeout, connection failure or a status that is retried.
    Failed,
    /// Nothing about the endpoint's health, such as 410 Gone or a request
    /// that was never sent.
    Unknown,
}

/// Requests in flight and breaker state of every endpoint in use.
#[derive(Debug)]
pub struct EndpointTable {
    per_endpoint: AtomicUsize,
    states: Mutex<HashMap<String, EndpointState>>,
}

#[derive(Debug, Default)]
struct EndpointState {
    in_flight: usize,
    breaker: Breaker,
}

impl EndpointTable {
    /// Creates the table with a limit of `per_endpoint` requests in flight
    /// per endpoint; 0 counts as 1.
    pub fn new(per_endpoint: usize) -> EndpointTable {
        EndpointTable {
            per_endpoint: AtomicUsize::new(per_endpoint.max(1)),
            states: Mutex::new(HashMap::new()),
        }
    }

    /// Returns the room of every endpoint for a claim at `now`: the requests
    /// that its limit or breaker still allows beyond those in flight.
    pub fn rooms(&self, now: Instant) -> EndpointRooms {
        let per_endpoint = self.per_endpoint.load(Ordering::Relaxed);
        let states = self.lock();
        let rooms = states
            .iter()
            .filter_map(|(endpoint, state)| {
                let allowed = state.breaker.allowed_in_flight(now, per_endpoint);
                let room = allowed.saturating_sub(state.in_flight);
                (room < per_endpoint).then(|| (endpoint.clone(), to_i32(room)))
            })
            .collect();
        EndpointRooms {
            rooms,
            default_room: to_i32(per_endpoint),
        }
    }

    /// Changes the limit of requests in flight per endpoint for the claims
    /// from now on; 0 counts as 1. Requests already in flight stay.
    pub fn set_per_endpoint(&self, per_endpoint: usize) {
        self.per_endpoint
            .store(per_endpoint.max(1), Ordering::Relaxed);
    }

    /// Counts a request to `endpoint` in flight until the returned guard is
    /// finished or dropped.
    pub fn start(self: &Arc<Self>, endpoint: &str) -> InFlight {
        self.lock()
            .entry(endpoint.to_owned())
            .or_default()
            .in_flight += 1;
        InFlight {
            table: Arc::clone(self),
            endpoint: endpoint.to_owned(),
            started: Instant::now(),
            finished: false,
        }
    }

    fn finish(&self, endpoint: &str, started: Instant, outcome: EndpointOutcome) {
        let now = Instant::now();
        let mut states = self.lock();
        let Some(state) = states.get_mut(endpoint) else {
            return;
        };
        state.in_flight = state.in_flight.saturating_sub(1);
        let transition = match outcome {
            EndpointOutcome::Succeeded => state.breaker.record(true, started, now),
            EndpointOutcome::Failed => state.breaker.record(false, started, now),
            EndpointOutcome::Unknown => None,
        };
        if state.in_flight == 0 && state.breaker.is_idle() {
            states.remove(endpoint);
        }
        drop(states);

        match transition {
            Some(Transition::Opened {
                consecutive_failures,
                pause,
            }) => warn!(
                endpoint,
                consecutive_failures,
                pause_ms = pause.as_millis(),
                "endpoint keeps failing, circuit breaker opened"
            ),
            Some(Transition::Closed) => {
                info!(
                    endpoint,
                    "endpoint responded with success, circuit breaker closed"
                );
            }
            None => {}
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, EndpointState>> {
        self.states
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One request counted in flight; dropping it unfinished counts no outcome.
#[derive(Debug)]
pub struct InFlight {
    table: Arc<EndpointTable>,
    endpoint: String,
    started: Instant,
    finished: bool,
}

impl InFlight {
    /// Ends the request and records what it showed about the endpoint.
    pub fn finish(mut self, outcome: EndpointOutcome) {
        self.finished = true;
        self.table.finish(&self.endpoint, self.started, outcome);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.finished {
            self.table
                .finish(&self.endpoint, self.started, EndpointOutcome::Unknown);
        }
    }
}

fn to_i32(count: usize) -> i32 {
    i32::try_from(count).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::breaker::{FAILURE_THRESHOLD, FIRST_PAUSE};

    fn room_of(rooms: &EndpointRooms, endpoint: &str) -> i32 {
        rooms
            .rooms
            .iter()
            .find(|(name, _)| name == endpoint)
            .map_or(rooms.default_room, |(_, room)| *room)
    }

    #[test]
    fn in_flight_requests_use_up_room() {
        let table = Arc::new(EndpointTable::new(2));
        let first = table.start("a.example:443");
        let rooms = table.rooms(Instant::now());
        assert_eq!(room_of(&rooms, "a.example:443"), 1);
        assert_eq!(
            room_of(&rooms, "b.example"),
            2,
            "other endpoints keep their room"
        );

        let second = table.start("a.example:443");
        assert_eq!(room_of(&table.rooms(Instant::now()), "a.example:443"), 0);

        first.finish(EndpointOutcome::Succeeded);
        drop(second);
        assert!(
            table.rooms(Instant::now()).rooms.is_empty(),
            "an idle endpoint is forgotten"
        );
    }

    #[test]
    fn open_breaker_leaves_no_room() {
        let table = Arc::new(EndpointTable::new(8));
        for _ in 0..FAILURE_THRESHOLD {
            table.start("down.example").finish(EndpointOutcome::Failed);
        }
        let now = Instant::now();
        assert_eq!(room_of(&table.rooms(now), "down.example"), 0, "open");
        assert_eq!(
            room_of(&table.rooms(now + FIRST_PAUSE), "down.example"),
            1,
            "one probe after the pause"
        );
    }

    #[test]
    fn unknown_outcome_counts_no_failure() {
        let table = Arc::new(EndpointTable::new(8));
        for _ in 0..FAILURE_THRESHOLD {
            table.start("gone.example").finish(EndpointOutcome::Unknown);
        }
        assert!(table.rooms(Instant::now()).rooms.is_empty());
    }
}

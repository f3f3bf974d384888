//! The `[delivery]` settings of running workers, which a reload replaces.
//!
//! A send task reads the settings once per attempt, so an attempt in flight
//! finishes with the settings it started with. A new `timeout` or target
//! policy needs a new HTTP client, so the client is built again, and its idle
//! connections are dropped. `concurrency` resizes the workers' semaphore:
//! permits beyond a lowered size are forgotten as the requests holding them
//! finish.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::http::{HttpError, WebhookSender};
use super::worker::LEASE_MARGIN;
use crate::config::DeliveryConfig;

/// The settings of one `[delivery]` section, with the client built from it.
#[derive(Debug)]
pub struct SendSettings {
    pub config: DeliveryConfig,
    pub sender: WebhookSender,
}

impl SendSettings {
    /// Builds the HTTP client of `config`.
    pub fn new(config: &DeliveryConfig) -> Result<SendSettings, HttpError> {
        Ok(SendSettings {
            config: config.clone(),
            sender: WebhookSender::new(config)?,
        })
    }

    /// Returns the lease of a claimed delivery: the request's timeout plus the
    /// time to record the attempt.
    pub fn lease(&self) -> Duration {
        self.config.timeout + LEASE_MARGIN
    }

    /// Returns the number of requests in flight allowed, at least 1.
    pub fn concurrency(&self) -> usize {
        self.config.concurrency.max(1)
    }
}

/// The settings in force, replaced as a whole.
#[derive(Debug)]
pub struct LiveSettings(RwLock<Arc<SendSettings>>);

impl LiveSettings {
    pub fn new(settings: SendSettings) -> LiveSettings {
        LiveSettings(RwLock::new(Arc::new(settings)))
    }

    /// Returns the settings in force.
    pub fn current(&self) -> Arc<SendSettings> {
        Arc::clone(
            &self
                .0
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    /// Puts `settings` in force for the attempts that start from now on.
    pub fn replace(&self, settings: SendSettings) {
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(settings);
    }
}

/// The semaphore of requests in flight, with a size that can change while
/// permits are held.
#[derive(Debug)]
pub struct Permits {
    semaphore: Arc<Semaphore>,
    size: usize,
    /// Permits to forget once they are returned, after the size was lowered.
    owed: usize,
}

impl Permits {
    pub fn new(size: usize) -> Permits {
        Permits {
            semaphore: Arc::new(Semaphore::new(size)),
            size,
            owed: 0,
        }
    }

    /// Forgets the returned permits that a lowered size owes, and returns the
    /// semaphore to take permits from.
    pub fn settle(&mut self) -> &Arc<Semaphore> {
        if self.owed > 0 {
            self.owed -= self.semaphore.forget_permits(self.owed);
        }
        &self.semaphore
    }

    /// Changes the number of permits to `size`.
    pub fn resize(&mut self, size: usize) {
        if size > self.size {
            let added = size - self.size;
            let repaid = added.min(self.owed);
            self.owed -= repaid;
            self.semaphore.add_permits(added - repaid);
        } else {
            self.owed += self.size - size;
        }
        self.size = size;
        self.settle();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowered_size_waits_for_held_permits() {
        let mut permits = Permits::new(4);
        let in_use = Arc::clone(permits.settle())
            .try_acquire_many_owned(3)
            .expect("3 of 4 permits are free");
        permits.resize(2);
        assert_eq!(
            permits.settle().available_permits(),
            0,
            "1 free permit forgotten"
        );

        drop(in_use);
        assert_eq!(
            permits.settle().available_permits(),
            2,
            "the returned permits repay the rest"
        );
    }

    #[test]
    fn raised_size_adds_permits() {
        let mut permits = Permits::new(2);
        permits.resize(5);
        assert_eq!(permits.settle().available_permits(), 5);
    }

    #[test]
    fn raise_after_lower_repays_first() {
        let mut permits = Permits::new(4);
        let in_use = Arc::clone(permits.settle())
            .try_acquire_many_owned(4)
            .expect("all permits are free");
        permits.resize(1);
        permits.resize(3);
        drop(in_use);
        assert_eq!(permits.settle().available_permits(), 3);
    }
}

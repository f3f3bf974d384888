//! The delivery loop: claim due deliveries, send each in its own task, record
//! the outcome.
//!
//! A semaphore of `delivery.concurrency` permits bounds the requests in
//! flight across all subscriptions. The loop claims only as many rows as there
//! are free permits, and per endpoint only the room that [`EndpointTable`]
//! leaves: `delivery.per_endpoint_concurrency` minus the requests in flight,
//! or none while the endpoint's circuit breaker is open. It keeps claiming
//! while requests run, so a slow receiver holds only its own share of the
//! permits and its own rows. A send frees its endpoint's room when the
//! response arrives and its permit once [`Recorder`] has stored the attempt.
//! The loop wakes when the enqueue side signals a commit, when a response
//! frees endpoint room, when a send task ends (the next delivery of that job
//! may now be claimable), or after [`POLL_INTERVAL`].

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rand::Rng;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::endpoints::{EndpointOutcome, EndpointTable, InFlight};
use super::http::{AttemptReport, HttpError, WebhookRequest};
use super::recorder::{FinishedAttempt, Recorder};
use super::retry::{classify, next_delay, AttemptResult, Decision};
use super::settings::{LiveSettings, Permits, SendSettings};
use super::signing::{parse_secrets, SigningKey};
use crate::config::{Config, DeliveryConfig};
use crate::ops::repeats::{Repeats, REPEAT_INTERVAL};
use crate::queue::{ClaimedDelivery, DeliveryQueue, NextStep};
use crate::routing::{Subscription, SubscriptionKey, Subscriptions};

/// Maximum wait between two claims when nothing signals new work. Retries
/// that come due are found by this poll.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Time added to `delivery.timeout` for the lease of a claimed delivery, so
/// recording the attempt fits inside the lease. After a crash, the claimed
/// rows are sent again once their lease ends, so the margin is kept short.
pub const LEASE_MARGIN: Duration = Duration::from_secs(10);

/// Log lines of failed claims, which repeat every [`CLAIM_ERROR_BACKOFF`]
/// while the queue database fails.
static CLAIM_FAILURES: Repeats = Repeats::new(REPEAT_INTERVAL);

/// Pause after a failed claim before the next one.
const CLAIM_ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// The delivery workers of one process; [`DeliveryWorkers::run`] drives them.
pub struct DeliveryWorkers {
    shared: Arc<Shared>,
    wake: Arc<Notify>,
    /// The configuration in force, when a reload may replace `[delivery]`.
    live: Option<watch::Receiver<Arc<Config>>>,
}

/// State that every send task reads.
struct Shared {
    client: Arc<Client>,
    queue: DeliveryQueue,
    subscriptions: Arc<Subscriptions>,
    settings: LiveSettings,
    endpoints: Arc<EndpointTable>,
    /// Signalled when a response frees room of an endpoint.
    room_freed: Notify,
}

impl DeliveryWorkers {
    /// Creates the workers. `client` is a queue connection whose connection
    /// task the caller drives, `schema` is `queue.schema`, and `wake` is the
    /// `Notify` that the enqueue side signals with `notify_one` after each commit.
    ///
    /// NOTE: a delivery whose subscription is missing from `subscriptions` is
    /// failed, so start the workers only after the subscriptions are loaded.
    pub fn new(
        client: Arc<Client>,
        schema: &str,
        config: &DeliveryConfig,
        subscriptions: Arc<Subscriptions>,
        wake: Arc<Notify>,
    ) -> Result<DeliveryWorkers, HttpError> {
        let shared = Shared {
            client,
            queue: DeliveryQueue::new(schema),
            subscriptions,
            settings: LiveSettings::new(SendSettings::new(config)?),
            endpoints: Arc::new(EndpointTable::new(config.per_endpoint_concurrency)),
            room_freed: Notify::new(),
        };
        Ok(DeliveryWorkers {
            shared: Arc::new(shared),
            wake,
            live: None,
        })
    }

    /// Makes the workers apply the `[delivery]` section of every
    /// configuration that `live` publishes.
    pub fn follow(mut self, live: watch::Receiver<Arc<Config>>) -> DeliveryWorkers {
        self.live = Some(live);
        self
    }

    /// Runs until `shutdown` is cancelled, then waits for the requests in
    /// flight to finish and be recorded. Returns an error when the queue
    /// connection closes.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let concurrency = self.shared.settings.current().concurrency();
        let mut queue = self.prepare(concurrency).await?;
        let mut prepared_for = concurrency;
        let mut permits = Permits::new(concurrency);
        let mut in_flight = JoinSet::new();
        let (recorder, recorder_task) =
            Recorder::spawn(Arc::clone(&self.shared.client), queue.clone());
        info!(concurrency, "delivery workers started");

        let result = loop {
            let concurrency = self.shared.settings.current().concurrency();
            if concurrency != prepared_for {
                match self.prepare(concurrency).await {
                    Ok(prepared) => {
                        queue = prepared;
                        prepared_for = concurrency;
                    }
                    Err(err) => {
                        warn!(error = %err, "preparing the claim for the new concurrency failed, retrying")
                    }
                }
            }
            let claimed = self
                .claim_and_spawn(&queue, permits.settle(), &mut in_flight, &recorder)
                .await;
            if let Err(err) = claimed {
                if self.shared.client.is_closed() {
                    break Err(err).context("queue connection closed");
                }
                if let Some(suppressed) = CLAIM_FAILURES.admit() {
                    warn!(error = %err, suppressed, "claiming deliveries failed, retrying");
                }
                tokio::time::sleep(CLAIM_ERROR_BACKOFF).await;
            }

            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                _ = self.wake.notified() => {}
                _ = self.shared.room_freed.notified() => {}
                _ = tokio::time::sleep(POLL_INTERVAL) => {}
                Some(joined) = in_flight.join_next() => log_join_error(joined),
                Some(config) = next_config(&mut self.live) => self.apply(&config.delivery, &mut permits),
            }
        };

        info!(in_flight = in_flight.len(), "delivery workers stopping");
        while let Some(joined) = in_flight.join_next().await {
            log_join_error(joined);
        }
        // Every send task has received its reply, so no record request is left.
        drop(recorder);
        if let Err(err) = recorder_task.await {
            error!(error = %err, "delivery recorder task panicked");
        }
        info!("delivery workers stopped");
        result
    }

    /// Prepares the claim and record statements for claims of up to
    /// `concurrency` rows.
    async fn prepare(&self, concurrency: usize) -> anyhow::Result<DeliveryQueue> {
        self.shared
            .queue
            .clone()
            .prepare(&self.shared.client, concurrency)
            .await
            .context("preparing the claim and record statements failed")
    }

    /// Claims as many due deliveries as there are free permits and spawns a
    /// send task for each.
    async fn claim_and_spawn(
        &self,
        queue: &DeliveryQueue,
        permits: &Arc<Semaphore>,
        in_flight: &mut JoinSet<()>,
        recorder: &Recorder,
    ) -> Result<(), tokio_postgres::Error> {
        while let Some(joined) = in_flight.try_join_next() {
            log_join_error(joined);
        }
        let free = permits.available_permits();
        if free == 0 {
            return Ok(());
        }

        let rooms = self.shared.endpoints.rooms(std::time::Instant::now());
        let lease = self.shared.settings.current().lease();
        let claimed = queue
            .claim_due_within(&self.shared.client, free, lease, &rooms)
            .await?;
        for delivery in claimed {
            let permit = Arc::clone(permits)
                .try_acquire_owned()
                .expect("no more deliveries are claimed than there are free permits");
            let shared = Arc::clone(&self.shared);
            let recorder = recorder.clone();
            let endpoint = shared.endpoints.start(&delivery.endpoint);
            in_flight.spawn(async move {
                shared.deliver(delivery, endpoint, &recorder).await;
                drop(permit);
            });
        }
        Ok(())
    }
}

impl DeliveryWorkers {
    /// Puts a reloaded `[delivery]` section in force for the attempts that
    /// start from now on. A section whose HTTP client cannot be built leaves
    /// the running settings in force.
    fn apply(&self, config: &DeliveryConfig, permits: &mut Permits) {
        if self.shared.settings.current().config == *config {
            return;
        }
        let settings = match SendSettings::new(config) {
            Ok(settings) => settings,
            Err(err) => {
                error!(error = %err, "reloaded [delivery] settings not applied, the running ones stay in force");
                return;
            }
        };
        permits.resize(settings.concurrency());
        self.shared
            .endpoints
            .set_per_endpoint(config.per_endpoint_concurrency);
        info!(
            concurrency = settings.concurrency(),
            per_endpoint_concurrency = config.per_endpoint_concurrency,
            timeout_ms = config.timeout.as_millis(),
            retry_schedule = ?config.retry_schedule,
            "reloaded [delivery] settings applied"
        );
        self.shared.settings.replace(settings);
    }
}

/// Waits for the next configuration that `live` publishes; waits forever
/// without `live` or once its sender is gone.
async fn next_config(live: &mut Option<watch::Receiver<Arc<Config>>>) -> Option<Arc<Config>> {
    let Some(receiver) = live.as_mut() else {
        return std::future::pending().await;
    };
    if receiver.changed().await.is_err() {
        *live = None;
        return std::future::pending().await;
    }
    Some(Arc::clone(&receiver.borrow_and_update()))
}

impl Shared {
    /// Makes one attempt of a claimed delivery, frees its endpoint room with
    /// what the attempt showed about the endpoint, and records it.
    async fn deliver(&self, delivery: ClaimedDelivery, endpoint: InFlight, recorder: &Recorder) {
        let subscription = match self.find_subscription(&delivery.subscription) {
            Ok(subscription) => subscription,
            Err(reason) => {
                self.free_room(endpoint, EndpointOutcome::Unknown);
                self.fail_unsendable(&delivery, &reason, recorder).await;
                return;
            }
        };
        let keys = match signing_keys(&subscription) {
            Ok(keys) => keys,
            Err(message) => {
                self.free_room(endpoint, EndpointOutcome::Unknown);
                self.fail_unsigned(&delivery, message, recorder).await;
                return;
            }
        };

        if subscription.url != delivery.url {
            debug!(
                delivery_id = delivery.id,
                subscription = %delivery.subscription,
                "subscription URL changed since the delivery was stored, sending to the current URL"
            );
        }
        // NOTE: the claim and the in-flight guard take the endpoint from the
        // stored URL. So the attempts of a delivery whose URL changed count
        // against the limit and circuit breaker of its stored URL's endpoint.
        let request = WebhookRequest {
            url: &subscription.url,
            webhook_id: &delivery.webhook_id,
            body: &delivery.body,
            keys: &keys,
        };
        let settings = self.settings.current();
        let report = settings.sender.send(&request).await;
        debug!(
            delivery_id = delivery.id,
            subscription = %delivery.subscription,
            endpoint = %delivery.endpoint,
            attempt = delivery.attempt,
            result = ?report.result,
            duration_ms = report.duration.as_millis(),
            "delivery attempt finished"
        );
        crate::ops::metrics::delivery_sent(report.duration);

        let outcome = match classify(report.result) {
            Decision::Delivered => EndpointOutcome::Succeeded,
            Decision::Retry => EndpointOutcome::Failed,
            Decision::Disable => EndpointOutcome::Unknown,
        };
        self.free_room(endpoint, outcome);
        let next = self.decide(&delivery, &report).await;
        self.record(&delivery, report, next, recorder).await;
    }

    /// Ends a request to an endpoint and wakes the claim loop, which may now
    /// claim another row of that endpoint.
    fn free_room(&self, endpoint: InFlight, outcome: EndpointOutcome) {
        endpoint.finish(outcome);
        self.room_freed.notify_one();
    }

    /// Returns the live subscription of a delivery, or why it cannot be sent.
    fn find_subscription(&self, text: &str) -> Result<Arc<Subscription>, String> {
        let key = SubscriptionKey::parse(text)
            .ok_or_else(|| format!("subscription key `{text}` is invalid"))?;
        let subscription = self
            .subscriptions
            .get(&key)
            .ok_or_else(|| {
                format!("subscription `{key}` no longer exists: its row was deleted from the subscriptions table or its [[endpoints]] entry was removed")
            })?;
        if !subscription.enabled {
            return Err(format!(
                "subscription `{key}` is disabled in the application"
            ));
        }
        Ok(subscription)
    }

    /// Turns an attempt's result into the delivery's next step, disabling the
    /// subscription on 410 Gone.
    async fn decide(&self, delivery: &ClaimedDelivery, report: &AttemptReport) -> NextStep {
        match classify(report.result) {
            Decision::Delivered => NextStep::Delivered,
            Decision::Retry => self.retry_or_fail(delivery, report),
            Decision::Disable => {
                if !self.disable(delivery).await {
                    return self.retry_or_fail(delivery, report);
                }
                // The row stays pending and is held while the subscription is disabled.
                NextStep::RetryAfter(Duration::ZERO)
            }
        }
    }

    fn retry_or_fail(&self, delivery: &ClaimedDelivery, report: &AttemptReport) -> NextStep {
        let attempts_made = u32::try_from(delivery.attempt).unwrap_or(u32::MAX);
        let jitter = rand::thread_rng().gen_range(-1.0..=1.0);
        let delay = next_delay(
            attempts_made,
            &self.settings.current().config.retry_schedule,
            report.retry_after,
            jitter,
        );
        let status = status_of(report.result);
        let error = report.error.as_deref().unwrap_or("");

        match delay {
            Some(delay) => {
                warn!(
                    delivery_id = delivery.id,
                    subscription = %delivery.subscription,
                    attempt = delivery.attempt,
                    status,
                    error,
                    retry_in_ms = delay.as_millis(),
                    "delivery failed, retrying"
                );
                NextStep::RetryAfter(delay)
            }
            None => {
                error!(
                    delivery_id = delivery.id,
                    subscription = %delivery.subscription,
                    attempt = delivery.attempt,
                    status,
                    error,
                    "delivery failed, no attempts left"
                );
                NextStep::Failed
            }
        }
    }

    /// Marks the subscription of `delivery` disabled, and returns whether that worked.
    async fn disable(&self, delivery: &ClaimedDelivery) -> bool {
        let reason = format!("receiver responded 410 Gone to delivery {}", delivery.id);
        let disabled = self
            .queue
            .disable_subscription(&self.client, &delivery.subscription, &reason)
            .await;
        match disabled {
            Ok(()) => {
                warn!(
                    delivery_id = delivery.id,
                    subscription = %delivery.subscription,
                    "receiver responded 410 Gone, subscription disabled"
                );
                true
            }
            Err(err) => {
                error!(
                    error = %err,
                    delivery_id = delivery.id,
                    subscription = %delivery.subscription,
                    "disabling subscription after 410 Gone failed"
                );
                false
            }
        }
    }

    /// Fails a delivery that cannot be sent at all, such as one whose
    /// subscription was deleted.
    async fn fail_unsendable(&self, delivery: &ClaimedDelivery, reason: &str, recorder: &Recorder) {
        error!(
            delivery_id = delivery.id,
            subscription = %delivery.subscription,
            reason,
            "delivery failed, subscription unavailable"
        );
        let report = unsent_report(reason.to_owned());
        self.record(delivery, report, NextStep::Failed, recorder)
            .await;
    }

    /// Retries a delivery whose subscription secret does not parse, because
    /// the administrator can fix the secret before the schedule runs out.
    async fn fail_unsigned(
        &self,
        delivery: &ClaimedDelivery,
        message: String,
        recorder: &Recorder,
    ) {
        let report = unsent_report(message);
        let next = self.retry_or_fail(delivery, &report);
        self.record(delivery, report, next, recorder).await;
    }

    async fn record(
        &self,
        delivery: &ClaimedDelivery,
        report: AttemptReport,
        next: NextStep,
        recorder: &Recorder,
    ) {
        crate::ops::metrics::delivery_recorded(&delivery.subscription, next);
        let attempt = FinishedAttempt {
            delivery_id: delivery.id,
            attempt: delivery.attempt,
            started_at: report.started_at,
            duration: report.duration,
            status: status_of(report.result),
            response_body: report.response_body,
            error: report.error,
            next,
        };
        match recorder.record(attempt).await {
            Ok(true) => {}
            Ok(false) => warn!(
                delivery_id = delivery.id,
                subscription = %delivery.subscription,
                attempt = delivery.attempt,
                "delivery lease ran out before the attempt was recorded"
            ),
            // The lease brings the row back, so the webhook is sent again.
            Err(err) => error!(
                error = %err,
                delivery_id = delivery.id,
                subscription = %delivery.subscription,
                attempt = delivery.attempt,
                "recording delivery attempt failed"
            ),
        }
    }
}

/// Collects the signing keys of every secret of a subscription. A
/// subscription without secrets gets unsigned requests.
fn signing_keys(subscription: &Subscription) -> Result<Vec<SigningKey>, String> {
    let mut keys = Vec::new();
    for secret in &subscription.secrets {
        let parsed = parse_secrets(secret)
            .map_err(|err| format!("subscription `{}`: {err}", subscription.key))?;
        keys.extend(parsed);
    }
    if keys.is_empty() {
        return Err(format!(
            "subscription `{}` has no signing secret, and webhooks are never sent unsigned: set a `whsec_` secret in its secret column, or `secret` or `secret_file` in its [[endpoints]] entry",
            subscription.key
        ));
    }
    Ok(keys)
}

fn unsent_report(error: String) -> AttemptReport {
    AttemptReport {
        result: AttemptResult::ConnectionFailed,
        started_at: std::time::SystemTime::now(),
        duration: Duration::ZERO,
        retry_after: None,
        response_body: None,
        error: Some(error),
    }
}

fn status_of(result: AttemptResult) -> Option<u16> {
    match result {
        AttemptResult::Status(code) => Some(code),
        AttemptResult::TimedOut | AttemptResult::ConnectionFailed => None,
    }
}

fn log_join_error(joined: Result<(), tokio::task::JoinError>) {
    if let Err(err) = joined {
        error!(error = %err, "delivery task panicked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use crate::routing::Owner;

    fn subscription(secrets: Vec<Secret>) -> Subscription {
        Subscription {
            key: SubscriptionKey::App(7),
            owner: Owner::Company(1),
            url: "https://hooks.example.com/7".to_owned(),
            secrets,
            events: None,
            enabled: true,
        }
    }

    #[test]
    fn subscription_without_secret_is_not_signed_or_sent() {
        let error = signing_keys(&subscription(Vec::new())).expect_err("no keys");
        assert!(error.contains("`sub_7` has no signing secret"), "{error}");
    }

    #[test]
    fn each_secret_gives_a_key() {
        let secrets = vec![
            Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned()),
            Secret::new("whsec_dGVzdC1zZWNyZXQtdHdv".to_owned()),
        ];
        let keys = signing_keys(&subscription(secrets)).expect("keys");
        assert_eq!(keys.len(), 2);
    }
}

//! What receivers see from the real daemon: retries with fresh signatures,
//! redirects, 410 Gone, `Retry-After`, rotated secrets, and redelivery with
//! the `walhook deliveries` and `walhook subscriptions` commands.
//!
//! Signatures are checked by the PyPI package `standardwebhooks`
//! (`pip install standardwebhooks`), not by walhook's own code.

mod support;

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use support::delivery::{
    add_subscription, change_stage, config_with_delivery, queue_rows, verify_with_python,
    wait_for_rows, walhook_ok, SEED_JOB,
};
use support::{expect_delivery, generate_secret, Daemon, Receiver, Reply, TestDb};

const WAIT: Duration = Duration::from_secs(30);

/// Delivery settings with a one-second schedule step and loopback allowed.
const FAST_RETRIES: &str = "timeout = \"5s\"
retry_schedule = [\"1s\", \"1s\", \"1s\"]
allow_private_targets = true";

struct Setup {
    db: TestDb,
    receiver: Receiver,
    secret: String,
    subscription_id: i64,
}

/// Creates a database with the seed job and one subscription to
/// `{receiver}/hook` signed with `secret`.
async fn setup_with_secret(secret: &str) -> Setup {
    let db = TestDb::with_schema().await;
    db.execute(SEED_JOB).await;
    let first_secret = secret.split_whitespace().next().expect("a secret");
    let receiver = Receiver::start(first_secret)
        .await
        .expect("receiver starts");
    let url = format!("{}/hook", receiver.url());
    let subscription_id = add_subscription(&db, &url, secret).await;
    Setup {
        db,
        receiver,
        secret: secret.to_owned(),
        subscription_id,
    }
}

async fn setup() -> Setup {
    setup_with_secret(&generate_secret()).await
}

#[tokio::test]
async fn retries_are_signed_anew() {
    let setup = setup().await;
    setup.receiver.push_replies(
        "/hook",
        [Reply::status(500), Reply::status(500), Reply::status(500)],
    );
    let mut daemon = Daemon::setup_and_start(&config_with_delivery(&setup.db, FAST_RETRIES));

    change_stage(&setup.db, 2).await;
    let mut requests = Vec::new();
    for attempt in 1..=4 {
        requests.push(expect_delivery(&setup.receiver, WAIT, &format!("attempt {attempt}")).await);
    }

    let ids: HashSet<&str> = requests
        .iter()
        .map(|request| request.header("webhook-id").unwrap_or(""))
        .collect();
    assert_eq!(ids.len(), 1, "one webhook-id on every attempt: {ids:?}");
    let timestamps: HashSet<&str> = requests
        .iter()
        .map(|request| request.header("webhook-timestamp").unwrap_or(""))
        .collect();
    assert!(
        timestamps.len() >= 2,
        "each attempt carries its own timestamp: {timestamps:?}"
    );
    for request in &requests {
        verify_with_python(&setup.secret, request);
    }

    let rows = wait_for_rows(&setup.db, 1, "delivered", WAIT).await;
    assert_eq!(rows[0].attempts, 4, "three failures and one success");
    daemon.terminate();
}

#[tokio::test]
async fn redirect_is_not_followed() {
    let setup = setup().await;
    setup.receiver.push_replies(
        "/hook",
        [Reply::status(302).with_header("location", "/elsewhere")],
    );
    let mut daemon = Daemon::setup_and_start(&config_with_delivery(&setup.db, FAST_RETRIES));

    change_stage(&setup.db, 2).await;
    let first = expect_delivery(&setup.receiver, WAIT, "the redirected attempt").await;
    let second = expect_delivery(&setup.receiver, WAIT, "the retry").await;
    assert_eq!(first.status.as_u16(), 302, "the receiver redirected");
    assert_eq!(second.path, "/hook", "the retry goes to the same URL");
    assert_eq!(second.method, "POST");

    let rows = wait_for_rows(&setup.db, 1, "delivered", WAIT).await;
    assert_eq!(rows[0].attempts, 2, "the 302 counted as a failed attempt");
    let paths: Vec<String> = setup
        .receiver
        .received()
        .iter()
        .map(|request| request.path.clone())
        .collect();
    assert_eq!(
        paths,
        ["/hook", "/hook"],
        "no request followed the Location"
    );
    daemon.terminate();
}

#[tokio::test]
async fn gone_disables_until_enabled() {
    let setup = setup().await;
    setup.receiver.push_replies("/hook", [Reply::status(410)]);
    let mut daemon = Daemon::setup_and_start(&config_with_delivery(&setup.db, FAST_RETRIES));

    change_stage(&setup.db, 2).await;
    let gone = expect_delivery(&setup.receiver, WAIT, "the attempt answered 410").await;
    assert_eq!(gone.status.as_u16(), 410);
    change_stage(&setup.db, 3).await;
    wait_for_rows(&setup.db, 2, "pending", WAIT).await;
    let held = setup.receiver.next_delivery(Duration::from_secs(3)).await;
    assert!(
        held.is_none(),
        "nothing is sent to a disabled subscription: {:?}",
        held.map(|request| request.body)
    );

    let listed = walhook_ok(
        &[
            "deliveries",
            "list",
            "--subscription",
            &setup.subscription_id.to_string(),
        ],
        &daemon.config_path(),
    );
    assert_eq!(listed.lines().count(), 3, "header and two rows:\n{listed}");
    assert!(listed.contains("HTTP 410"), "the 410 is listed:\n{listed}");

    let enabled = walhook_ok(
        &[
            "subscriptions",
            "enable",
            &setup.subscription_id.to_string(),
        ],
        &daemon.config_path(),
    );
    assert!(enabled.contains("enabled"), "{enabled}");
    let mut stages = Vec::new();
    for what in ["the held stage 2", "the held stage 3"] {
        let request = expect_delivery(&setup.receiver, WAIT, what).await;
        let body = request.json().expect("JSON body");
        stages.push(body["payload"]["jobs"][0]["newStage"].as_i64());
    }
    assert_eq!(stages, [Some(2), Some(3)], "held webhooks go out in order");
    wait_for_rows(&setup.db, 2, "delivered", WAIT).await;
    daemon.terminate();
}

#[tokio::test]
async fn retry_after_is_honored() {
    let setup = setup().await;
    setup
        .receiver
        .push_replies("/hook", [Reply::status(503).with_retry_after("3")]);
    let mut daemon = Daemon::setup_and_start(&config_with_delivery(&setup.db, FAST_RETRIES));

    change_stage(&setup.db, 2).await;
    let first = expect_delivery(&setup.receiver, WAIT, "the attempt answered 503").await;
    let second = expect_delivery(&setup.receiver, WAIT, "the retry").await;
    let gap = second
        .received_at
        .duration_since(first.received_at)
        .unwrap_or_default();
    assert!(
        gap >= Duration::from_millis(2900),
        "the retry waited for Retry-After: 3, not the 1 s step: {gap:?}"
    );
    assert!(
        gap < Duration::from_secs(6),
        "the retry came soon after: {gap:?}"
    );
    daemon.terminate();
}

#[tokio::test]
async fn rotated_secrets_each_verify() {
    let old = generate_secret();
    let new = generate_secret();
    let setup = setup_with_secret(&format!("{old} {new}")).await;
    let mut daemon = Daemon::setup_and_start(&config_with_delivery(&setup.db, FAST_RETRIES));

    change_stage(&setup.db, 2).await;
    let request = expect_delivery(&setup.receiver, WAIT, "the stage change").await;
    let signatures: Vec<&str> = request
        .header("webhook-signature")
        .unwrap_or_default()
        .split(' ')
        .collect();
    assert_eq!(
        signatures.len(),
        2,
        "one signature per secret: {signatures:?}"
    );
    assert!(
        signatures.iter().all(|value| value.starts_with("v1,")),
        "{signatures:?}"
    );
    verify_with_python(&old, &request);
    verify_with_python(&new, &request);
    daemon.terminate();
}

#[tokio::test]
async fn retry_failed_sends_again() {
    let setup = setup().await;
    setup.receiver.set_fallback("/hook", Reply::status(500));
    let config = config_with_delivery(
        &setup.db,
        "timeout = \"5s\"\nretry_schedule = [\"1s\"]\nallow_private_targets = true",
    );
    let mut daemon = Daemon::setup_and_start(&config);
    let before = SystemTime::now() - Duration::from_secs(60);

    change_stage(&setup.db, 2).await;
    let rows = wait_for_rows(&setup.db, 1, "failed", WAIT).await;
    assert_eq!(
        rows[0].attempts, 2,
        "the schedule of one step gives two attempts"
    );
    assert_eq!(rows[0].last_status, Some(500));
    let failed = walhook_ok(
        &["deliveries", "list", "--status", "failed", "--job", "5001"],
        &daemon.config_path(),
    );
    assert!(
        failed.contains(&format!("sub_{}", setup.subscription_id)),
        "the failed delivery is listed:\n{failed}"
    );

    setup.receiver.set_fallback("/hook", Reply::status(200));
    let since = chrono::DateTime::<chrono::Utc>::from(before).to_rfc3339();
    let retried = walhook_ok(
        &["deliveries", "retry", "--failed", "--since", &since],
        &daemon.config_path(),
    );
    assert!(retried.starts_with("1 failed"), "{retried}");
    let rows = wait_for_rows(&setup.db, 1, "delivered", WAIT).await;
    assert_eq!(rows[0].attempts, 3, "one more attempt after the retry");
    assert_eq!(setup.receiver.received().len(), 3);
    assert!(queue_rows(&setup.db).await[0].last_error.is_none());
    daemon.terminate();
}

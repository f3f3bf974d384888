//! End-to-end behaviour of the pipeline against a real PostgreSQL and a real
//! receiver: what raises a webhook, what does not, and delivery across
//! receiver failures and daemon restarts.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use support::{expect_delivery, generate_secret, Daemon, Receiver, Reply, TestDb};
use tokio_postgres::types::ToSql;

const WAIT: Duration = Duration::from_secs(30);
const COMPANY: i64 = 101;

/// A job of company 101, written before the slot exists so it raises nothing.
const SEED_JOB: &str = "
    INSERT INTO jobs (id, alt_id, account_id, company_id, stage_id, first_name, last_name,
                      address_1, city, state, zip)
    VALUES (5001, 'A-5001', 125, 101, 1, 'Robin', 'Home', '10 Elm St', 'Boulder', 'CO', '80301');
";

struct Setup {
    db: TestDb,
    receiver: Receiver,
}

/// Creates a database with the example schema, one job and a subscription of
/// company 101 to every event.
async fn setup() -> Setup {
    let db = TestDb::with_schema().await;
    db.execute(SEED_JOB).await;
    let secret = generate_secret();
    let receiver = Receiver::start(&secret).await.expect("receiver starts");
    let url = format!("{}/company-{COMPANY}", receiver.url());
    let client = db.connect().await;
    client
        .execute(
            "INSERT INTO webhook_subscriptions (company_id, url, secret) VALUES ($1, $2, $3)",
            &[&COMPANY as &(dyn ToSql + Sync), &url, &secret],
        )
        .await
        .expect("subscription inserted");
    Setup { db, receiver }
}

async fn queue_rows(db: &TestDb) -> Vec<(String, String, i32)> {
    let client = db.connect().await;
    let rows = client
        .query(
            "SELECT webhook_id, status, attempts FROM walhook.deliveries ORDER BY id",
            &[],
        )
        .await
        .expect("queue is readable");
    rows.iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

#[tokio::test]
async fn unwatched_change_sends_nothing() {
    let setup = setup().await;
    let mut daemon = Daemon::setup_and_start(&setup.db.config());

    setup
        .db
        .execute("UPDATE jobs SET email = 'robin@example.com', updated_at = now() WHERE id = 5001")
        .await;
    setup
        .db
        .execute("UPDATE jobs SET stage_id = 2 WHERE id = 5001")
        .await;

    let first = expect_delivery(&setup.receiver, WAIT, "the stage change").await;
    assert_eq!(
        first.event().as_deref(),
        Some("STAGE_CHANGED"),
        "the unwatched update sent nothing before it"
    );
    let extra = setup.receiver.next_delivery(Duration::from_secs(2)).await;
    assert!(
        extra.is_none(),
        "nothing after the stage change: {:?}",
        extra.map(|r| r.event())
    );
    assert_eq!(queue_rows(&setup.db).await.len(), 1, "one delivery stored");
    daemon.terminate();
}

#[tokio::test]
async fn unchanged_toast_next_to_watched_change() {
    let setup = setup().await;
    // A TOASTed address column: an UPDATE that leaves it alone sends it as
    // "unchanged" ('u') in the new tuple.
    let long_address: String = (0..4000)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    setup
        .db
        .execute(&format!(
            "ALTER TABLE jobs ALTER COLUMN address_2 SET STORAGE EXTERNAL;
             UPDATE jobs SET address_2 = '{long_address}' WHERE id = 5001;"
        ))
        .await;
    let mut daemon = Daemon::setup_and_start(&setup.db.config());

    setup
        .db
        .execute("UPDATE jobs SET stage_id = 3 WHERE id = 5001")
        .await;
    setup
        .db
        .execute("UPDATE jobs SET city = 'Louisville' WHERE id = 5001")
        .await;

    let stage = expect_delivery(&setup.receiver, WAIT, "the stage change").await;
    assert_eq!(
        stage.event().as_deref(),
        Some("STAGE_CHANGED"),
        "TOAST column is not an address change"
    );
    let address = expect_delivery(&setup.receiver, WAIT, "the address change").await;
    assert_eq!(address.event().as_deref(), Some("ADDRESS_CHANGED"));
    let body = address.json().expect("JSON body");
    assert_eq!(
        body["payload"]["jobs"][0]["altId"], "A-5001",
        "alt id read next to a TOAST value"
    );
    assert!(
        setup
            .receiver
            .next_delivery(Duration::from_secs(2))
            .await
            .is_none(),
        "no third webhook"
    );
    daemon.terminate();
}

#[tokio::test]
async fn subscription_added_with_job_change() {
    let setup = setup().await;
    let mut daemon = Daemon::setup_and_start(&setup.db.config());
    let url = format!("{}/company-102", setup.receiver.url());

    // The job comes first in the transaction and the subscription second; both
    // apply at commit.
    setup
        .db
        .execute(&format!(
            "BEGIN;
             INSERT INTO jobs (id, company_id, first_name, last_name, address_1, city, state, zip)
             VALUES (5002, 102, 'Lee', 'House', '22 Oak Ave', 'Denver', 'CO', '80202');
             INSERT INTO webhook_subscriptions (company_id, url, secret, events)
             VALUES (102, '{url}', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', '{{NEW_JOB_CREATED}}');
             COMMIT;"
        ))
        .await;

    let request = expect_delivery(
        &setup.receiver,
        WAIT,
        "the new job for the new subscription",
    )
    .await;
    assert_eq!(request.path, "/company-102");
    assert_eq!(request.event().as_deref(), Some("NEW_JOB_CREATED"));
    daemon.terminate();
}

#[tokio::test]
async fn receiver_500_then_200_retries_same_id() {
    let setup = setup().await;
    setup
        .receiver
        .push_replies(&format!("/company-{COMPANY}"), [Reply::status(500)]);
    let mut daemon = Daemon::setup_and_start(&setup.db.config());

    setup
        .db
        .execute("UPDATE jobs SET stage_id = 4 WHERE id = 5001")
        .await;

    let failed = expect_delivery(&setup.receiver, WAIT, "the first attempt").await;
    let retried = expect_delivery(&setup.receiver, WAIT, "the retry").await;
    assert_eq!(
        failed.header("webhook-id"),
        retried.header("webhook-id"),
        "same id on retry"
    );
    assert!(failed.signature_valid, "first attempt signed");
    assert!(retried.signature_valid, "retry signed");
    assert_eq!(failed.body, retried.body, "same body on retry");

    let rows = wait_for_status(&setup.db, "delivered").await;
    assert_eq!(rows[0].2, 2, "two attempts recorded");
    daemon.terminate();
}

/// Waits until the first queue row has `status`, and returns all rows.
async fn wait_for_status(db: &TestDb, status: &str) -> Vec<(String, String, i32)> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let rows = queue_rows(db).await;
        if rows.first().is_some_and(|row| row.1 == status) {
            return rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue never reached `{status}`: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn restart_mid_stream_loses_nothing() {
    let setup = setup().await;
    let mut daemon = Daemon::setup_and_start(&setup.db.config());

    for stage in 2..=5 {
        setup
            .db
            .execute(&format!(
                "UPDATE jobs SET stage_id = {stage} WHERE id = 5001"
            ))
            .await;
    }
    let before = expect_delivery(&setup.receiver, WAIT, "a webhook before the restart").await;
    daemon.kill9();
    for stage in 6..=9 {
        setup
            .db
            .execute(&format!(
                "UPDATE jobs SET stage_id = {stage} WHERE id = 5001"
            ))
            .await;
    }
    daemon.restart();
    for stage in [10, 1] {
        setup
            .db
            .execute(&format!(
                "UPDATE jobs SET stage_id = {stage} WHERE id = 5001"
            ))
            .await;
    }

    // Every stage change arrives at least once; a repeat carries the id of the
    // first copy.
    let mut id_by_stage: HashMap<i64, String> = HashMap::new();
    let mut pending = Some(before);
    let deadline = tokio::time::Instant::now() + WAIT;
    while id_by_stage.len() < 10 && tokio::time::Instant::now() < deadline {
        let request = match pending.take() {
            Some(request) => request,
            None => match setup.receiver.next_delivery(Duration::from_secs(1)).await {
                Some(request) => request,
                None => continue,
            },
        };
        let body = request.json().expect("JSON body");
        let stage = body["payload"]["jobs"][0]["newStage"]
            .as_i64()
            .expect("newStage is a number");
        let id = request
            .header("webhook-id")
            .expect("webhook-id header")
            .to_owned();
        let first_id = id_by_stage.entry(stage).or_insert_with(|| id.clone());
        assert_eq!(
            *first_id, id,
            "a repeat of stage {stage} has the same webhook-id"
        );
    }
    let stages: HashSet<i64> = id_by_stage.keys().copied().collect();
    assert_eq!(stages, (1..=10).collect(), "every stage change arrived");
    assert_eq!(
        queue_rows(&setup.db).await.len(),
        10,
        "each change stored once"
    );
    daemon.terminate();
}

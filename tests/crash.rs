//! A crash between the queue commit and the status update: the stored
//! transaction is neither lost nor stored twice after a restart.
//!
//! This binary contains one test because it sets `WALHOOK_FAILPOINT` in its own
//! environment, which the daemon child processes inherit.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use support::{generate_secret, Daemon, Receiver, TestDb};
use tokio_postgres::types::ToSql;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test]
async fn kill_between_queue_commit_and_status_update() {
    let db = TestDb::with_schema().await;
    db.execute(
        "INSERT INTO jobs (id, company_id, first_name, last_name, address_1, city, state, zip)
         VALUES (6001, 101, 'Kim', 'Place', '5 Pine Rd', 'Golden', 'CO', '80401')",
    )
    .await;
    let secret = generate_secret();
    let receiver = Receiver::start(&secret).await.expect("receiver starts");
    let url = format!("{}/company-101", receiver.url());
    let client = db.connect().await;
    client
        .execute(
            "INSERT INTO webhook_subscriptions (company_id, url, secret) VALUES ($1, $2, $3)",
            &[&101_i64 as &(dyn ToSql + Sync), &url, &secret],
        )
        .await
        .expect("subscription inserted");

    std::env::set_var("WALHOOK_FAILPOINT", "after-queue-commit");
    let mut daemon = Daemon::setup_and_start(&db.config());
    db.execute("UPDATE jobs SET stage_id = 2 WHERE id = 6001")
        .await;
    let status = wait_for_exit(&mut daemon).await;
    assert!(!status.success(), "the failpoint aborts the daemon");

    let row = client
        .query_one(
            "SELECT p.end_lsn::text, s.confirmed_flush_lsn::text, p.end_lsn > s.confirmed_flush_lsn
             FROM walhook.progress p JOIN pg_replication_slots s ON s.slot_name = p.slot",
            &[],
        )
        .await
        .expect("progress and slot are readable");
    let (stored, confirmed, ahead): (String, String, bool) = (row.get(0), row.get(1), row.get(2));
    assert!(
        ahead,
        "stored end LSN {stored} is not yet confirmed (slot at {confirmed})"
    );

    std::env::remove_var("WALHOOK_FAILPOINT");
    daemon.restart();
    db.execute("UPDATE jobs SET stage_id = 3 WHERE id = 6001")
        .await;

    let mut ids_by_stage: HashMap<i64, HashSet<String>> = HashMap::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while ids_by_stage.len() < 2 && tokio::time::Instant::now() < deadline {
        let Some(request) = receiver.next_delivery(Duration::from_secs(1)).await else {
            continue;
        };
        let body = request.json().expect("JSON body");
        let stage = body["payload"]["jobs"][0]["newStage"]
            .as_i64()
            .expect("newStage is a number");
        let id = request
            .header("webhook-id")
            .expect("webhook-id header")
            .to_owned();
        ids_by_stage.entry(stage).or_default().insert(id);
    }
    assert_eq!(
        ids_by_stage.len(),
        2,
        "both stage changes arrived: {ids_by_stage:?}"
    );
    for (stage, ids) in &ids_by_stage {
        assert_eq!(
            ids.len(),
            1,
            "stage {stage} always has one webhook-id: {ids:?}"
        );
    }
    let stored: i64 = client
        .query_one("SELECT count(*) FROM walhook.deliveries", &[])
        .await
        .expect("queue is readable")
        .get(0);
    assert_eq!(stored, 2, "the crashed transaction is stored once");
    daemon.terminate();
}

async fn wait_for_exit(daemon: &mut Daemon) -> std::process::ExitStatus {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(status) = daemon.try_exit_status() {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "daemon did not reach the failpoint"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

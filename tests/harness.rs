//! Smoke tests of the integration-test harness: the throwaway cluster, the
//! example schema and writes, and the webhook receiver.

mod support;

use std::time::Duration;

use support::{connect, generate_secret, Receiver, Reply, TestDb};
use walhook::demo::cluster::TempCluster;
use walhook::demo::writes;

#[tokio::test]
async fn cluster_serves_schema_to_walhook_role() {
    let db = TestDb::with_schema().await;

    // The role `walhook` logs in over TCP with SCRAM, as the daemon does.
    let client = connect(&db.walhook_url()).await;
    let accounts: i64 = client
        .query_one("SELECT count(*) FROM public.accounts", &[])
        .await
        .expect("walhook may read the seed rows")
        .get(0);
    let wal_level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .expect("SHOW works for any role")
        .get(0);
    let identity: i8 = client
        .query_one(
            "SELECT relreplident::\"char\" FROM pg_class WHERE oid = 'public.jobs'::regclass",
            &[],
        )
        .await
        .expect("pg_class is readable")
        .get(0);

    assert_eq!(accounts, 4, "seed accounts loaded");
    assert_eq!(
        wal_level, "logical",
        "cluster runs with wal_level = logical"
    );
    assert_eq!(identity as u8, b'f', "jobs has REPLICA IDENTITY FULL");
}

#[tokio::test]
async fn receiver_gets_post() {
    let secret = generate_secret();
    let receiver = Receiver::start(&secret).await.expect("receiver starts");
    receiver.push_replies("/company-101", [Reply::status(503).with_retry_after("1")]);
    let body = r#"{"event":"PING","payload":{"jobs":[{"id":"42161"}]}}"#;
    let client = reqwest::Client::new();
    let url = format!("{}/company-101", receiver.url());

    let first = client
        .post(&url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("receiver answers");
    let second = client
        .post(&url)
        .body(body)
        .send()
        .await
        .expect("receiver answers");

    assert_eq!(first.status().as_u16(), 503, "scripted reply comes first");
    assert_eq!(
        first.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..]),
        "scripted Retry-After is sent"
    );
    assert_eq!(
        second.status().as_u16(),
        200,
        "default reply follows the script"
    );
    let request = receiver
        .next_delivery(Duration::from_secs(5))
        .await
        .expect("the POST is recorded");
    assert_eq!(request.method, "POST");
    assert_eq!(request.path, "/company-101");
    assert_eq!(request.body, body.as_bytes());
    assert!(
        !request.signature_valid,
        "an unsigned request does not verify"
    );
}

#[tokio::test]
async fn example_writes_reach_logical_slot() {
    let db = TestDb::with_schema().await;
    let mut client = db.connect().await;
    let slot = db.slot();
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .expect("the slot is created");

    let subscriptions = writes::insert_subscriptions(&client, "http://127.0.0.1:9", "whsec_AAAA")
        .await
        .expect("subscriptions are inserted");
    let jobs = writes::make_example_writes(&mut client, subscriptions.second_company)
        .await
        .expect("every example write succeeds");

    let company: i64 = client
        .query_one("SELECT company_id FROM jobs WHERE id = $1", &[&jobs[0]])
        .await
        .expect("the first job exists")
        .get(0);
    let changes: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_logical_slot_peek_binary_changes($1, NULL, NULL, \
             'proto_version', '1', 'publication_names', 'walhook', 'messages', 'true')",
            &[&slot],
        )
        .await
        .expect("pgoutput decodes the writes")
        .get(0);
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .expect("the slot is dropped");

    assert_eq!(
        company,
        writes::SECOND_COMPANY,
        "the job moved to the second company"
    );
    assert!(
        changes > 20,
        "the slot holds the writes, found {changes} messages"
    );
}

#[tokio::test]
async fn private_cluster_recovers_after_kill() {
    let mut cluster = tokio::task::spawn_blocking(TempCluster::start)
        .await
        .expect("the start task does not panic")
        .expect("a private cluster starts");
    let url = cluster.superuser_url("app");
    connect(&url)
        .await
        .batch_execute("CREATE TABLE survivors (id int); INSERT INTO survivors VALUES (1)")
        .await
        .expect("the table is created");

    let cluster = tokio::task::spawn_blocking(move || {
        cluster.kill().expect("the postmaster is killed");
        cluster
            .restart()
            .expect("the cluster restarts after a crash");
        cluster
    })
    .await
    .expect("the restart task does not panic");

    let count: i64 = connect(&url)
        .await
        .query_one("SELECT count(*) FROM survivors", &[])
        .await
        .expect("the table survived the crash")
        .get(0);
    assert_eq!(count, 1, "committed rows survive SIGKILL");
    drop(tokio::task::spawn_blocking(move || drop(cluster)).await);
}

#[tokio::test]
async fn demo_reports_exited_daemon() {
    // `true` accepts any arguments and exits 0, so `walhook setup` passes and
    // `walhook run` exits at once; every step before the wait must work.
    let exit_code = walhook::demo::run_with(std::path::Path::new("/bin/true"))
        .await
        .expect("cluster, schema, receiver and setup are prepared");
    assert_eq!(
        exit_code,
        std::process::ExitCode::FAILURE,
        "a daemon that exits early fails the demo"
    );
}

//! A failing receiver costs the others nothing: a hanging endpoint does not
//! delay another endpoint's webhooks, the replication slot keeps advancing
//! while a receiver is down, and private targets are rejected before any
//! connection. Runs the real daemon against a real PostgreSQL.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::delivery::{
    add_subscription, change_stage, config_with_delivery, queue_rows, wait_for_rows, SEED_JOB,
};
use support::{expect_delivery, generate_secret, Daemon, Receiver, Reply, TestDb};

const WAIT: Duration = Duration::from_secs(30);

async fn seeded_db() -> TestDb {
    let db = TestDb::with_schema().await;
    db.execute(SEED_JOB).await;
    db
}

#[tokio::test]
async fn hanging_receiver_does_not_delay_others() {
    let db = seeded_db().await;
    let secret = generate_secret();
    let hanging = Receiver::start(&secret).await.expect("receiver starts");
    let healthy = Receiver::start(&secret).await.expect("receiver starts");
    hanging.set_fallback("/hook", Reply::status(200).after(Duration::from_secs(30)));
    add_subscription(&db, &format!("{}/hook", hanging.url()), &secret).await;
    add_subscription(&db, &format!("{}/hook", healthy.url()), &secret).await;
    let config = config_with_delivery(
        &db,
        "timeout = \"2s\"\nretry_schedule = [\"1s\", \"1s\", \"1s\"]\nallow_private_targets = true",
    );
    let mut daemon = Daemon::setup_and_start(&config);

    // The first change also waits for the replication stream to start.
    change_stage(&db, 2).await;
    expect_delivery(&healthy, WAIT, "stage 2 at the healthy receiver").await;
    for stage in 3..=7 {
        let written = Instant::now();
        change_stage(&db, stage).await;
        expect_delivery(
            &healthy,
            WAIT,
            &format!("stage {stage} at the healthy receiver"),
        )
        .await;
        let latency = written.elapsed();
        assert!(
            latency < Duration::from_secs(1),
            "stage {stage} reached the healthy receiver after {latency:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let deadline = Instant::now() + WAIT;
    loop {
        let rows = queue_rows(&db).await;
        let timed_out = rows.iter().any(|row| {
            row.last_error
                .as_deref()
                .is_some_and(|error| error.contains("timed out"))
        });
        if timed_out {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no attempt to the hanging receiver timed out: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    daemon.terminate();
}

#[tokio::test]
async fn slot_advances_while_receiver_down() {
    let db = seeded_db().await;
    let secret = generate_secret();
    let receiver = Receiver::start(&secret).await.expect("receiver starts");
    receiver.set_fallback("/hook", Reply::status(503));
    add_subscription(&db, &format!("{}/hook", receiver.url()), &secret).await;
    let config = config_with_delivery(
        &db,
        "timeout = \"2s\"\nretry_schedule = [\"1s\", \"1s\", \"1s\", \"1s\", \"1s\", \"1s\"]\n\
         allow_private_targets = true",
    );
    let mut daemon = Daemon::setup_and_start(&config);
    let client = db.connect().await;
    let slot = db.slot();

    let before = confirmed_lsn(&client, &slot).await;
    for stage in 2..=4 {
        change_stage(&db, stage).await;
    }
    let written: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("current WAL position")
        .get(0);

    let deadline = Instant::now() + WAIT;
    loop {
        let advanced = client
            .query_one(
                "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots
                 WHERE slot_name = $1",
                &[&slot, &written],
            )
            .await
            .expect("the slot exists")
            .get::<_, bool>(0);
        if advanced {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "confirmed_flush_lsn stayed at `{}` (was `{before}`) below `{written}`",
            confirmed_lsn(&client, &slot).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    println!(
        "confirmed_flush_lsn `{before}` before the writes, `{}` after, WAL at `{written}` after \
         the writes",
        confirmed_lsn(&client, &slot).await
    );
    let rows = queue_rows(&db).await;
    assert_eq!(rows.len(), 3, "each change is stored: {rows:?}");
    assert!(
        rows.iter().all(|row| row.status == "pending"),
        "no webhook was delivered: {rows:?}"
    );
    assert!(
        receiver
            .received()
            .iter()
            .all(|request| request.status.as_u16() == 503),
        "the receiver only failed"
    );
    daemon.terminate();
}

async fn confirmed_lsn(client: &tokio_postgres::Client, slot: &str) -> String {
    let row = client
        .query_one(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("the slot exists");
    row.get(0)
}

/// Accepts TCP connections on `ip:0` and counts them, without responding.
async fn counting_listener(ip: &str) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind((ip, 0))
        .await
        .unwrap_or_else(|err| panic!("cannot bind {ip}:0: {err}"));
    let addr = listener.local_addr().expect("bound address");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            drop(socket);
        }
    });
    (format!("http://{addr}/hook"), accepted)
}

/// Stores a webhook to `url` with a daemon of `delivery` settings and returns
/// the stored error of its only, failed delivery.
async fn rejected_error(url: &str, delivery: &str) -> String {
    let db = seeded_db().await;
    add_subscription(&db, url, &generate_secret()).await;
    let mut daemon = Daemon::setup_and_start(&config_with_delivery(&db, delivery));

    change_stage(&db, 2).await;
    let rows = wait_for_rows(&db, 1, "failed", WAIT).await;
    daemon.terminate();
    assert_eq!(rows[0].attempts, 1, "an empty schedule gives one attempt");
    assert_eq!(rows[0].last_status, None, "no response: {:?}", rows[0]);
    rows[0].last_error.clone().expect("the rejection is stored")
}

#[tokio::test]
async fn address_outside_allowed_networks_rejected() {
    let (url, accepted) = counting_listener("127.0.0.2").await;
    let error = rejected_error(
        &url,
        "retry_schedule = []\nallow_private_targets = false\nallowed_networks = [\"127.0.0.1/32\"]",
    )
    .await;

    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "no connection reached 127.0.0.2"
    );
    assert!(error.contains("`127.0.0.2`"), "names the address: {error}");
    assert!(
        error.contains("delivery.allowed_networks"),
        "names the setting: {error}"
    );
    assert!(
        error.contains("delivery.allow_private_targets"),
        "names the setting: {error}"
    );
}

#[tokio::test]
async fn loopback_host_name_rejected() {
    let (url, accepted) = counting_listener("127.0.0.1").await;
    let url = url.replace("127.0.0.1", "localhost");
    let error = rejected_error(&url, "retry_schedule = []\nallow_private_targets = false").await;

    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "no connection reached 127.0.0.1"
    );
    assert!(
        error.contains("`127.0.0.1`") || error.contains("`::1`"),
        "names the resolved address: {error}"
    );
    assert!(error.contains("is loopback"), "{error}");
    assert!(
        error.contains("delivery.allow_private_targets"),
        "names the setting: {error}"
    );
}

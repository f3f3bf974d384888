//! Faults on purpose: schema changes while streaming, TRUNCATE, a large
//! transaction, WAL retention while idle, a standby instance, PostgreSQL
//! restarts and outages, the queue database going away, a slow walsender
//! timeout, a crash loop, panics and errors injected into the pipeline, and
//! an invalidated slot. In every case no change is lost and nothing is
//! confirmed that is not stored, except the changes of an invalidated slot,
//! which PostgreSQL removed and walhook reports.

mod support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use support::{
    expect_delivery, generate_secret, get_readyz, listen_addr, wait_for_readyz, walhook, Daemon,
    Receiver, Reply, TestDb,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;
use walhook::demo::cluster::{ClusterOptions, TempCluster, APP_DATABASE};
use walhook::demo::{config_for, free_loopback_addr, writes, SCHEMA_SQL};
use walhook::replication::Lsn;

const WAIT: Duration = Duration::from_secs(40);
const COMPANY: i64 = 101;

const SEED_JOB: &str = "
    INSERT INTO jobs (id, company_id, account_id, first_name, last_name, address_1, city, state, zip)
    VALUES (7001, 101, 125, 'Robin', 'Home', '10 Elm St', 'Boulder', 'CO', '80301');
    INSERT INTO tickets (id, job_id, template_id, status) VALUES (7001, 7001, 41, 'Draft');
";

async fn subscribe(client: &Client, receiver: &Receiver, secret: &str) {
    let url = format!("{}/company-{COMPANY}", receiver.url());
    client
        .execute(
            "INSERT INTO webhook_subscriptions (company_id, url, secret) VALUES ($1, $2, $3)",
            &[&COMPANY as &(dyn ToSql + Sync), &url, &secret],
        )
        .await
        .expect("subscription inserted");
}

/// Creates a database in the shared cluster with one job, one ticket and a
/// subscription of company 101 to every event.
async fn prepared_db() -> (TestDb, Receiver) {
    let db = TestDb::with_schema().await;
    db.execute(SEED_JOB).await;
    let secret = generate_secret();
    let receiver = Receiver::start(&secret).await.expect("receiver starts");
    subscribe(&db.connect().await, &receiver, &secret).await;
    (db, receiver)
}

/// Inserts `key = value` right after the `[section]` header of a config.
fn with_setting(config: &str, section: &str, setting: &str) -> String {
    config.replacen(
        &format!("[{section}]\n"),
        &format!("[{section}]\n{setting}\n"),
        1,
    )
}

async fn slot_lag_bytes(client: &Client, slot: &str) -> i64 {
    client
        .query_one(
            "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .expect("slot is readable")
        .get(0)
}

async fn stored_deliveries(client: &Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM walhook.deliveries", &[])
        .await
        .expect("queue is readable")
        .get(0)
}

/// Waits for the STAGE_CHANGED webhook whose new stage is `stage`, skipping
/// repeats of earlier stages: delivery is at least once, so a webhook whose
/// result was not recorded before a failure is sent again.
async fn expect_stage(receiver: &Receiver, stage: i64, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let received = new_stage(receiver, what, remaining).await;
        if received == stage {
            return;
        }
        assert!(
            received < stage,
            "{what}: stage {received} arrived before {stage}"
        );
    }
}

async fn new_stage_within(receiver: &Receiver, what: &str) -> i64 {
    new_stage(receiver, what, WAIT).await
}

async fn new_stage(receiver: &Receiver, what: &str, wait: Duration) -> i64 {
    let request = expect_delivery(receiver, wait, what).await;
    let body = request.json().expect("JSON body");
    assert_eq!(body["event"], "STAGE_CHANGED", "{what}: {body}");
    body["payload"]["jobs"][0]["newStage"]
        .as_i64()
        .expect("newStage is a number")
}

/// Waits until the daemon's log contains `needle`, and returns the log.
async fn wait_for_log(daemon: &Daemon, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let log = daemon.log();
        if log.contains(needle) {
            return log;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "log never contained `{needle}`:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn schema_changes_while_streaming() {
    let (db, receiver) = prepared_db().await;
    let mut daemon = Daemon::setup_and_start(&db.config());

    db.execute(
        "ALTER TABLE jobs ADD COLUMN notes text; UPDATE jobs SET stage_id = 2 WHERE id = 7001",
    )
    .await;
    assert_eq!(
        new_stage_within(&receiver, "stage after ADD COLUMN").await,
        2
    );
    db.execute("ALTER TABLE jobs DROP COLUMN email; UPDATE jobs SET stage_id = 3 WHERE id = 7001")
        .await;
    assert_eq!(
        new_stage_within(&receiver, "stage after dropping an unwatched column").await,
        3
    );

    // A watched column renamed: the change stops the stream, and is never
    // reported as the column changing to NULL.
    db.execute("ALTER TABLE jobs RENAME COLUMN stage_changed_at TO stage_since")
        .await;
    db.execute("UPDATE jobs SET stage_id = 4 WHERE id = 7001")
        .await;
    let log = wait_for_log(&daemon, "walhook skip --lsn").await;
    assert!(
        log.contains("`stage_changed_at`"),
        "the error names the missing column:\n{log}"
    );
    assert!(
        receiver
            .next_delivery(Duration::from_secs(2))
            .await
            .is_none(),
        "nothing sent for the broken change"
    );
    let client = db.connect().await;
    assert_eq!(
        stored_deliveries(&client).await,
        2,
        "nothing stored past the broken change"
    );

    // The operator skips that transaction and fixes the mapping's column.
    let lsn = log
        .split("walhook skip --lsn ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| c == '`' || c.is_whitespace()).next())
        .expect("the log names the LSN to skip")
        .to_owned();
    let config = daemon.config_path();
    let output = walhook(&[
        "skip",
        "--config",
        &config.display().to_string(),
        "--lsn",
        &lsn,
    ]);
    assert!(
        output.status.success(),
        "walhook skip: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    db.execute("ALTER TABLE jobs RENAME COLUMN stage_since TO stage_changed_at")
        .await;
    db.execute("UPDATE jobs SET stage_id = 5 WHERE id = 7001")
        .await;

    let request = expect_delivery(&receiver, WAIT, "the stage change after the skip").await;
    let body = request.json().expect("JSON body");
    assert_eq!(body["payload"]["jobs"][0]["newStage"], 5);
    assert_eq!(
        body["payload"]["jobs"][0]["previousStage"], 4,
        "the skipped change raised nothing"
    );
    daemon.terminate();
}

#[tokio::test]
async fn truncate_is_logged_and_passed() {
    let (db, receiver) = prepared_db().await;
    let mut daemon = Daemon::setup_and_start(&db.config());

    db.execute("TRUNCATE hes_scores").await;
    db.execute("UPDATE jobs SET stage_id = 2 WHERE id = 7001")
        .await;

    assert_eq!(new_stage_within(&receiver, "stage after TRUNCATE").await, 2);
    wait_for_log(&daemon, "table truncated").await;
    daemon.terminate();
}

#[tokio::test]
async fn large_transaction_is_batched() {
    const ROWS: i64 = 25_000;
    let (db, receiver) = prepared_db().await;
    let mut daemon = Daemon::setup_and_start(&db.config());

    db.execute(&format!(
        "INSERT INTO jobs (id, company_id, first_name, last_name, address_1, city, state, zip)
         SELECT 100000 + g, 101, 'Bulk', 'Import', g || ' Main St', 'Denver', 'CO', '80202'
         FROM generate_series(1, {ROWS}) AS g"
    ))
    .await;

    let mut job_ids = HashSet::new();
    let mut webhook_ids = HashSet::new();
    while (job_ids.len() as i64) < ROWS {
        let request = expect_delivery(&receiver, WAIT, "a batch of created jobs").await;
        let body = request.json().expect("JSON body");
        let jobs = body["payload"]["jobs"]
            .as_array()
            .expect("jobs array")
            .clone();
        assert!(jobs.len() <= 100, "a webhook holds at most max_batch items");
        webhook_ids.insert(request.header("webhook-id").expect("webhook-id").to_owned());
        for job in jobs {
            job_ids.insert(job["id"].as_i64().expect("numeric id"));
        }
    }
    assert_eq!(job_ids.len() as i64, ROWS, "every created job arrived");
    assert_eq!(
        webhook_ids.len() as i64,
        ROWS / 100,
        "full batches of 100 items"
    );
    daemon.terminate();
}

#[tokio::test]
async fn unrelated_writes_do_not_retain_wal() {
    let (db, _receiver) = prepared_db().await;
    let config = with_setting(&db.config(), "source", "status_interval = \"1s\"");
    let mut daemon = Daemon::setup_and_start(&config);
    wait_for_log(&daemon, "replication started").await;

    let client = db.connect().await;
    let wal_position = "SELECT pg_current_wal_lsn()::text";
    let before: String = client
        .query_one(wal_position, &[])
        .await
        .expect("WAL position")
        .get(0);
    client
        .batch_execute(
            "CREATE TABLE audit_log (id bigserial PRIMARY KEY, payload text);
             INSERT INTO audit_log (payload) SELECT repeat(md5(g::text), 32) FROM generate_series(1, 40000) g;
             INSERT INTO audit_log (payload) SELECT repeat(md5(g::text), 32) FROM generate_series(1, 40000) g;",
        )
        .await
        .expect("unrelated writes");
    let written: i64 = client
        .query_one(
            "SELECT (pg_current_wal_lsn() - $1::text::pg_lsn)::bigint",
            &[&before],
        )
        .await
        .expect("WAL difference")
        .get(0);
    assert!(
        written > 50_000_000,
        "the writes produced WAL: {written} bytes"
    );

    let deadline = tokio::time::Instant::now() + WAIT;
    let mut lag = written;
    while lag > 1_000_000 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        lag = slot_lag_bytes(&client, &db.slot()).await;
    }
    assert!(
        lag <= 1_000_000,
        "slot still retains {lag} of {written} bytes"
    );
    daemon.terminate();
}

#[tokio::test]
async fn standby_takes_over_slot() {
    let (db, receiver) = prepared_db().await;
    let mut active = Daemon::setup_and_start(&db.config());
    db.execute("UPDATE jobs SET stage_id = 2 WHERE id = 7001")
        .await;
    assert_eq!(
        new_stage_within(&receiver, "stage from the active instance").await,
        2
    );

    let mut standby = Daemon::start(&db.config());
    wait_for_log(&standby, "in use by another process").await;
    active.kill9();
    db.execute("UPDATE jobs SET stage_id = 3 WHERE id = 7001")
        .await;

    expect_stage(&receiver, 3, "stage after the standby took over").await;
    wait_for_log(&standby, "replication started").await;
    standby.terminate();
}

/// Starts a private cluster with the example schema in `app`, for tests that stop it.
async fn private_cluster() -> TempCluster {
    private_cluster_with(ClusterOptions::default()).await
}

/// Starts a private cluster like [`private_cluster`], with the settings of `options`.
async fn private_cluster_with(options: ClusterOptions) -> TempCluster {
    let cluster = tokio::task::spawn_blocking(move || TempCluster::start_with(options))
        .await
        .expect("cluster task")
        .expect("cluster starts");
    cluster
        .execute(APP_DATABASE, SCHEMA_SQL)
        .expect("schema loads");
    cluster
        .execute(APP_DATABASE, &writes::admin_setup_sql(APP_DATABASE))
        .expect("grants");
    cluster.execute(APP_DATABASE, SEED_JOB).expect("seed job");
    cluster
}

fn private_config(cluster: &TempCluster) -> String {
    let listen = free_loopback_addr().expect("free port");
    config_for(&cluster.walhook_url(APP_DATABASE), "walhook", listen)
}

#[tokio::test]
async fn postgres_restarts_mid_stream() {
    let mut cluster = private_cluster().await;
    let secret = generate_secret();
    let receiver = Receiver::start(&secret).await.expect("receiver starts");
    subscribe(
        &support::connect(&cluster.superuser_url(APP_DATABASE)).await,
        &receiver,
        &secret,
    )
    .await;
    let mut daemon = Daemon::setup_and_start(&private_config(&cluster));
    cluster
        .execute(APP_DATABASE, "UPDATE jobs SET stage_id = 2 WHERE id = 7001")
        .expect("write");
    expect_stage(&receiver, 2, "stage before the restart").await;

    // A fast shutdown, then a crash of the server.
    cluster = tokio::task::spawn_blocking(move || {
        cluster.restart().expect("fast restart");
        cluster
    })
    .await
    .expect("restart task");
    cluster
        .execute(APP_DATABASE, "UPDATE jobs SET stage_id = 3 WHERE id = 7001")
        .expect("write");
    expect_stage(&receiver, 3, "stage after a fast restart").await;

    cluster = tokio::task::spawn_blocking(move || {
        cluster.kill().expect("SIGKILL the postmaster");
        cluster.restart().expect("start after crash");
        cluster
    })
    .await
    .expect("restart task");
    cluster
        .execute(APP_DATABASE, "UPDATE jobs SET stage_id = 4 WHERE id = 7001")
        .expect("write");
    expect_stage(&receiver, 4, "stage after a crash").await;
    let log = wait_for_log(&daemon, "reconnecting").await;
    assert!(
        log.contains("replication started"),
        "the daemon reconnected"
    );
    daemon.terminate();
    drop(cluster);
}

#[tokio::test]
async fn queue_outage_pauses_confirmation() {
    let source = private_cluster().await;
    let mut queue = tokio::task::spawn_blocking(TempCluster::start)
        .await
        .expect("cluster task")
        .expect("queue cluster starts");
    queue
        .execute(APP_DATABASE, "GRANT CREATE ON DATABASE app TO walhook")
        .expect("queue grants");
    let secret = generate_secret();
    let receiver = Receiver::start(&secret).await.expect("receiver starts");
    let source_client = support::connect(&source.superuser_url(APP_DATABASE)).await;
    subscribe(&source_client, &receiver, &secret).await;
    let config = with_setting(
        &private_config(&source),
        "queue",
        &format!("url = \"{}\"", queue.walhook_url(APP_DATABASE)),
    );
    let mut daemon = Daemon::setup_and_start(&config);
    source
        .execute(APP_DATABASE, "UPDATE jobs SET stage_id = 2 WHERE id = 7001")
        .expect("write");
    assert_eq!(
        new_stage_within(&receiver, "stage with the queue up").await,
        2
    );

    queue = tokio::task::spawn_blocking(move || {
        queue.stop().expect("queue stops");
        queue
    })
    .await
    .expect("stop task");
    source
        .execute(APP_DATABASE, "UPDATE jobs SET stage_id = 3 WHERE id = 7001")
        .expect("write");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lag = slot_lag_bytes(&source_client, "walhook").await;
    assert!(lag > 0, "nothing confirmed while the queue is down");

    queue = tokio::task::spawn_blocking(move || {
        queue.restart().expect("queue starts again");
        queue
    })
    .await
    .expect("start task");
    expect_stage(&receiver, 3, "stage after the queue returned").await;
    daemon.terminate();
    drop(queue);
}

#[tokio::test]
async fn hanging_receivers_do_not_starve_walsender() {
    let cluster = private_cluster().await;
    cluster
        .execute(
            APP_DATABASE,
            "ALTER SYSTEM SET wal_sender_timeout = '5s'; SELECT pg_reload_conf();",
        )
        .expect("short walsender timeout");
    let secret = generate_secret();
    let receiver = Receiver::start(&secret).await.expect("receiver starts");
    receiver.set_fallback(
        &format!("/company-{COMPANY}"),
        Reply::status(200).after(Duration::from_secs(60)),
    );
    let client = support::connect(&cluster.superuser_url(APP_DATABASE)).await;
    subscribe(&client, &receiver, &secret).await;
    let config = with_setting(&private_config(&cluster), "delivery", "concurrency = 2");
    let config = config.replace("timeout = \"5s\"", "timeout = \"30s\"");
    let mut daemon = Daemon::setup_and_start(&config);
    wait_for_log(&daemon, "replication started").await;

    let walsender_pid = |client: Client| async move {
        let row = client
            .query_one(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'walhook'",
                &[],
            )
            .await
            .expect("slot is readable");
        (row.get::<_, Option<i32>>(0), client)
    };
    let (first_pid, client) = walsender_pid(client).await;
    for stage in 2..=8 {
        client
            .execute("UPDATE jobs SET stage_id = $1 WHERE id = 7001", &[&stage])
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let (last_pid, client) = walsender_pid(client).await;
    assert!(first_pid.is_some(), "the slot is streaming");
    assert_eq!(first_pid, last_pid, "the walsender was never restarted");
    let lag = slot_lag_bytes(&client, "walhook").await;
    assert!(
        lag < 1_000_000,
        "confirmed position follows although receivers hang: {lag} bytes behind"
    );
    assert!(
        !daemon.log().contains("replication session failed"),
        "no session failed:\n{}",
        daemon.log()
    );
    daemon.kill9();
}

/// Writes `count` transactions, each raising exactly one webhook with a
/// unique key, and returns the keys.
async fn write_mixed(client: &Client, count: usize) -> Vec<String> {
    let mut keys = Vec::with_capacity(count);
    for i in 0..count {
        let key = match i % 3 {
            0 => {
                let message = format!("note {i}");
                client
                    .execute(
                        "INSERT INTO chats (job_id, account_id, message) VALUES (7001, 125, $1)",
                        &[&message],
                    )
                    .await
                    .expect("chat insert");
                format!("CHAT_POSTED/{message}")
            }
            1 => {
                let label = i as i32;
                client
                    .execute(
                        "INSERT INTO hes_scores (job_id, label_number, assessment_type, base_score, assessment_date)
                         VALUES (7001, $1, 'initial', 5, '2026-01-02')",
                        &[&label],
                    )
                    .await
                    .expect("score insert");
                format!("HES_SCORE_OBTAINED/{label}")
            }
            _ => {
                let status = format!("Step {i}");
                client
                    .execute("UPDATE tickets SET status = $1 WHERE id = 7001", &[&status])
                    .await
                    .expect("ticket update");
                format!("TICKET_STATUS_CHANGED/{status}")
            }
        };
        keys.push(key);
        tokio::time::sleep(Duration::from_millis(8)).await;
    }
    keys
}

fn webhook_key(body: &serde_json::Value) -> String {
    let event = body["event"].as_str().unwrap_or_default();
    let payload = &body["payload"];
    match event {
        "CHAT_POSTED" => format!(
            "{event}/{}",
            payload["data"][0]["message"].as_str().unwrap_or_default()
        ),
        "HES_SCORE_OBTAINED" => format!("{event}/{}", payload["hesData"][0]["hesLabelNumber"]),
        "TICKET_STATUS_CHANGED" => format!(
            "{event}/{}",
            payload["tickets"][0]["statusTo"]
                .as_str()
                .unwrap_or_default()
        ),
        _ => format!("{event}/unexpected"),
    }
}

#[tokio::test]
async fn crash_loop_loses_nothing() {
    const TRANSACTIONS: usize = 1_500;
    let (db, receiver) = prepared_db().await;
    let mut daemon = Daemon::setup_and_start(&db.config());
    wait_for_log(&daemon, "replication started").await;

    let client = db.connect().await;
    let writer = tokio::spawn(async move { write_mixed(&client, TRANSACTIONS).await });
    let mut kills = 0;
    while !writer.is_finished() {
        let pause = rand::Rng::gen_range(&mut rand::thread_rng(), 300..1200);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        daemon.kill9();
        kills += 1;
        daemon.restart();
    }
    let expected: HashSet<String> = writer.await.expect("writer task").into_iter().collect();

    let mut ids_by_key: HashMap<String, HashSet<String>> = HashMap::new();
    let mut received = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while ids_by_key.len() < expected.len() && tokio::time::Instant::now() < deadline {
        let Some(request) = receiver.next_delivery(Duration::from_secs(1)).await else {
            continue;
        };
        received += 1;
        let key = webhook_key(&request.json().expect("JSON body"));
        let id = request.header("webhook-id").expect("webhook-id").to_owned();
        ids_by_key.entry(key).or_default().insert(id);
    }
    let arrived: HashSet<String> = ids_by_key.keys().cloned().collect();
    let lost = expected.difference(&arrived).count();
    let extra: Vec<&String> = arrived.difference(&expected).collect();
    println!(
        "crash loop: {TRANSACTIONS} transactions, {kills} kills, {} webhooks expected, {received} received, {} repeated, {lost} lost",
        expected.len(),
        received - arrived.len()
    );
    assert_eq!(lost, 0, "every expected webhook arrived");
    assert!(extra.is_empty(), "no unexpected webhooks: {extra:?}");
    for (key, ids) in &ids_by_key {
        assert_eq!(
            ids.len(),
            1,
            "repeats of {key} carry one webhook-id: {ids:?}"
        );
    }
    daemon.terminate();
}

#[tokio::test]
async fn missing_slot_is_created_only_before_progress() {
    let (db, receiver) = prepared_db().await;
    let config = db.config();
    let mut daemon = Daemon::setup_and_start(&config);
    wait_for_log(&daemon, "replication started").await;
    daemon.terminate();

    // Before walhook stored any progress, a missing slot is created, as
    // `walhook setup` would.
    db.execute(&format!("SELECT pg_drop_replication_slot('{}')", db.slot()))
        .await;
    daemon.restart();
    wait_for_log(&daemon, "replication slot was missing and is created").await;
    wait_for_log(&daemon, "replication started").await;
    db.execute("UPDATE jobs SET stage_id = 2 WHERE id = 7001")
        .await;
    assert_eq!(
        new_stage_within(&receiver, "stage after the slot was created").await,
        2
    );
    daemon.terminate();

    // Once progress is stored, a missing slot is a gap: the daemon stops
    // with exit status 78 and names it.
    db.execute(&format!("SELECT pg_drop_replication_slot('{}')", db.slot()))
        .await;
    db.execute("UPDATE jobs SET stage_id = 3 WHERE id = 7001")
        .await;
    daemon.restart();
    let exit = wait_for_exit(&mut daemon).await;
    let log = daemon.log();
    assert_eq!(exit.code(), Some(78), "exit status 78:\n{log}");
    assert!(
        log.contains("is missing, but the queue has stored progress up to"),
        "the error names the gap:\n{log}"
    );

    // With permission, the slot is created and the gap logged.
    let config = format!("{config}\n[replication]\nrecreate_invalidated_slot = true\n");
    let mut daemon = Daemon::start(&config);
    wait_for_log(&daemon, "replication slot was dropped and is re-created").await;
    wait_for_log(&daemon, "replication started").await;
    db.execute("UPDATE jobs SET stage_id = 4 WHERE id = 7001")
        .await;
    assert_eq!(
        new_stage_within(&receiver, "stage after the slot was re-created").await,
        4,
        "the change in the gap is not delivered, the one after it is"
    );
    daemon.terminate();
}

/// Runs `f` on the cluster in a blocking task and returns the cluster;
/// `step` names `f` in the panic message when it fails.
async fn with_cluster(
    mut cluster: TempCluster,
    step: &'static str,
    f: impl FnOnce(&mut TempCluster) -> anyhow::Result<()> + Send + 'static,
) -> TempCluster {
    tokio::task::spawn_blocking(move || {
        if let Err(err) = f(&mut cluster) {
            panic!("{step} failed: {err:#}");
        }
        cluster
    })
    .await
    .expect("cluster task")
}

/// Returns the `wal_status` and `confirmed_flush_lsn` of slot `walhook`.
async fn slot_state(client: &Client) -> (Option<String>, Option<String>) {
    let row = client
        .query_one(
            "SELECT wal_status, confirmed_flush_lsn::text
             FROM pg_replication_slots WHERE slot_name = 'walhook'",
            &[],
        )
        .await
        .expect("slot `walhook` exists");
    (row.get(0), row.get(1))
}

/// Waits until the daemon exits, panicking after [`WAIT`].
async fn wait_for_exit(daemon: &mut Daemon) -> std::process::ExitStatus {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(status) = daemon.try_exit_status() {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the daemon still runs after {WAIT:?}:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn invalidated_slot_stops_or_recreates() {
    // The slot may hold back 1 MB of WAL, so two segment switches and a
    // checkpoint invalidate it.
    let options = ClusterOptions {
        extra_conf: "max_slot_wal_keep_size = 1MB\nmax_wal_size = 32MB\nmin_wal_size = 32MB\n"
            .to_owned(),
        ..ClusterOptions::default()
    };
    let cluster = private_cluster_with(options).await;
    let secret = generate_secret();
    let receiver = Receiver::start(&secret).await.expect("receiver starts");
    let client = support::connect(&cluster.superuser_url(APP_DATABASE)).await;
    subscribe(&client, &receiver, &secret).await;
    let config = private_config(&cluster);
    let mut daemon = Daemon::setup_and_start(&config);
    client
        .execute("UPDATE jobs SET stage_id = 2 WHERE id = 7001", &[])
        .await
        .expect("write");
    expect_stage(&receiver, 2, "stage before the slot was invalidated").await;
    daemon.terminate();

    // With the daemon stopped, a change and more WAL than the slot may keep.
    client
        .batch_execute(
            "UPDATE jobs SET stage_id = 3 WHERE id = 7001;
             CREATE TABLE wal_filler (id bigserial PRIMARY KEY, payload text);",
        )
        .await
        .expect("write in the gap");
    let mut status = None;
    for _ in 0..10 {
        client
            .batch_execute(
                "INSERT INTO wal_filler (payload) VALUES ('x');
                 SELECT pg_switch_wal();
                 INSERT INTO wal_filler (payload) VALUES ('x');
                 SELECT pg_switch_wal();
                 CHECKPOINT;",
            )
            .await
            .expect("WAL switch and checkpoint");
        status = slot_state(&client).await.0;
        if status.as_deref() == Some("lost") {
            break;
        }
    }
    assert_eq!(status.as_deref(), Some("lost"), "the slot was invalidated");
    let (_, confirmed) = slot_state(&client).await;
    let confirmed = confirmed.expect("an invalidated slot keeps confirmed_flush_lsn");

    // Without permission to re-create the slot, the daemon exits with an
    // error that names the slot and the gap.
    daemon.restart();
    let exit = wait_for_exit(&mut daemon).await;
    let log = daemon.log();
    let error = log.lines().last().unwrap_or_default();
    println!("invalidated slot: the daemon exited ({exit}) with `{error}`");
    assert_eq!(
        exit.code(),
        Some(78),
        "the daemon exits 78, which the unit does not restart:\n{log}"
    );
    assert!(
        log.contains("replication slot `walhook` was invalidated"),
        "the error names the slot:\n{log}"
    );
    assert!(
        log.contains(&format!("the changes from `{confirmed}` to `")),
        "the error names the lost range from {confirmed}:\n{log}"
    );
    assert!(
        log.contains("recreate_invalidated_slot = true"),
        "the error names the setting that continues:\n{log}"
    );
    assert_eq!(
        slot_state(&client).await.0.as_deref(),
        Some("lost"),
        "the slot was not re-created"
    );

    // With permission, the daemon logs the gap, re-creates the slot and
    // delivers what is committed after it.
    let config = format!("{config}\n[replication]\nrecreate_invalidated_slot = true\n");
    let mut daemon = Daemon::start(&config);
    let log = wait_for_log(
        &daemon,
        "replication slot was invalidated and is re-created",
    )
    .await;
    assert!(
        log.contains(&format!("gap_start={confirmed}")),
        "the log names where the gap starts:\n{log}"
    );
    assert!(log.contains("gap_end="), "the log names where the gap ends");
    wait_for_log(&daemon, "replication started").await;
    let (status, _) = slot_state(&client).await;
    assert_ne!(status.as_deref(), Some("lost"), "the new slot is usable");
    client
        .execute("UPDATE jobs SET stage_id = 4 WHERE id = 7001", &[])
        .await
        .expect("write");
    let request = expect_delivery(&receiver, WAIT, "the stage change after the gap").await;
    let body = request.json().expect("JSON body");
    assert_eq!(body["payload"]["jobs"][0]["newStage"], 4);
    assert_eq!(
        body["payload"]["jobs"][0]["previousStage"], 3,
        "the change in the gap is in the old row, but was not delivered"
    );
    daemon.terminate();
}

/// Returns the `lsn` field of every "replication started" line of `log`.
fn session_starts(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains("replication started"))
        .filter_map(|line| line.split(" lsn=").nth(1))
        .map(|rest| {
            rest.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn injected_failures_restart_session() {
    const TRANSACTIONS: usize = 30;
    let (db, receiver) = prepared_db().await;
    let config = db.config().replace(
        "filter = \"info\"",
        "filter = \"info,walhook::pipeline::processor=debug\"",
    );
    // A panic while routing the 3rd committed transaction, and an error
    // while decoding the 40th XLogData message, each once.
    let mut daemon = Daemon::setup_and_start_with_env(
        &config,
        &[(
            "WALHOOK_FAILPOINT",
            "route-transaction=panic@3,decode-message=error@40",
        )],
    );
    wait_for_log(&daemon, "replication started").await;

    let client = db.connect().await;
    let expected: HashSet<String> = write_mixed(&client, TRANSACTIONS)
        .await
        .into_iter()
        .collect();
    let mut ids_by_key: HashMap<String, HashSet<String>> = HashMap::new();
    let mut received = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while ids_by_key.len() < expected.len() && tokio::time::Instant::now() < deadline {
        let Some(request) = receiver.next_delivery(Duration::from_secs(1)).await else {
            continue;
        };
        received += 1;
        let key = webhook_key(&request.json().expect("JSON body"));
        let id = request.header("webhook-id").expect("webhook-id").to_owned();
        ids_by_key.entry(key).or_default().insert(id);
    }
    let arrived: HashSet<String> = ids_by_key.keys().cloned().collect();
    let lost: Vec<&String> = expected.difference(&arrived).collect();
    let extra: Vec<&String> = arrived.difference(&expected).collect();
    println!(
        "injected failures: {} webhooks expected, {received} received",
        expected.len()
    );
    assert!(
        lost.is_empty(),
        "every expected webhook arrived: {lost:?} lost"
    );
    assert!(extra.is_empty(), "no unexpected webhooks: {extra:?}");
    for (key, ids) in &ids_by_key {
        assert_eq!(ids.len(), 1, "{key} has one webhook-id: {ids:?}");
    }
    assert_eq!(
        stored_deliveries(&client).await,
        TRANSACTIONS as i64,
        "each webhook is stored once"
    );

    let log = daemon.log();
    assert!(
        log.contains("replication task panicked"),
        "the panic is logged:\n{log}"
    );
    assert!(
        log.contains("failpoint `route-transaction` panicked on hit 3"),
        "the log names the panic's failpoint:\n{log}"
    );
    assert!(
        log.contains("failpoint `decode-message` injected an error"),
        "the injected error is logged:\n{log}"
    );
    let starts = session_starts(&log);
    assert_eq!(starts.len(), 3, "one session, restarted twice: {starts:?}");
    let start_lsns: Vec<Lsn> = starts
        .iter()
        .map(|text| text.parse().expect("the log prints valid LSNs"))
        .collect();
    assert!(
        start_lsns.windows(2).all(|pair| pair[0] <= pair[1]),
        "each session starts at or after the previous one's start: {starts:?}"
    );
    assert!(
        start_lsns[0] > Lsn::ZERO,
        "the first session starts at the slot's confirmed position, not at 0/0: {starts:?}"
    );
    let restart = log
        .rfind("replication started")
        .expect("the last session started");
    assert!(
        log[restart..].contains("relation received"),
        "the last session reads Relation messages into a fresh cache:\n{log}"
    );
    daemon.terminate();
}

/// Returns the `retry_in` field of every "replication session failed" line of `log`.
fn reconnect_delays(log: &str) -> Vec<String> {
    log.lines()
        .filter(|line| line.contains("replication session failed, reconnecting"))
        .filter_map(|line| line.split(" retry_in=").nth(1))
        .map(|rest| {
            rest.split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned()
        })
        .collect()
}

#[tokio::test]
async fn readyz_follows_postgres_outage() {
    const OUTAGE: Duration = Duration::from_secs(5);
    let mut cluster = private_cluster().await;
    let secret = generate_secret();
    let receiver = Receiver::start(&secret).await.expect("receiver starts");
    subscribe(
        &support::connect(&cluster.superuser_url(APP_DATABASE)).await,
        &receiver,
        &secret,
    )
    .await;
    let config = private_config(&cluster);
    let listen = listen_addr(&config);
    let mut daemon = Daemon::setup_and_start(&config);
    wait_for_readyz(listen, 200, WAIT).await;

    // A fast shutdown: not ready while PostgreSQL is down, with one log
    // line per reconnection attempt and doubling delays.
    let logged_before = daemon.log().len();
    cluster = with_cluster(cluster, "fast shutdown", TempCluster::stop).await;
    let reason = wait_for_readyz(listen, 503, WAIT).await;
    assert!(
        reason.starts_with("not ready: replication session failed: "),
        "/readyz names the reason: {reason}"
    );
    tokio::time::sleep(OUTAGE).await;
    let log = daemon.log();
    let outage_log = &log[logged_before..];
    let delays = reconnect_delays(outage_log);
    println!("{OUTAGE:?} outage, reconnection delays {delays:?}:\n{outage_log}");
    assert!(
        (2..=5).contains(&delays.len()),
        "one log line per attempt in {OUTAGE:?}: {delays:?}\n{outage_log}"
    );
    let doubling = ["1s", "2s", "4s", "8s", "16s"];
    assert_eq!(
        delays,
        doubling[..delays.len()],
        "the delay starts at 1s and doubles"
    );
    assert!(
        outage_log.contains("terminating connection due to administrator command"),
        "the log names why the server closed the connections:\n{outage_log}"
    );
    let lines = outage_log.lines().count();
    assert!(
        lines <= 20,
        "{lines} log lines in {OUTAGE:?} is a flood:\n{outage_log}"
    );
    let (status, reason) = get_readyz(listen).await.expect("/readyz answers");
    assert_eq!(status, 503, "still not ready while down: {reason}");

    cluster = with_cluster(cluster, "start", TempCluster::restart).await;
    wait_for_readyz(listen, 200, WAIT).await;
    cluster
        .execute(APP_DATABASE, "UPDATE jobs SET stage_id = 2 WHERE id = 7001")
        .expect("write");
    expect_stage(&receiver, 2, "stage after a fast shutdown").await;

    // An immediate shutdown, which PostgreSQL recovers from as from a crash.
    cluster = with_cluster(cluster, "immediate shutdown", TempCluster::stop_immediate).await;
    let reason = wait_for_readyz(listen, 503, WAIT).await;
    assert!(
        reason.starts_with("not ready: replication session failed: "),
        "/readyz names the reason: {reason}"
    );
    cluster = with_cluster(cluster, "start after crash", TempCluster::restart).await;
    wait_for_readyz(listen, 200, WAIT).await;
    cluster
        .execute(APP_DATABASE, "UPDATE jobs SET stage_id = 3 WHERE id = 7001")
        .expect("write");
    expect_stage(&receiver, 3, "stage after an immediate shutdown").await;
    daemon.terminate();
    drop(cluster);
}

#[tokio::test]
async fn dropped_column_reported_by_readyz() {
    let (db, receiver) = prepared_db().await;
    let config = db.config();
    let listen = listen_addr(&config);
    let mut daemon = Daemon::setup_and_start(&config);
    wait_for_readyz(listen, 200, WAIT).await;

    db.execute(
        "ALTER TABLE jobs DROP COLUMN stage_changed_at; UPDATE jobs SET stage_id = 2 WHERE id = 7001",
    )
    .await;
    let log = wait_for_log(&daemon, "walhook skip --lsn").await;
    assert!(
        log.contains("`stage_changed_at`"),
        "the error names the dropped column:\n{log}"
    );

    // Every poll while the session retries the broken change reports it.
    // Each reconnection streams for a few milliseconds before the change
    // fails again, so polls come every 5 ms to land in such a window.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    let mut polls = 0;
    while tokio::time::Instant::now() < deadline {
        let (status, reason) = get_readyz(listen).await.expect("/readyz answers");
        assert_eq!(status, 503, "not ready after {polls} polls: {reason}");
        assert!(
            reason.contains("`stage_changed_at`"),
            "/readyz names the column: {reason}"
        );
        assert!(
            reason.contains("walhook skip --lsn"),
            "/readyz names the fix: {reason}"
        );
        polls += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // The operator skips the change and adds the column back.
    let lsn = log
        .split("walhook skip --lsn ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| c == '`' || c.is_whitespace()).next())
        .expect("the log names the LSN to skip")
        .to_owned();
    let config_path = daemon.config_path().display().to_string();
    let output = walhook(&["skip", "--config", &config_path, "--lsn", &lsn]);
    assert!(
        output.status.success(),
        "walhook skip: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    db.execute(
        "ALTER TABLE jobs ADD COLUMN stage_changed_at timestamptz NOT NULL DEFAULT now();
         UPDATE jobs SET stage_id = 3 WHERE id = 7001",
    )
    .await;
    wait_for_readyz(listen, 200, WAIT).await;
    let request = expect_delivery(&receiver, WAIT, "the stage change after the skip").await;
    let body = request.json().expect("JSON body");
    assert_eq!(body["payload"]["jobs"][0]["newStage"], 3);
    daemon.terminate();
}

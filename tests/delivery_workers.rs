//! Delivery workers against a throwaway PostgreSQL cluster and real HTTP
//! receivers on 127.0.0.1.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::Notify;
use tokio_postgres::{Client, NoTls};
use tokio_util::sync::CancellationToken;
use walhook::config::{quote_ident, DeliveryConfig, Secret};
use walhook::delivery::DeliveryWorkers;
use walhook::payload::EventKind;
use walhook::queue::{AttemptRecord, DeliveryQueue, EndpointRooms, NextStep, SCHEMA_SQL};
use walhook::routing::{Owner, Subscription, SubscriptionKey, Subscriptions};

const SCHEMA: &str = "walhook_test";
const SECRET_BYTES: &[u8] = b"delivery-workers-test-secret";

/// A PostgreSQL cluster in a temporary directory, stopped on drop.
struct TestCluster {
    dir: tempfile::TempDir,
    port: u16,
}

impl TestCluster {
    fn start() -> TestCluster {
        let dir = tempfile::Builder::new()
            .prefix("walhook-delivery-")
            .tempdir_in("/tmp")
            .expect("create cluster directory");
        chown_to_postgres(dir.path());
        let data = dir.path().join("data");
        run_as_postgres(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        );

        let port = free_port();
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off",
            path_str(dir.path())
        );
        let log = dir.path().join("postgres.log");
        run_as_postgres(
            "pg_ctl",
            &[
                "-D",
                path_str(&data),
                "-l",
                path_str(&log),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
        TestCluster { dir, port }
    }

    async fn connect(&self) -> Client {
        let (client, connection) = tokio_postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user("postgres")
            .dbname("postgres")
            .connect(NoTls)
            .await
            .expect("connect to the test cluster");
        tokio::spawn(connection);
        client
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = postgres_command("pg_ctl")
            .args(["-D", path_str(&data), "-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn postgres_command(program: &str) -> Command {
    if nix::unistd::geteuid().is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", program]);
        command
    } else {
        Command::new(program)
    }
}

fn run_as_postgres(program: &str, args: &[&str]) {
    let output = postgres_command(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("run {program}: {err}"));
    assert!(
        output.status.success(),
        "{program} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn chown_to_postgres(path: &Path) {
    if nix::unistd::geteuid().is_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres", path_str(path)])
            .status()
            .expect("run chown");
        assert!(status.success(), "chown of {} failed", path.display());
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

fn free_port() -> u16 {
    let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// One request as the receiver saw it.
#[derive(Clone, Debug)]
struct Received {
    headers: HeaderMap,
    body: String,
    at: Instant,
}

/// A webhook receiver that responds with scripted statuses, then 200.
#[derive(Clone, Default)]
struct Receiver {
    statuses: Arc<Mutex<VecDeque<u16>>>,
    received: Arc<Mutex<Vec<Received>>>,
    delay: Duration,
}

impl Receiver {
    fn scripted(statuses: &[u16]) -> Receiver {
        Receiver {
            statuses: Arc::new(Mutex::new(statuses.iter().copied().collect())),
            ..Receiver::default()
        }
    }

    async fn serve(&self) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver address");
        let router = Router::new()
            .route("/hook", post(receive))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().expect("receiver lock").clone()
    }
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    let at = Instant::now();
    receiver
        .received
        .lock()
        .expect("receiver lock")
        .push(Received { headers, body, at });
    tokio::time::sleep(receiver.delay).await;
    let status = receiver
        .statuses
        .lock()
        .expect("receiver lock")
        .pop_front()
        .unwrap_or(200);
    StatusCode::from_u16(status).expect("scripted status is valid")
}

async fn create_queue(client: &Client) {
    let sql = SCHEMA_SQL.replace("{schema}", &quote_ident(SCHEMA));
    client
        .batch_execute(&sql)
        .await
        .expect("create queue tables");
}

/// Inserts a pending delivery about job 1.
async fn insert_delivery(client: &Client, webhook_id: &str, subscription: &str, url: &str) -> i64 {
    insert_job_delivery(client, webhook_id, subscription, url, 1).await
}

async fn insert_job_delivery(
    client: &Client,
    webhook_id: &str,
    subscription: &str,
    url: &str,
    job_id: i64,
) -> i64 {
    let sql = format!(
        "INSERT INTO {}.deliveries \
             (webhook_id, commit_lsn, event_index, subscription, url, event, job_ids, body) \
         VALUES ($1, '0/16B3748', 0, $2, $3, 'PING', ARRAY[$5::bigint], $4) RETURNING id",
        quote_ident(SCHEMA)
    );
    let body = format!(r#"{{"event":"PING","jobs":[{{"id":"{webhook_id}"}}]}}"#);
    let row = client
        .query_one(&sql, &[&webhook_id, &subscription, &url, &body, &job_id])
        .await
        .expect("insert delivery");
    row.get(0)
}

async fn delivery_status(client: &Client, id: i64) -> (String, i32, Option<i32>, Option<String>) {
    let sql = format!(
        "SELECT status, attempts, last_status, last_error FROM {}.deliveries WHERE id = $1",
        quote_ident(SCHEMA)
    );
    let row = client.query_one(&sql, &[&id]).await.expect("read delivery");
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

async fn wait_for_status(client: &Client, id: i64, expected: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let (status, ..) = delivery_status(client, id).await;
        if status == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "delivery {id} is `{status}` after {limit:?}, expected `{expected}`"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn subscription(id: i64, url: &str) -> Subscription {
    Subscription {
        key: SubscriptionKey::App(id),
        owner: Owner::Company(1),
        url: url.to_owned(),
        secrets: vec![Secret::new(format!(
            "whsec_{}",
            BASE64.encode(SECRET_BYTES)
        ))],
        events: Some([EventKind::Ping].into_iter().collect()),
        enabled: true,
    }
}

fn loopback_config(retry_schedule: Vec<Duration>) -> DeliveryConfig {
    DeliveryConfig {
        timeout: Duration::from_secs(5),
        retry_schedule,
        concurrency: 4,
        allowed_networks: vec!["127.0.0.1/32".parse().expect("network parses")],
        ..DeliveryConfig::default()
    }
}

/// A running `DeliveryWorkers` task and the token that stops it.
struct RunningWorkers {
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningWorkers {
    async fn start(cluster: &TestCluster, config: &DeliveryConfig, subs: Subscriptions) -> Self {
        let client = Arc::new(cluster.connect().await);
        let wake = Arc::new(Notify::new());
        let workers = DeliveryWorkers::new(client, SCHEMA, config, Arc::new(subs), wake.clone())
            .expect("build workers");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(workers.run(shutdown.clone()));
        wake.notify_one();
        RunningWorkers { shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("workers stop within 10 s")
            .expect("workers task does not panic");
        assert!(result.is_ok(), "workers returned {result:?}");
    }
}

fn verify_signature(request: &Received) {
    let header = |name: &str| {
        request
            .headers
            .get(name)
            .unwrap_or_else(|| panic!("request has no `{name}` header"))
            .to_str()
            .expect("header is text")
            .to_owned()
    };
    let signed = format!(
        "{}.{}.{}",
        header("webhook-id"),
        header("webhook-timestamp"),
        request.body
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET_BYTES).expect("HMAC takes any key");
    mac.update(signed.as_bytes());
    let expected = format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()));
    assert_eq!(
        header("webhook-signature"),
        expected,
        "signature of {signed}"
    );
}

#[tokio::test]
async fn retry_then_deliver() {
    let cluster = TestCluster::start();
    let client = cluster.connect().await;
    create_queue(&client).await;
    let receiver = Receiver::scripted(&[500]);
    let url = format!("http://{}/hook", receiver.serve().await);
    let id = insert_delivery(&client, "msg_retry", "sub_42", &url).await;

    let subs = Subscriptions::default();
    subs.upsert(subscription(42, &url));
    let config = loopback_config(vec![Duration::from_secs(1)]);
    let workers = RunningWorkers::start(&cluster, &config, subs).await;
    wait_for_status(&client, id, "delivered", Duration::from_secs(15)).await;
    workers.stop().await;

    let requests = receiver.received();
    assert_eq!(requests.len(), 2, "one failed and one successful attempt");
    for request in &requests {
        assert_eq!(
            request.headers["webhook-id"], "msg_retry",
            "same id on every attempt"
        );
        assert_eq!(request.headers["content-type"], "application/json");
        assert!(
            request.body.contains("msg_retry"),
            "body is the stored text"
        );
        verify_signature(request);
    }
    let gap = requests[1].at - requests[0].at;
    assert!(
        gap >= Duration::from_millis(750),
        "retry waited the schedule with jitter: {gap:?}"
    );

    let (status, attempts, last_status, last_error) = delivery_status(&client, id).await;
    assert_eq!(status, "delivered");
    assert_eq!(attempts, 2, "attempts counts both attempts");
    assert_eq!(last_status, Some(200));
    assert_eq!(last_error, None);

    let sql = format!(
        "SELECT status FROM {}.attempts WHERE delivery_id = $1 ORDER BY attempt",
        quote_ident(SCHEMA)
    );
    let statuses: Vec<Option<i32>> = client
        .query(&sql, &[&id])
        .await
        .expect("read attempts")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(statuses, vec![Some(500), Some(200)], "attempts table");
}

#[tokio::test]
async fn gone_disables_subscription() {
    let cluster = TestCluster::start();
    let client = cluster.connect().await;
    create_queue(&client).await;
    let receiver = Receiver::scripted(&[410]);
    let url = format!("http://{}/hook", receiver.serve().await);
    let first = insert_delivery(&client, "msg_gone_1", "sub_7", &url).await;
    let second = insert_delivery(&client, "msg_gone_2", "sub_7", &url).await;

    let subs = Subscriptions::default();
    subs.upsert(subscription(7, &url));
    let config = loopback_config(vec![Duration::from_secs(1)]);
    let workers = RunningWorkers::start(&cluster, &config, subs).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    workers.stop().await;

    let sql = format!(
        "SELECT subscription FROM {}.disabled_subscriptions",
        quote_ident(SCHEMA)
    );
    let disabled: Vec<String> = client
        .query(&sql, &[])
        .await
        .expect("read disabled subscriptions")
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        disabled,
        vec!["sub_7".to_owned()],
        "410 disables the subscription"
    );
    assert_eq!(
        receiver.received().len(),
        1,
        "nothing is sent after the 410"
    );
    let (first_status, ..) = delivery_status(&client, first).await;
    let (second_status, ..) = delivery_status(&client, second).await;
    assert_eq!(first_status, "pending", "the 410 delivery is held");
    assert_eq!(second_status, "pending", "later deliveries are held");
}

#[tokio::test]
async fn private_target_rejected() {
    let cluster = TestCluster::start();
    let client = cluster.connect().await;
    create_queue(&client).await;
    let receiver = Receiver::default();
    let addr = receiver.serve().await;
    let literal_url = format!("http://{addr}/hook");
    let named_url = format!("http://localhost:{}/hook", addr.port());
    let literal = insert_delivery(&client, "msg_literal", "sub_1", &literal_url).await;
    let named = insert_delivery(&client, "msg_named", "sub_2", &named_url).await;

    let subs = Subscriptions::default();
    subs.upsert(subscription(1, &literal_url));
    subs.upsert(subscription(2, &named_url));
    let config = DeliveryConfig {
        retry_schedule: Vec::new(),
        ..DeliveryConfig::default()
    };
    let workers = RunningWorkers::start(&cluster, &config, subs).await;
    wait_for_status(&client, literal, "failed", Duration::from_secs(10)).await;
    wait_for_status(&client, named, "failed", Duration::from_secs(10)).await;
    workers.stop().await;

    assert!(
        receiver.received().is_empty(),
        "no request reaches loopback"
    );
    for id in [literal, named] {
        let (_, _, last_status, last_error) = delivery_status(&client, id).await;
        let error = last_error.expect("a rejected target stores its error");
        assert_eq!(last_status, None, "no response for delivery {id}");
        assert!(error.contains("is loopback"), "delivery {id}: {error}");
        assert!(
            error.contains("delivery.allowed_networks"),
            "delivery {id}: {error}"
        );
    }
}

#[tokio::test]
async fn slow_receiver_does_not_block_others() {
    let cluster = TestCluster::start();
    let client = cluster.connect().await;
    create_queue(&client).await;
    let slow = Receiver {
        delay: Duration::from_secs(3),
        ..Receiver::default()
    };
    let fast = Receiver::default();
    let slow_url = format!("http://{}/hook", slow.serve().await);
    let fast_url = format!("http://{}/hook", fast.serve().await);
    let slow_id = insert_delivery(&client, "msg_slow", "sub_1", &slow_url).await;
    let fast_id = insert_delivery(&client, "msg_fast", "sub_2", &fast_url).await;

    let subs = Subscriptions::default();
    subs.upsert(subscription(1, &slow_url));
    subs.upsert(subscription(2, &fast_url));
    let config = loopback_config(vec![Duration::from_secs(1)]);
    let workers = RunningWorkers::start(&cluster, &config, subs).await;
    wait_for_status(&client, fast_id, "delivered", Duration::from_secs(2)).await;
    let (slow_status, ..) = delivery_status(&client, slow_id).await;
    assert_eq!(
        slow_status, "pending",
        "the slow request is still in flight"
    );
    wait_for_status(&client, slow_id, "delivered", Duration::from_secs(10)).await;
    workers.stop().await;
}

#[tokio::test]
async fn subscription_order_is_kept() {
    let cluster = TestCluster::start();
    let client = cluster.connect().await;
    create_queue(&client).await;
    let receiver = Receiver::scripted(&[503]);
    let url = format!("http://{}/hook", receiver.serve().await);
    let mut ids = Vec::new();
    for n in 1..=3 {
        ids.push(insert_delivery(&client, &format!("msg_order_{n}"), "sub_3", &url).await);
    }

    let subs = Subscriptions::default();
    subs.upsert(subscription(3, &url));
    let config = loopback_config(vec![Duration::from_secs(1)]);
    let workers = RunningWorkers::start(&cluster, &config, subs).await;
    for id in &ids {
        wait_for_status(&client, *id, "delivered", Duration::from_secs(15)).await;
    }
    workers.stop().await;

    let order: Vec<String> = receiver
        .received()
        .iter()
        .map(|request| {
            request.headers["webhook-id"]
                .to_str()
                .unwrap_or("")
                .to_owned()
        })
        .collect();
    assert_eq!(
        order,
        ["msg_order_1", "msg_order_1", "msg_order_2", "msg_order_3"],
        "a retried delivery holds back the later ones of its subscription"
    );
}

#[tokio::test]
async fn expired_lease_returns_row() {
    let cluster = TestCluster::start();
    let client = cluster.connect().await;
    create_queue(&client).await;
    let first = insert_delivery(&client, "msg_lease_1", "sub_5", "http://127.0.0.1:9/").await;
    insert_delivery(&client, "msg_lease_2", "sub_5", "http://127.0.0.1:9/").await;
    let queue = DeliveryQueue::new(SCHEMA);

    let claimed = queue
        .claim_due(&client, 10, Duration::ZERO)
        .await
        .expect("first claim");
    let ids: Vec<i64> = claimed.iter().map(|delivery| delivery.id).collect();
    assert_eq!(
        ids,
        vec![first],
        "only the oldest row of a subscription is claimed"
    );
    assert_eq!(claimed[0].attempt, 1, "the claim counts the attempt");

    let reclaimed = queue
        .claim_due(&client, 10, Duration::from_secs(60))
        .await
        .expect("second claim");
    assert_eq!(
        reclaimed.len(),
        1,
        "a row whose lease ran out is claimed again"
    );
    assert_eq!(
        reclaimed[0].attempt, 2,
        "the second claim counts another attempt"
    );
    let while_leased = queue
        .claim_due(&client, 10, Duration::from_secs(60))
        .await
        .expect("third claim");
    assert!(
        while_leased.is_empty(),
        "a leased row is not claimed: {while_leased:?}"
    );

    let stale = AttemptRecord {
        delivery_id: first,
        attempt: 1,
        started_at: std::time::SystemTime::now(),
        duration: Duration::from_millis(5),
        status: Some(200),
        response_body: Some("ok"),
        error: None,
        next: NextStep::Delivered,
    };
    let applied = queue.record_attempt(&client, &stale).await.expect("record");
    assert!(
        !applied,
        "an attempt of an expired lease does not update the row"
    );
    let (status, ..) = delivery_status(&client, first).await;
    assert_eq!(status, "pending", "the stale attempt left the row pending");

    let current = AttemptRecord {
        attempt: 2,
        ..stale
    };
    let applied = queue
        .record_attempt(&client, &current)
        .await
        .expect("record");
    assert!(applied, "the current attempt updates the row");
    let (status, ..) = delivery_status(&client, first).await;
    assert_eq!(status, "delivered");
}

#[tokio::test]
async fn claim_holds_only_same_job() {
    let cluster = TestCluster::start();
    let client = cluster.connect().await;
    create_queue(&client).await;
    let url = "http://127.0.0.1:9/";
    let job_1 = insert_job_delivery(&client, "msg_job_1a", "sub_6", url, 1).await;
    insert_job_delivery(&client, "msg_job_1b", "sub_6", url, 1).await;
    let job_2 = insert_job_delivery(&client, "msg_job_2", "sub_6", url, 2).await;
    let other_sub = insert_job_delivery(&client, "msg_other_sub", "sub_9", url, 1).await;
    let queue = DeliveryQueue::new(SCHEMA);

    let claimed = queue
        .claim_due(&client, 10, Duration::from_secs(60))
        .await
        .expect("claim");
    let ids: Vec<i64> = claimed.iter().map(|delivery| delivery.id).collect();
    assert_eq!(
        ids,
        vec![job_1, job_2, other_sub],
        "the second row of job 1 waits; job 2 and the other subscription do not"
    );
    assert!(
        claimed
            .iter()
            .all(|delivery| delivery.endpoint == "127.0.0.1:9"),
        "endpoint is host:port: {claimed:?}"
    );
}

#[tokio::test]
async fn claim_respects_endpoint_room() {
    let cluster = TestCluster::start();
    let client = cluster.connect().await;
    create_queue(&client).await;
    let busy = "http://user:pw@Busy.example:8443/hook";
    let idle = "http://idle.example/hook";
    let mut busy_ids = Vec::new();
    for job in 1..=4 {
        busy_ids.push(
            insert_job_delivery(&client, &format!("msg_busy_{job}"), "sub_1", busy, job).await,
        );
    }
    let idle_id = insert_job_delivery(&client, "msg_idle", "sub_2", idle, 1).await;
    let queue = DeliveryQueue::new(SCHEMA);
    let rooms = EndpointRooms {
        rooms: vec![("busy.example:8443".to_owned(), 1)],
        default_room: 2,
    };

    let claimed = queue
        .claim_due_within(&client, 10, Duration::from_secs(60), &rooms)
        .await
        .expect("claim");
    let ids: Vec<i64> = claimed.iter().map(|delivery| delivery.id).collect();
    assert_eq!(
        ids,
        vec![busy_ids[0], idle_id],
        "one row of the busy endpoint"
    );

    let closed = EndpointRooms {
        rooms: vec![("busy.example:8443".to_owned(), 0)],
        default_room: 2,
    };
    let claimed = queue
        .claim_due_within(&client, 10, Duration::from_secs(60), &closed)
        .await
        .expect("claim");
    assert!(
        claimed.is_empty(),
        "an endpoint without room gets nothing: {claimed:?}"
    );

    let claimed = queue
        .claim_due_within(
            &client,
            10,
            Duration::from_secs(60),
            &EndpointRooms {
                rooms: Vec::new(),
                default_room: 2,
            },
        )
        .await
        .expect("claim");
    let ids: Vec<i64> = claimed.iter().map(|delivery| delivery.id).collect();
    assert_eq!(ids, vec![busy_ids[1], busy_ids[2]], "default room of two");
}

#[tokio::test]
async fn breaker_pauses_failing_endpoint() {
    let cluster = TestCluster::start();
    let client = cluster.connect().await;
    create_queue(&client).await;
    let receiver = Receiver::scripted(&[500; 100]);
    let url = format!("http://{}/hook", receiver.serve().await);
    let mut ids = Vec::new();
    for job in 1..=10 {
        ids.push(
            insert_job_delivery(&client, &format!("msg_breaker_{job}"), "sub_8", &url, job).await,
        );
    }

    let subs = Subscriptions::default();
    subs.upsert(subscription(8, &url));
    let config = DeliveryConfig {
        per_endpoint_concurrency: 2,
        ..loopback_config(vec![Duration::from_secs(1); 5])
    };
    let workers = RunningWorkers::start(&cluster, &config, subs).await;

    // Five failures open the breaker; at most one more request was in flight.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let during_pause = receiver.received().len();
    assert!(
        (5..=6).contains(&during_pause),
        "the breaker stopped requests after five failures: {during_pause} sent"
    );

    // After the pause, one probe goes out; its success closes the breaker.
    receiver.statuses.lock().expect("receiver lock").clear();
    for id in &ids {
        wait_for_status(&client, *id, "delivered", Duration::from_secs(20)).await;
    }
    workers.stop().await;
    let first_probe = receiver.received()[during_pause].at;
    let last_failure = receiver.received()[during_pause - 1].at;
    assert!(
        first_probe - last_failure >= Duration::from_secs(4),
        "the endpoint was paused: {:?}",
        first_probe - last_failure
    );
}

/// Ids of the rows that one claim of up to 10 rows takes.
async fn claim_ids(queue: &DeliveryQueue, client: &Client) -> Vec<i64> {
    let claimed = queue
        .claim_due(client, 10, Duration::from_secs(60))
        .await
        .expect("claim");
    claimed.iter().map(|delivery| delivery.id).collect()
}

fn delivered_record(delivery_id: i64) -> AttemptRecord<'static> {
    AttemptRecord {
        delivery_id,
        attempt: 1,
        started_at: std::time::SystemTime::now(),
        duration: Duration::from_millis(5),
        status: Some(200),
        response_body: Some("ok"),
        error: None,
        next: NextStep::Delivered,
    }
}

#[tokio::test]
async fn recorded_batch_releases_held_rows() {
    let cluster = TestCluster::start();
    let client = cluster.connect().await;
    create_queue(&client).await;
    let url = "http://127.0.0.1:9/";
    let first_a = insert_job_delivery(&client, "msg_batch_1a", "sub_3", url, 1).await;
    let second_a = insert_job_delivery(&client, "msg_batch_1b", "sub_3", url, 1).await;
    let first_b = insert_job_delivery(&client, "msg_batch_2a", "sub_3", url, 2).await;
    insert_job_delivery(&client, "msg_batch_2b", "sub_3", url, 2).await;
    let queue = DeliveryQueue::new(SCHEMA);

    assert_eq!(
        claim_ids(&queue, &client).await,
        vec![first_a, first_b],
        "the second row of each job waits"
    );
    let stale = AttemptRecord {
        attempt: 7,
        ..delivered_record(first_b)
    };
    let applied = queue
        .record_attempts(&client, &[delivered_record(first_a), stale])
        .await
        .expect("record batch");
    assert_eq!(
        applied,
        vec![true, false],
        "each record reports whether it applied"
    );

    assert_eq!(
        claim_ids(&queue, &client).await,
        vec![second_a],
        "the delivered row releases its job, while the row with a stale record still holds back its job"
    );
    let (status, ..) = delivery_status(&client, first_b).await;
    assert_eq!(status, "pending", "a stale record leaves the row pending");
}

#[tokio::test]
async fn setup_rebuilds_pending_jobs() {
    let cluster = TestCluster::start();
    let client = cluster.connect().await;
    create_queue(&client).await;
    let url = "http://127.0.0.1:9/";
    let first = insert_job_delivery(&client, "msg_upgrade_1", "sub_4", url, 1).await;
    insert_job_delivery(&client, "msg_upgrade_2", "sub_4", url, 1).await;

    // A queue created before the triggers existed has no pending_jobs rows.
    let schema = quote_ident(SCHEMA);
    client
        .batch_execute(&format!("DELETE FROM {schema}.pending_jobs"))
        .await
        .expect("empty pending_jobs");
    create_queue(&client).await;
    create_queue(&client).await;

    let count: i64 = client
        .query_one(&format!("SELECT count(*) FROM {schema}.pending_jobs"), &[])
        .await
        .expect("count pending_jobs")
        .get(0);
    assert_eq!(count, 2, "setup adds one pair per pending row, once");
    let queue = DeliveryQueue::new(SCHEMA);
    assert_eq!(
        claim_ids(&queue, &client).await,
        vec![first],
        "the rebuilt pairs hold the second row"
    );
}

#[tokio::test]
async fn enable_unparks_disabled_rows() {
    let cluster = TestCluster::start();
    let client = cluster.connect().await;
    create_queue(&client).await;
    let url = "http://127.0.0.1:9/";
    let parked = insert_job_delivery(&client, "msg_parked", "sub_5", url, 1).await;
    let other = insert_job_delivery(&client, "msg_other", "sub_6", url, 2).await;
    let queue = DeliveryQueue::new(SCHEMA);
    queue
        .disable_subscription(&client, "sub_5", "test")
        .await
        .expect("disable");

    assert_eq!(
        claim_ids(&queue, &client).await,
        vec![other],
        "a disabled subscription's row is not claimed"
    );
    let schema = quote_ident(SCHEMA);
    let parked_at: String = client
        .query_one(
            &format!("SELECT next_attempt_at::text FROM {schema}.deliveries WHERE id = $1"),
            &[&parked],
        )
        .await
        .expect("read next_attempt_at")
        .get(0);
    assert_eq!(parked_at, "infinity", "the claim parked the row");

    let enabled = walhook::queue::admin::enable_subscription(&client, SCHEMA, "sub_5")
        .await
        .expect("enable");
    assert!(enabled, "the subscription was disabled");
    assert_eq!(
        claim_ids(&queue, &client).await,
        vec![parked],
        "enabling makes the parked row due"
    );
}

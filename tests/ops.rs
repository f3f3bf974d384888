//! Operations against a real PostgreSQL, a real receiver and the `walhook`
//! binary: systemd notifications, the unit file, `/metrics`, the admin API
//! and the three ways to request a PING.

mod support;

use std::net::SocketAddr;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use support::{expect_delivery, generate_secret, loopback_addr, Daemon, Receiver, Reply, TestDb};
use tokio_postgres::types::ToSql;

const WAIT: Duration = Duration::from_secs(30);
const COMPANY: i64 = 101;
const ADMIN_TOKEN: &str = "test-admin-token-5f1c";

/// A job of company 101, written before the slot exists so it raises nothing.
const SEED_JOB: &str = "
    INSERT INTO jobs (id, alt_id, account_id, company_id, stage_id, first_name, last_name,
                      address_1, city, state, zip)
    VALUES (5001, 'A-5001', 125, 101, 1, 'Robin', 'Home', '10 Elm St', 'Boulder', 'CO', '80301');
";

struct Setup {
    db: TestDb,
    receiver: Receiver,
    /// Id of the subscription of company 101 in `webhook_subscriptions`.
    subscription: i64,
    listen: SocketAddr,
    /// Directory of the admin token file and the notify socket.
    dir: tempfile::TempDir,
}

impl Setup {
    /// Returns the daemon's config with a status update every 500 ms and the
    /// admin token file.
    fn config(&self) -> String {
        let config =
            walhook::demo::config_for(&self.db.walhook_url(), &self.db.slot(), self.listen);
        let token_path = self.dir.path().join("admin-token");
        config
            .replacen(
                "publication = \"walhook\"\n",
                "publication = \"walhook\"\nstatus_interval = \"500ms\"\n",
                1,
            )
            .replacen(
                &format!("listen = \"{}\"\n", self.listen),
                &format!(
                    "listen = \"{}\"\nadmin_token_file = \"{}\"\n",
                    self.listen,
                    token_path.display()
                ),
                1,
            )
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.listen)
    }
}

/// Creates a database with one job, a subscription of company 101 to every
/// event, and an admin token file.
async fn setup() -> Setup {
    let db = TestDb::with_schema().await;
    db.execute(SEED_JOB).await;
    let secret = generate_secret();
    let receiver = Receiver::start(&secret).await.expect("receiver starts");
    let url = format!("{}/company-{COMPANY}", receiver.url());
    let client = db.connect().await;
    let row = client
        .query_one(
            "INSERT INTO webhook_subscriptions (company_id, url, secret) VALUES ($1, $2, $3) RETURNING id",
            &[&COMPANY as &(dyn ToSql + Sync), &url, &secret],
        )
        .await
        .expect("subscription inserted");
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join("admin-token"), format!("{ADMIN_TOKEN}\n")).expect("token file");
    Setup {
        db,
        receiver,
        subscription: row.get(0),
        listen: loopback_addr(),
        dir,
    }
}

/// Polls `/readyz` until it returns 200, panicking after [`WAIT`].
async fn wait_ready(setup: &Setup) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let response = http.get(setup.url("/readyz")).send().await;
        if let Ok(response) = response {
            if response.status() == 200 {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "/readyz did not return 200 within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Returns the value of the sample `name` whose labels include `labels`.
fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => f64::NAN,
        })
}

async fn scrape(setup: &Setup) -> prometheus_parse::Scrape {
    let response = reqwest::get(setup.url("/metrics"))
        .await
        .expect("/metrics answers");
    assert_eq!(response.status(), 200, "/metrics status");
    let text = response.text().await.expect("/metrics body");
    let lines = text.lines().map(|line| Ok(line.to_owned()));
    match prometheus_parse::Scrape::parse(lines) {
        Ok(scrape) => scrape,
        Err(err) => panic!("/metrics does not parse: {err}\n{text}"),
    }
}

/// Reads datagrams until `until` returns true for the list so far, or the
/// timeout passes.
fn read_notifications(
    socket: &UnixDatagram,
    messages: &mut Vec<String>,
    until: impl Fn(&[String]) -> bool,
) {
    let deadline = Instant::now() + WAIT;
    let mut buffer = [0u8; 4096];
    while !until(messages) && Instant::now() < deadline {
        if let Ok(len) = socket.recv(&mut buffer) {
            let text = String::from_utf8_lossy(&buffer[..len]);
            messages.extend(text.lines().map(str::to_owned));
        }
    }
}

fn position(messages: &[String], line: &str) -> Option<usize> {
    messages.iter().position(|m| m == line)
}

#[tokio::test]
async fn notify_ready_watchdog_stopping() {
    let setup = setup().await;
    let socket_path = setup.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("notify socket binds");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let socket_text = socket_path.display().to_string();
    let env = [
        ("NOTIFY_SOCKET", socket_text.as_str()),
        ("WATCHDOG_USEC", "2000000"),
    ];
    let mut daemon = Daemon::setup_and_start_with_env(&setup.config(), &env);

    let mut messages = Vec::new();
    read_notifications(&socket, &mut messages, |m| {
        position(m, "READY=1").is_some_and(|ready| m[ready..].iter().any(|l| l == "WATCHDOG=1"))
    });
    let ready = position(&messages, "READY=1");
    assert!(ready.is_some(), "READY=1 arrives: {messages:?}");
    let ready = ready.unwrap_or_default();
    assert!(
        messages[ready..].iter().any(|l| l == "WATCHDOG=1"),
        "WATCHDOG=1 arrives after READY=1: {messages:?}"
    );

    let status = daemon.terminate();
    read_notifications(&socket, &mut messages, |m| {
        position(m, "STOPPING=1").is_some()
    });
    let stopping = position(&messages, "STOPPING=1");
    assert!(
        stopping.is_some(),
        "STOPPING=1 arrives after SIGTERM: {messages:?}"
    );
    assert!(
        stopping > Some(ready),
        "STOPPING=1 comes after READY=1: {messages:?}"
    );
    assert!(
        status.success(),
        "the daemon exits 0 after SIGTERM: {status}"
    );
}

#[test]
fn unit_file_verifies() {
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        println!("skipped: systemd-analyze is not installed; .ci/run installs the systemd package");
        return;
    };
    assert!(version.status.success(), "systemd-analyze --version runs");

    // `verify` checks that ExecStart= exists, so the copy names the binary
    // that Cargo built instead of /usr/bin/walhook.
    let unit = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/walhook.service"),
    )
    .expect("systemd/walhook.service is readable");
    assert!(
        unit.contains("ExecStart=/usr/bin/walhook "),
        "the unit starts /usr/bin/walhook"
    );
    let dir = tempfile::tempdir().expect("temporary directory");
    let copy = dir.path().join("walhook.service");
    std::fs::write(
        &copy,
        unit.replace("/usr/bin/walhook", support::WALHOOK_BIN),
    )
    .expect("unit copy");

    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .expect("systemd-analyze verify runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "systemd-analyze verify failed: {stderr}"
    );
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze verify warns: {stderr}"
    );
}

#[tokio::test]
async fn metrics_parse_and_count_events() {
    let setup = setup().await;
    let mut daemon = Daemon::setup_and_start(&setup.config());
    wait_ready(&setup).await;

    let before = scrape(&setup).await;
    for name in [
        "walhook_replication_lag_bytes",
        "walhook_replication_lag_seconds",
        "walhook_replication_received_lsn",
        "walhook_replication_flushed_lsn",
        "walhook_queue_pending",
        "walhook_queue_oldest_pending_age_seconds",
    ] {
        assert!(
            sample(&before, name, &[]).is_some(),
            "/metrics has `{name}`"
        );
    }
    let stage_before = sample(
        &before,
        "walhook_events_total",
        &[("event", "STAGE_CHANGED")],
    );

    setup
        .db
        .execute("UPDATE jobs SET stage_id = 2 WHERE id = 5001")
        .await;
    expect_delivery(&setup.receiver, WAIT, "the stage change").await;

    // The attempt is recorded after the receiver has the request, so the
    // scrape waits for the delivery counter.
    let subscription = format!("sub_{}", setup.subscription);
    let delivered_labels = [
        ("outcome", "delivered"),
        ("subscription", subscription.as_str()),
    ];
    let deadline = Instant::now() + WAIT;
    let mut after = scrape(&setup).await;
    while sample(&after, "walhook_deliveries_total", &delivered_labels).is_none()
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = scrape(&setup).await;
    }
    let stage_after = sample(
        &after,
        "walhook_events_total",
        &[("event", "STAGE_CHANGED")],
    );
    assert_eq!(
        stage_before, None,
        "no STAGE_CHANGED counted before the write"
    );
    assert_eq!(
        stage_after,
        Some(1.0),
        "one STAGE_CHANGED counted after the write"
    );
    let delivered = sample(&after, "walhook_deliveries_total", &delivered_labels);
    assert_eq!(delivered, Some(1.0), "one delivery counted as delivered");
    daemon.terminate();
}

#[tokio::test]
async fn admin_api_requires_token() {
    let setup = setup().await;
    let mut daemon = Daemon::setup_and_start(&setup.config());
    wait_ready(&setup).await;
    let http = reqwest::Client::new();
    let body = format!(r#"{{"subscription":{},"jobs":[5001]}}"#, setup.subscription);
    let ping = |token: Option<&str>| {
        let mut request = http
            .post(setup.url("/v1/ping"))
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };

    let missing = ping(None).await.expect("request without token answers");
    assert_eq!(missing.status(), 401, "request without token");
    let wrong = ping(Some("not-the-token"))
        .await
        .expect("request with wrong token answers");
    assert_eq!(wrong.status(), 401, "request with a wrong token");
    let list = http
        .get(setup.url("/v1/deliveries"))
        .send()
        .await
        .expect("list answers");
    assert_eq!(list.status(), 401, "listing without token");
    let rejections = daemon
        .log()
        .matches("admin request without a valid bearer token rejected")
        .count();
    assert_eq!(rejections, 1, "three rejected requests log one line");
    let accepted = ping(Some(ADMIN_TOKEN))
        .await
        .expect("request with token answers");
    assert_eq!(accepted.status(), 202, "request with the token");

    let request = expect_delivery(&setup.receiver, WAIT, "the PING").await;
    let json = request.json().expect("PING body is JSON");
    assert_eq!(
        json["event"], "PING",
        "the admin API's PING arrives: {json}"
    );
    assert_eq!(
        json["payload"]["jobs"][0]["id"], "5001",
        "PING ids are strings: {json}"
    );

    let listed = http
        .get(setup.url(&format!(
            "/v1/deliveries?subscription={}&job=5001",
            setup.subscription
        )))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .expect("list answers");
    assert_eq!(listed.status(), 200, "listing with the token");
    let listed = listed.text().await.expect("list body");
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("list is JSON");
    assert_eq!(
        listed["deliveries"][0]["event"], "PING",
        "the PING is listed: {listed}"
    );
    daemon.terminate();
}

#[tokio::test]
async fn logical_message_ping_commits_only() {
    let setup = setup().await;
    let mut daemon = Daemon::setup_and_start(&setup.config());
    wait_ready(&setup).await;
    let message = |job: i64| {
        format!(
            "SELECT pg_logical_emit_message(true, 'walhook', '{{\"event\":\"PING\",\"subscription\":{},\"jobs\":[{job}]}}')",
            setup.subscription
        )
    };

    setup
        .db
        .execute(&format!("BEGIN; {}; ROLLBACK;", message(7001)))
        .await;
    setup
        .db
        .execute(&format!("BEGIN; {}; COMMIT;", message(7002)))
        .await;

    let request = expect_delivery(&setup.receiver, WAIT, "the committed PING").await;
    let json = request.json().expect("PING body is JSON");
    assert_eq!(
        json["payload"]["jobs"][0]["id"], "7002",
        "the committed PING arrives first: {json}"
    );
    let extra = setup.receiver.next_delivery(Duration::from_secs(2)).await;
    assert!(
        extra.is_none(),
        "the rolled-back PING sends nothing: {:?}",
        extra.map(|r| r.body)
    );
    daemon.terminate();
}

#[tokio::test]
async fn cli_ping_arrives() {
    let setup = setup().await;
    let mut daemon = Daemon::setup_and_start(&setup.config());
    wait_ready(&setup).await;

    let config_path = daemon.config_path().display().to_string();
    let subscription = setup.subscription.to_string();
    let output = support::walhook(&[
        "ping",
        "--config",
        &config_path,
        "--subscription",
        &subscription,
        "--job",
        "5001",
        "--job",
        "5002",
    ]);
    assert!(
        output.status.success(),
        "`walhook ping` failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    let request = expect_delivery(&setup.receiver, WAIT, "the CLI's PING").await;
    let json = request.json().expect("PING body is JSON");
    assert_eq!(json["event"], "PING", "the CLI's PING arrives: {json}");
    let ids: Vec<&str> = json["payload"]["jobs"]
        .as_array()
        .map(|jobs| jobs.iter().filter_map(|job| job["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["5001", "5002"], "both jobs in one PING: {json}");

    let unknown = support::walhook(&[
        "ping",
        "--config",
        &config_path,
        "--subscription",
        "999999",
        "--job",
        "5001",
    ]);
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(!unknown.status.success(), "a PING to no subscription fails");
    assert!(
        stderr.contains("subscription 999999 not found"),
        "the error names the subscription: {stderr}"
    );
    daemon.terminate();
}

#[tokio::test]
async fn shutdown_abandons_slow_delivery() {
    let setup = setup().await;
    // The request may take 120 s, so only the shutdown deadline ends it.
    let config = setup
        .config()
        .replacen("timeout = \"5s\"", "timeout = \"120s\"", 1);
    let path = format!("/company-{COMPANY}");
    setup
        .receiver
        .set_fallback(&path, Reply::status(200).after(Duration::from_secs(120)));
    let mut daemon = Daemon::setup_and_start(&config);
    wait_ready(&setup).await;

    setup
        .db
        .execute("UPDATE jobs SET stage_id = 2 WHERE id = 5001")
        .await;
    expect_delivery(
        &setup.receiver,
        WAIT,
        "the stage change, held by the receiver",
    )
    .await;

    let signalled = Instant::now();
    daemon.signal(nix::sys::signal::Signal::SIGTERM);
    let status = loop {
        if let Some(status) = daemon.try_exit_status() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(60),
            "the daemon did not exit within 60 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let waited = signalled.elapsed();

    assert!(
        status.success(),
        "the daemon exits 0 at the deadline: {status}"
    );
    assert!(
        waited >= Duration::from_secs(25),
        "the daemon waited for the in-flight delivery: exited after {waited:?}"
    );
    let client = setup.db.connect().await;
    let row = client
        .query_one("SELECT status FROM walhook.deliveries", &[])
        .await
        .expect("one delivery row");
    let delivery_status: String = row.get(0);
    assert_eq!(
        delivery_status, "pending",
        "the abandoned delivery stays pending"
    );
}

/// Returns `config` with the log filter `filter` and the static endpoint
/// `static-hook` at `url`, which receives STAGE_CHANGED signed with `secret`.
fn with_endpoint(config: &str, filter: &str, url: &str, secret: &str) -> String {
    let config = config.replacen("filter = \"info\"", &format!("filter = \"{filter}\""), 1);
    format!(
        "{config}\n[[endpoints]]\nid = \"static-hook\"\nurl = \"{url}\"\nsecret = \"{secret}\"\nevents = [\"STAGE_CHANGED\"]\n"
    )
}

/// Changes the stage of the seed job and returns the sorted paths of the two
/// webhooks it raises: one to the company's subscription, one to the static
/// endpoint.
async fn stage_change_paths(setup: &Setup, stage: i64) -> Vec<String> {
    setup
        .db
        .execute(&format!(
            "UPDATE jobs SET stage_id = {stage} WHERE id = 5001"
        ))
        .await;
    let mut paths = Vec::new();
    for expected in ["the first webhook of the stage change", "the second one"] {
        paths.push(expect_delivery(&setup.receiver, WAIT, expected).await.path);
    }
    paths.sort();
    paths
}

#[tokio::test]
async fn reload_applies_endpoint_and_filter() {
    let setup = setup().await;
    let secret = generate_secret();
    setup.receiver.add_secret(&secret);
    let old_url = format!("{}/static-old", setup.receiver.url());
    let new_url = format!("{}/static-new", setup.receiver.url());
    let mut daemon =
        Daemon::setup_and_start(&with_endpoint(&setup.config(), "info", &old_url, &secret));
    wait_ready(&setup).await;
    let reconnects = "walhook_replication_reconnects_total";
    let reconnects_before = sample(&scrape(&setup).await, reconnects, &[]);

    let company = format!("/company-{COMPANY}");
    assert_eq!(
        stage_change_paths(&setup, 2).await,
        [company.as_str(), "/static-old"],
        "webhooks before the reload"
    );
    assert!(
        !daemon.log().contains("delivery attempt finished"),
        "the filter `info` hides debug lines before the reload"
    );

    daemon.write_config(&with_endpoint(
        &setup.config(),
        "info,walhook=debug",
        &new_url,
        &secret,
    ));
    daemon.reload_and_wait("configuration reloaded", WAIT).await;
    assert!(
        daemon.try_exit_status().is_none(),
        "the daemon keeps running after SIGHUP"
    );

    assert_eq!(
        stage_change_paths(&setup, 3).await,
        [company.as_str(), "/static-new"],
        "webhooks after the reload"
    );
    daemon
        .wait_for_log("delivery attempt finished", 1, WAIT)
        .await;
    let reconnects_after = sample(&scrape(&setup).await, reconnects, &[]);
    assert_eq!(
        reconnects_after, reconnects_before,
        "no replication session failed"
    );
    let log = daemon.log();
    assert_eq!(
        log.matches("replication started").count(),
        1,
        "the replication stream started once:\n{log}"
    );
    daemon.terminate();
}

#[tokio::test]
async fn reload_keeps_config_on_error() {
    let setup = setup().await;
    let config = setup.config();
    let mut daemon = Daemon::setup_and_start(&config);
    wait_ready(&setup).await;

    let broken = config.replacen("[delivery]\n", "[delivery]\nconcurrency = 0\n", 1);
    let line = broken
        .lines()
        .position(|l| l == "concurrency = 0")
        .map_or(0, |index| index + 1);
    daemon.write_config(&broken);
    daemon
        .reload_and_wait("reloading the configuration failed", WAIT)
        .await;
    let log = daemon.log();
    assert!(
        log.contains("`delivery.concurrency`"),
        "the error names the key:\n{log}"
    );
    assert!(
        log.contains(&format!("line {line}")),
        "the error names line {line}:\n{log}"
    );
    assert!(
        daemon.try_exit_status().is_none(),
        "the daemon keeps running after a failed reload"
    );

    let restart_only = config.replacen(
        "status_interval = \"500ms\"",
        "status_interval = \"700ms\"",
        1,
    );
    daemon.write_config(&restart_only);
    daemon.reload_and_wait("configuration reloaded", WAIT).await;
    let log = daemon.log();
    assert!(
        log.contains("source.status_interval"),
        "the changed restart key is named:\n{log}"
    );
    assert!(
        log.contains("applies only after a restart"),
        "the warning says that a restart is needed:\n{log}"
    );

    setup
        .db
        .execute("UPDATE jobs SET stage_id = 2 WHERE id = 5001")
        .await;
    expect_delivery(&setup.receiver, WAIT, "the stage change after the reloads").await;
    daemon.terminate();
}

#[tokio::test]
async fn reload_notifies_systemd() {
    let setup = setup().await;
    let socket_path = setup.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("notify socket binds");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let socket_text = socket_path.display().to_string();
    let env = [("NOTIFY_SOCKET", socket_text.as_str())];
    let mut daemon = Daemon::setup_and_start_with_env(&setup.config(), &env);

    let mut messages = Vec::new();
    read_notifications(&socket, &mut messages, |m| position(m, "READY=1").is_some());
    let Some(ready) = position(&messages, "READY=1") else {
        panic!("READY=1 arrives: {messages:?}");
    };

    daemon.signal(nix::sys::signal::Signal::SIGHUP);
    read_notifications(&socket, &mut messages, |m| {
        m[ready + 1..].iter().any(|l| l == "READY=1")
    });
    let reloading = position(&messages, "RELOADING=1");
    assert!(
        reloading.is_some_and(|reloading| reloading > ready),
        "RELOADING=1 arrives after READY=1: {messages:?}"
    );
    let reloading = reloading.unwrap_or_default();
    let monotonic = messages[reloading..]
        .iter()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .and_then(|usec| usec.parse::<u64>().ok());
    assert!(
        monotonic.is_some_and(|usec| usec > 0),
        "MONOTONIC_USEC comes with RELOADING=1: {messages:?}"
    );
    assert!(
        messages[reloading..].iter().any(|l| l == "READY=1"),
        "READY=1 ends the reload: {messages:?}"
    );
    assert!(
        daemon.try_exit_status().is_none(),
        "the daemon keeps running after SIGHUP"
    );
    daemon.terminate();
}

#[tokio::test]
async fn retried_delivery_follows_new_url() {
    let setup = setup().await;
    let old_path = format!("/company-{COMPANY}");
    setup.receiver.set_fallback(&old_path, Reply::status(500));
    let mut daemon = Daemon::setup_and_start(&setup.config());
    wait_ready(&setup).await;

    setup
        .db
        .execute("UPDATE jobs SET stage_id = 2 WHERE id = 5001")
        .await;
    let first = expect_delivery(&setup.receiver, WAIT, "the first attempt, answered 500").await;
    assert_eq!(
        first.path, old_path,
        "the first attempt goes to the old URL"
    );
    let webhook_id = first.header("webhook-id").map(str::to_owned);

    let new_url = format!("{}/company-moved", setup.receiver.url());
    let client = setup.db.connect().await;
    client
        .execute(
            "UPDATE webhook_subscriptions SET url = $1 WHERE id = $2",
            &[&new_url as &(dyn ToSql + Sync), &setup.subscription],
        )
        .await
        .expect("subscription URL updated");

    // A retry that came due before the update reached walhook still goes to
    // the old URL; the retries after it go to the new one.
    let moved = loop {
        let request = expect_delivery(&setup.receiver, WAIT, "a retry at the new URL").await;
        assert_eq!(
            request.header("webhook-id").map(str::to_owned),
            webhook_id,
            "every attempt is the same delivery"
        );
        if request.path == "/company-moved" {
            break request;
        }
        assert_eq!(request.path, old_path, "attempts go to the old or new URL");
    };
    assert!(
        moved.signature_valid,
        "the retry is signed with the subscription's secret"
    );

    let deadline = Instant::now() + WAIT;
    let (status, url) = loop {
        let row = client
            .query_one("SELECT status, url FROM walhook.deliveries", &[])
            .await
            .expect("one delivery row");
        let status: String = row.get(0);
        if status != "pending" || Instant::now() > deadline {
            break (status, row.get::<_, String>(1));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(status, "delivered", "the retry at the new URL is recorded");
    assert_eq!(
        url,
        format!("{}{old_path}", setup.receiver.url()),
        "the row keeps the URL it was first addressed to"
    );
    daemon.terminate();
}

#[tokio::test]
async fn reload_applies_delivery_settings() {
    let setup = setup().await;
    let config = setup.config();
    let mut daemon = Daemon::setup_and_start(&config);
    wait_ready(&setup).await;

    setup
        .db
        .execute("UPDATE jobs SET stage_id = 2 WHERE id = 5001")
        .await;
    expect_delivery(&setup.receiver, WAIT, "the stage change before the reload").await;

    let strict = config.replacen(
        "allow_private_targets = true",
        "allow_private_targets = false",
        1,
    );
    assert_ne!(strict, config, "the test config allows private targets");
    daemon.write_config(&strict);
    daemon
        .reload_and_wait("reloaded [delivery] settings applied", WAIT)
        .await;

    setup
        .db
        .execute("UPDATE jobs SET stage_id = 3 WHERE id = 5001")
        .await;
    let client = setup.db.connect().await;
    let deadline = Instant::now() + WAIT;
    let last_error = loop {
        let row = client
            .query_one(
                "SELECT last_error FROM walhook.deliveries ORDER BY id DESC LIMIT 1",
                &[],
            )
            .await
            .expect("the newest delivery row");
        let last_error: Option<String> = row.get(0);
        if last_error.is_some() || Instant::now() > deadline {
            break last_error.unwrap_or_default();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        last_error.contains("delivery.allowed_networks"),
        "the reloaded target policy rejects the loopback receiver: {last_error}"
    );
    let extra = setup.receiver.next_delivery(Duration::from_secs(1)).await;
    assert!(
        extra.is_none(),
        "no webhook reaches the loopback receiver after the reload: {:?}",
        extra.map(|r| r.path)
    );
    daemon.terminate();
}

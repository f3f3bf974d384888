//! Helpers of the end-to-end delivery tests: a daemon config with its own
//! `[delivery]` section, subscriptions, queue reads, and signature checks by
//! the independent Python implementation of Standard Webhooks.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio_postgres::types::ToSql;

use super::{ReceivedRequest, TestDb};

/// Company of the seed job; its subscriptions receive the job's events.
pub const COMPANY: i64 = 101;

/// A job of company 101, written before the slot exists so it raises nothing.
pub const SEED_JOB: &str = "
    INSERT INTO jobs (id, alt_id, account_id, company_id, stage_id, first_name, last_name,
                      address_1, city, state, zip)
    VALUES (5001, 'A-5001', 125, 101, 1, 'Robin', 'Home', '10 Elm St', 'Boulder', 'CO', '80301');
";

/// Returns the test config of `db` with its `[delivery]` section replaced by
/// `delivery`, which contains the keys without the section header.
pub fn config_with_delivery(db: &TestDb, delivery: &str) -> String {
    let config = db.config();
    let start = config
        .find("[delivery]")
        .expect("the test config has a [delivery] section");
    let end = config[start..]
        .find("\n[")
        .map_or(config.len(), |offset| start + offset);
    format!(
        "{}[delivery]\n{delivery}\n{}",
        &config[..start],
        &config[end..]
    )
}

/// Inserts a subscription of company 101 to every event and returns its id.
pub async fn add_subscription(db: &TestDb, url: &str, secret: &str) -> i64 {
    let client = db.connect().await;
    let row = client
        .query_one(
            "INSERT INTO webhook_subscriptions (company_id, url, secret) VALUES ($1, $2, $3)
             RETURNING id",
            &[&COMPANY as &(dyn ToSql + Sync), &url, &secret],
        )
        .await
        .expect("subscription inserted");
    row.get(0)
}

/// Sets the stage of the seed job, raising one STAGE_CHANGED.
pub async fn change_stage(db: &TestDb, stage: i64) {
    db.execute(&format!(
        "UPDATE jobs SET stage_id = {stage} WHERE id = 5001"
    ))
    .await;
}

/// One queue row: id, status, attempts, last HTTP status, last error.
#[derive(Clone, Debug)]
pub struct QueueRow {
    pub id: i64,
    pub subscription: String,
    pub status: String,
    pub attempts: i32,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
}

/// Returns every delivery of the queue, oldest first.
pub async fn queue_rows(db: &TestDb) -> Vec<QueueRow> {
    let client = db.connect().await;
    let rows = client
        .query(
            "SELECT id, subscription, status, attempts, last_status, last_error
             FROM walhook.deliveries ORDER BY id",
            &[],
        )
        .await
        .expect("queue is readable");
    rows.iter()
        .map(|row| QueueRow {
            id: row.get(0),
            subscription: row.get(1),
            status: row.get(2),
            attempts: row.get(3),
            last_status: row.get(4),
            last_error: row.get(5),
        })
        .collect()
}

/// Waits up to `timeout` until the queue contains `count` rows that all have
/// `status`, and returns them.
pub async fn wait_for_rows(
    db: &TestDb,
    count: usize,
    status: &str,
    timeout: Duration,
) -> Vec<QueueRow> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let rows = queue_rows(db).await;
        if rows.len() == count && rows.iter().all(|row| row.status == status) {
            return rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {count} deliveries `{status}` within {timeout:?}: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Python program that verifies one request with the `standardwebhooks`
/// package. It reads the secret, headers and body as JSON on stdin, so the
/// secret stays off the command line.
const VERIFY_PY: &str = "
import json, sys
try:
    from standardwebhooks.webhooks import Webhook
except ImportError:
    sys.exit(3)
data = json.load(sys.stdin)
Webhook(data['secret']).verify(data['body'].encode(), data['headers'], json_parse=False)
";

/// Verifies the Standard Webhooks signature of `request` under `secret` with
/// the PyPI package `standardwebhooks`, an implementation independent of
/// walhook's, and panics with its error when it does not verify.
pub fn verify_with_python(secret: &str, request: &ReceivedRequest) {
    let header = |name: &str| request.header(name).unwrap_or_default().to_owned();
    let input = serde_json::json!({
        "secret": secret,
        "body": String::from_utf8_lossy(&request.body),
        "headers": {
            "webhook-id": header("webhook-id"),
            "webhook-timestamp": header("webhook-timestamp"),
            "webhook-signature": header("webhook-signature"),
        },
    });

    let mut child = match Command::new("python3")
        .args(["-c", VERIFY_PY])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(err) => panic!("cannot run `python3` to verify signatures: {err}"),
    };
    let mut stdin = child.stdin.take().expect("stdin is piped");
    stdin
        .write_all(input.to_string().as_bytes())
        .expect("python3 reads its input");
    drop(stdin);
    let output = child.wait_with_output().expect("python3 exits");

    assert_ne!(
        output.status.code(),
        Some(3),
        "the Python package `standardwebhooks` is missing: run `pip install standardwebhooks`"
    );
    assert!(
        output.status.success(),
        "standardwebhooks rejected webhook `{}` at timestamp `{}`: {}",
        header("webhook-id"),
        header("webhook-timestamp"),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Runs `walhook ARGS --config FILE` and returns its stdout, panicking with
/// its stderr when it fails.
pub fn walhook_ok(args: &[&str], config: &std::path::Path) -> String {
    let config = config.display().to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--config", &config]);
    let output = super::walhook(&all);
    assert!(
        output.status.success(),
        "`walhook {}` failed ({}): {}",
        all.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

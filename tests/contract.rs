//! End-to-end contract tests: application writes in, webhooks out, through a
//! real PostgreSQL and the real daemon process.
//!
//! The writes reproduce the documented example of every event (same ids,
//! values and timestamps), so each received body must equal its fixture in
//! `tests/fixtures/contract/` value for value, key order included.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use support::{expect_delivery, generate_secret, Daemon, ReceivedRequest, Receiver, TestDb};
use tokio_postgres::types::ToSql;

const WAIT: Duration = Duration::from_secs(30);

/// Rows the documented examples refer to, added to the example seed data.
const CONTRACT_SEED: &str = "
    INSERT INTO companies (id, name) VALUES (1, 'Example Contractor'), (3464, 'Example Partner');
    UPDATE accounts SET first_name = 'Alex', last_name = 'Example' WHERE id = 125;
    INSERT INTO accounts (id, first_name, last_name, email, company_id) VALUES
        (1, 'Casey', 'Owner', 'casey@example.com', 1),
        (23, 'Sam', 'Sample', 'sam@example.com', 1),
        (26, 'Jordan', 'Field', 'jordan@example.com', 1);
    INSERT INTO jobs (id, alt_id, account_id, company_id, stage_id, stage_changed_at,
                      first_name, last_name, address_1, city, state, zip) VALUES
        (48604, NULL, 1, 1, 4, '2021-05-20 05:15:19+00', 'Robin', 'Home', '10 Elm St', 'Boulder', 'CO', '80301'),
        (42161, NULL, 1, 1, 2, now(), 'Lee', 'House', '22 Oak Ave', 'Denver', 'CO', '80202'),
        (48586, NULL, 125, 1, 3, now(), 'Kim', 'Place', '5 Pine Rd', 'Golden', 'CO', '80401'),
        (48609, NULL, 23, 1, 3, now(), 'Ash', 'Lodge', '9 Birch Ln', 'Lakewood', 'CO', '80226'),
        (41968, NULL, 1, 1, 6, now(), 'Drew', 'Cabin', '3 Aspen Ct', 'Boulder', 'CO', '80302');
    INSERT INTO ticket_templates (id, program_id, name) VALUES (18, 7, 'Review');
    INSERT INTO tickets (id, job_id, template_id, status, updated_by)
        VALUES (37, 48586, 18, 'Draft', 125);
";

/// One transaction per documented example, in this order. `{ping}` is the
/// subscription id of company 1.
const CONTRACT_WRITES: [(&str, &str); 11] = [
    (
        "NEW_JOB_CREATED",
        "INSERT INTO jobs (id, alt_id, account_id, company_id, first_name, last_name,
                           address_1, city, state, zip)
         VALUES (48621, '234552', 1, 1, 'Pat', 'Bungalow', '1 Main St', 'Boulder', 'CO', '80301')",
    ),
    (
        "STAGE_CHANGED",
        "UPDATE jobs SET stage_id = 6, stage_changed_at = '2021-05-20 05:15:23.457891+00'
         WHERE id = 48604",
    ),
    ("JOB_FIRST_TIME_MODELED", "UPDATE jobs SET first_modeled_at = now() WHERE id = 48621"),
    ("ADDRESS_CHANGED", "UPDATE jobs SET address_1 = '24 Oak Ave' WHERE id = 42161"),
    ("JOB_TRANSFERRED", "UPDATE jobs SET account_id = 26 WHERE id = 42161"),
    ("JOB_TRANSFERRED_TO_OTHER_COMPANY", "UPDATE jobs SET company_id = 3464 WHERE id = 42161"),
    (
        "CHAT_POSTED.file",
        "INSERT INTO chats (uuid, job_id, account_id, message, file_name, file_uuid, file_url, created_at)
         VALUES ('eac07e58-fd16-41ce-8553-e009e16c60c0', 48586, 125, NULL,
                 'Screenshot 2021-05-21 at 17.01.45.png', 'f5994e21-8a30-43de-b6c8-0ebce8c4a8f6',
                 'https://files.example.com/uploads/f5994e21-8a30-43de-b6c8-0ebce8c4a8f6/Screenshot20210521at170145.png',
                 '2021-06-02 06:29:47+00')",
    ),
    (
        "CHAT_POSTED.message",
        "INSERT INTO chats (uuid, job_id, account_id, message, created_at)
         VALUES ('d5da6ded-6c37-4a10-b5c8-22096fee7169', 48609, 23, 'Chat.', '2021-05-20 05:08:56+00')",
    ),
    (
        "HES_SCORE_OBTAINED",
        "INSERT INTO hes_scores (job_id, label_number, assessment_type, base_score, assessment_date)
         VALUES (41968, 236447, 'final', 6, '2021-06-02')",
    ),
    (
        "TICKET_STATUS_CHANGED",
        "UPDATE tickets SET status = 'Submitted for Review', updated_by = 125,
                            updated_at = '2021-06-02 07:01:51+00'
         WHERE id = 37",
    ),
    (
        "PING",
        "SELECT pg_logical_emit_message(true, 'walhook',
             '{\"event\":\"PING\",\"subscription\":{ping},\"jobs\":[42161,\"42482\"]}')",
    ),
];

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/contract/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("cannot read {path}: {err}"));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("invalid JSON in {path}: {err}"))
}

/// Inserts a subscription to every event for `company` and returns its id.
async fn subscribe(db: &TestDb, company: i64, url: &str, secret: &str) -> i64 {
    let client = db.connect().await;
    let row = client
        .query_one(
            "INSERT INTO webhook_subscriptions (company_id, url, secret) VALUES ($1, $2, $3) RETURNING id",
            &[&company as &(dyn ToSql + Sync), &url, &secret],
        )
        .await
        .expect("subscription inserted");
    row.get(0)
}

/// Returns the position of the request whose body is `expected`, or else of
/// one of the same event, so that the assertion shows the difference.
/// Webhooks about different jobs may arrive in any order, because only the
/// webhooks about one job are sent one after the other.
fn matching_request(requests: &[ReceivedRequest], expected: &Value, name: &str) -> usize {
    let bodies: Vec<Option<Value>> = requests.iter().map(|r| r.json().ok()).collect();
    bodies
        .iter()
        .position(|body| body.as_ref() == Some(expected))
        .or_else(|| {
            bodies.iter().position(|body| {
                body.as_ref()
                    .is_some_and(|body| body["event"] == expected["event"])
            })
        })
        .unwrap_or_else(|| panic!("no {name} webhook arrived"))
}

/// Runs the documented writes and checks every webhook against its fixture.
async fn check_contract(db: &TestDb, config: &str, receiver: &Receiver, ping_subscription: i64) {
    let mut daemon = Daemon::setup_and_start(config);
    for (_, sql) in CONTRACT_WRITES {
        db.execute(&sql.replace("{ping}", &ping_subscription.to_string()))
            .await;
    }

    let mut by_path: HashMap<String, Vec<ReceivedRequest>> = HashMap::new();
    for index in 0..CONTRACT_WRITES.len() + 1 {
        let request = expect_delivery(
            receiver,
            WAIT,
            &format!("webhook {index} of the contract writes"),
        )
        .await;
        by_path
            .entry(request.path.clone())
            .or_default()
            .push(request);
    }

    let mut first = by_path.remove("/company-1").unwrap_or_default();
    let names: Vec<&str> = CONTRACT_WRITES.iter().map(|(name, _)| *name).collect();
    assert_eq!(
        first.len(),
        names.len(),
        "company 1 gets one webhook per write"
    );
    for name in &names {
        let expected = fixture(name);
        let request = first.remove(matching_request(&first, &expected, name));
        let body = request.json().expect("body is JSON");
        assert_eq!(
            body, expected,
            "{name} payload differs from the documentation"
        );
        assert!(request.signature_valid, "{name} signature verifies");
        assert_eq!(
            request.header("content-type"),
            Some("application/json"),
            "{name} content type"
        );
    }

    let partner = by_path.remove("/company-3464").unwrap_or_default();
    assert_eq!(partner.len(), 1, "the new company gets the transfer only");
    let body = partner[0].json().expect("body is JSON");
    assert_eq!(
        body,
        fixture("JOB_TRANSFERRED_TO_OTHER_COMPANY"),
        "transfer to the new company"
    );
    assert!(
        by_path.is_empty(),
        "no other receiver paths: {:?}",
        by_path.keys()
    );

    assert!(daemon.terminate().success(), "daemon exits 0 on SIGTERM");
}

#[tokio::test]
async fn example_schema_sends_documented_payloads() {
    let db = TestDb::with_schema().await;
    db.execute(CONTRACT_SEED).await;
    let secret = generate_secret();
    let receiver = Receiver::start(&secret).await.expect("receiver starts");
    let first = subscribe(&db, 1, &format!("{}/company-1", receiver.url()), &secret).await;
    subscribe(
        &db,
        3464,
        &format!("{}/company-3464", receiver.url()),
        &secret,
    )
    .await;

    check_contract(&db, &db.config(), &receiver, first).await;
}

/// The example schema with every watched table and column renamed, and a
/// config.toml that maps the new names: the webhooks must not change.
const RENAMES: [&str; 14] = [
    "ALTER TABLE jobs RENAME TO work_orders",
    "ALTER TABLE work_orders RENAME COLUMN id TO order_no",
    "ALTER TABLE work_orders RENAME COLUMN alt_id TO external_ref",
    "ALTER TABLE work_orders RENAME COLUMN stage_id TO phase",
    "ALTER TABLE work_orders RENAME COLUMN stage_changed_at TO phase_since",
    "ALTER TABLE work_orders RENAME COLUMN company_id TO contractor",
    "ALTER TABLE chats RENAME TO feed_posts",
    "ALTER TABLE feed_posts RENAME COLUMN job_id TO order_no",
    "ALTER TABLE hes_scores RENAME TO energy_scores",
    "ALTER TABLE energy_scores RENAME COLUMN label_number TO doe_label",
    "ALTER TABLE tickets RENAME TO reviews",
    "ALTER TABLE reviews RENAME COLUMN status TO review_state",
    "ALTER TABLE webhook_subscriptions RENAME TO hooks",
    "ALTER TABLE hooks RENAME COLUMN company_id TO contractor",
];

/// Views with the old names let the same example writes run on the renamed
/// tables; the daemon only ever sees the renamed tables through the WAL.
const COMPATIBILITY_VIEWS: &str = "
    CREATE VIEW jobs AS SELECT order_no AS id, external_ref AS alt_id, account_id,
        contractor AS company_id, program_id, phase AS stage_id, phase_since AS stage_changed_at,
        first_modeled_at, first_name, last_name, email, address_1, address_2, city, state, zip,
        created_at, updated_at FROM work_orders;
    CREATE VIEW chats AS SELECT uuid, order_no AS job_id, account_id, message, file_name, file_uuid,
        file_url, is_system, created_at, updated_at, deleted_at FROM feed_posts;
    CREATE VIEW hes_scores AS SELECT id, job_id, doe_label AS label_number, assessment_type,
        base_score, package_score, assessment_date, created_at FROM energy_scores;
    CREATE VIEW tickets AS SELECT id, job_id, template_id, review_state AS status, updated_by,
        created_at, updated_at FROM reviews;
    CREATE VIEW webhook_subscriptions AS SELECT id, contractor AS company_id, program_id, url,
        secret, events, enabled, created_at FROM hooks;
    GRANT SELECT ON work_orders, feed_posts, energy_scores, reviews, hooks TO walhook;
";

const RENAMED_MAPPING: &str = r#"
[tables.jobs]
table = "public.work_orders"
id = "order_no"
alt_id = "external_ref"
account = "account_id"
company = "contractor"
program = "program_id"
stage = "phase"
stage_changed_at = "phase_since"
first_modeled = "first_modeled_at"
address = ["address_1", "address_2", "city", "state", "zip"]

[tables.chats]
table = "public.feed_posts"
uuid = "uuid"
job_id = "order_no"
account_id = "account_id"
message = "message"
file_name = "file_name"
file_uuid = "file_uuid"
file_url = "file_url"
created_at = "created_at"
updated_at = "updated_at"
deleted_at = "deleted_at"
system = "is_system"
account_full_name = "SELECT concat_ws(' ', first_name, last_name) FROM public.accounts WHERE id = $1"

[tables.hes_scores]
table = "public.energy_scores"
job_id = "job_id"
label_number = "doe_label"
hes_type = "assessment_type"
base_score = "base_score"
assessment_date = "assessment_date"

[tables.tickets]
table = "public.reviews"
id = "id"
job_id = "job_id"
template_id = "template_id"
status = "review_state"
changed_by = "updated_by"
changed_at = "updated_at"

[subscriptions]
table = "public.hooks"
id = "id"
company = "contractor"
program = "program_id"
url = "url"
secret = "secret"
events = "events"
enabled = "enabled"
"#;

#[tokio::test]
async fn renamed_schema_mapped_in_config_sends_same_payloads() {
    let db = TestDb::with_schema().await;
    db.execute(CONTRACT_SEED).await;
    db.execute("DROP PUBLICATION walhook").await;
    for sql in RENAMES {
        db.execute(sql).await;
    }
    db.execute(COMPATIBILITY_VIEWS).await;
    db.execute(
        "CREATE PUBLICATION walhook FOR TABLE work_orders, feed_posts, energy_scores, reviews, hooks",
    )
    .await;

    let secret = generate_secret();
    let receiver = Receiver::start(&secret).await.expect("receiver starts");
    let first = subscribe(&db, 1, &format!("{}/company-1", receiver.url()), &secret).await;
    subscribe(
        &db,
        3464,
        &format!("{}/company-3464", receiver.url()),
        &secret,
    )
    .await;

    let example = db.config();
    let settings = example
        .split("\n[tables.jobs]")
        .next()
        .expect("config has settings");
    let config = format!("{settings}\n{RENAMED_MAPPING}");
    check_contract(&db, &config, &receiver, first).await;
}

//! Measurement, not a check: delivery latency to a healthy endpoint while
//! other endpoints of the same daemon hang or fail. Ignored by default; run
//!
//! ```sh
//! cargo test --test delivery_latency -- --ignored --nocapture
//! ```
//!
//! Each scenario writes 200 stage changes, one transaction per job, to a
//! company with one healthy subscription, optionally plus one that hangs past
//! `delivery.timeout` and one that responds 500. Latency is the queue row's
//! `delivered_at - created_at`, so replication time is not included.

mod support;

use std::time::{Duration, Instant};

use support::delivery::{add_subscription, config_with_delivery};
use support::{generate_secret, Daemon, Receiver, Reply, TestDb};

const JOBS: i64 = 200;
const WAIT: Duration = Duration::from_secs(180);

/// 200 jobs of company 101, written before the slot exists.
const SEED_JOBS: &str = "
    INSERT INTO jobs (id, alt_id, account_id, company_id, stage_id, first_name, last_name,
                      address_1, city, state, zip)
    SELECT n, 'A-' || n, 125, 101, 1, 'Robin', 'Home', '10 Elm St', 'Boulder', 'CO', '80301'
    FROM generate_series(1, 200) AS n;
";

struct Figures {
    median_ms: f64,
    p90_ms: f64,
    max_ms: f64,
    total: Duration,
}

async fn run_scenario(per_endpoint_concurrency: usize, with_failing: bool) -> Figures {
    let db = TestDb::with_schema().await;
    db.execute(SEED_JOBS).await;
    let secret = generate_secret();
    let healthy = Receiver::start(&secret).await.expect("receiver starts");
    let hanging = Receiver::start(&secret).await.expect("receiver starts");
    let failing = Receiver::start(&secret).await.expect("receiver starts");
    hanging.set_fallback("/hook", Reply::status(200).after(Duration::from_secs(60)));
    failing.set_fallback("/hook", Reply::status(500));

    add_subscription(&db, &format!("{}/hook", healthy.url()), &secret).await;
    if with_failing {
        add_subscription(&db, &format!("{}/hook", hanging.url()), &secret).await;
        add_subscription(&db, &format!("{}/hook", failing.url()), &secret).await;
    }
    let delivery = format!(
        "timeout = \"5s\"\nretry_schedule = [\"1s\", \"5s\", \"30s\"]\nconcurrency = 64\n\
         per_endpoint_concurrency = {per_endpoint_concurrency}\nallow_private_targets = true"
    );
    let mut daemon = Daemon::setup_and_start(&config_with_delivery(&db, &delivery));
    let client = db.connect().await;

    let started = Instant::now();
    for job in 1..=JOBS {
        client
            .execute("UPDATE jobs SET stage_id = 2 WHERE id = $1", &[&job])
            .await
            .expect("stage change");
    }

    let healthy_key: String = client
        .query_one("SELECT 'sub_' || min(id) FROM webhook_subscriptions", &[])
        .await
        .expect("subscription id")
        .get(0);
    let deadline = Instant::now() + WAIT;
    let latencies_ms: Vec<f64> = loop {
        let rows = client
            .query(
                "SELECT extract(epoch FROM delivered_at - created_at)::float8 * 1000
                 FROM walhook.deliveries WHERE subscription = $1 AND status = 'delivered'",
                &[&healthy_key],
            )
            .await
            .expect("queue is readable");
        if rows.len() as i64 == JOBS {
            break rows.iter().map(|row| row.get(0)).collect();
        }
        assert!(Instant::now() < deadline, "only {} delivered", rows.len());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let total = started.elapsed();
    daemon.terminate();

    let mut sorted = latencies_ms;
    sorted.sort_by(f64::total_cmp);
    Figures {
        median_ms: sorted[sorted.len() / 2],
        p90_ms: sorted[sorted.len() * 9 / 10],
        max_ms: sorted[sorted.len() - 1],
        total,
    }
}

#[tokio::test]
#[ignore = "measurement; prints figures"]
async fn healthy_latency_with_failing_neighbours() {
    for (label, per_endpoint, with_failing) in [
        ("all healthy", 8, false),
        (
            "one hanging, one 500, per_endpoint_concurrency = 8",
            8,
            true,
        ),
        (
            "one hanging, one 500, per_endpoint_concurrency = 64",
            64,
            true,
        ),
    ] {
        let figures = run_scenario(per_endpoint, with_failing).await;
        println!(
            "{label}: {JOBS} webhooks to the healthy endpoint, median {:.0} ms, p90 {:.0} ms, \
             max {:.0} ms, all delivered {:.1} s after the first write",
            figures.median_ms,
            figures.p90_ms,
            figures.max_ms,
            figures.total.as_secs_f64()
        );
    }
}

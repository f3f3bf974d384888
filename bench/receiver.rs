//! Webhook receiver and load generator for `bench/run.sh`.
//!
//! `bench-receiver serve PORT_FILE` listens on 127.0.0.1 at a free port, writes
//! the port to PORT_FILE, and responds to every POST with 200 at once over
//! keep-alive. It counts the requests and, for each STAGE_CHANGED item,
//! records the delay from `newStageTimestamp` to receipt on its own clock.
//! `GET /stats` returns the counts as JSON and `POST /reset` clears them.
//!
//! `bench-receiver load URL SECONDS CONCURRENCY` POSTs a STAGE_CHANGED body to
//! URL from CONCURRENCY tasks for SECONDS and prints the requests per second,
//! which is the ceiling of the receiver on this machine.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

const SAMPLE_BODY: &str = r#"{"event":"STAGE_CHANGED","payload":{"jobs":[{"jobId":48604,"previousStage":4,"newStage":6,"previousStageTimestamp":"2021-05-20T05:15:19.000Z","newStageTimestamp":"2021-05-20T05:15:23.457Z"}]}}"#;

#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    /// Receipt times of the first and the last webhook, in ms since the epoch.
    first_unix_ms: AtomicU64,
    last_unix_ms: AtomicU64,
    /// Delays from `newStageTimestamp` to receipt, in ms.
    latencies_ms: Mutex<Vec<f64>>,
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve", port_file] => runtime.block_on(serve(port_file)),
        ["load", url, seconds, concurrency] => {
            runtime.block_on(load(url, seconds.parse()?, concurrency.parse()?))
        }
        _ => anyhow::bail!(
            "usage: bench-receiver serve PORT_FILE | bench-receiver load URL SECONDS CONCURRENCY"
        ),
    }
}

async fn serve(port_file: &str) -> anyhow::Result<()> {
    let stats = Arc::new(Stats::default());
    let app = Router::new()
        .route("/stats", get(report))
        .route("/reset", post(reset))
        .fallback(receive)
        .with_state(stats);
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    std::fs::write(port_file, listener.local_addr()?.port().to_string())?;
    axum::serve(listener, app).await?;
    Ok(())
}

async fn receive(State(stats): State<Arc<Stats>>, method: Method, body: String) -> StatusCode {
    if method != Method::POST {
        return StatusCode::METHOD_NOT_ALLOWED;
    }
    let now_ms = unix_ms(SystemTime::now());
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let _ = stats.first_unix_ms.compare_exchange(
        0,
        now_ms as u64,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    stats
        .last_unix_ms
        .fetch_max(now_ms as u64, Ordering::Relaxed);

    if body.contains("newStageTimestamp") {
        let delays = stage_delays_ms(&body, now_ms);
        stats
            .latencies_ms
            .lock()
            .expect("no holder of the lock panics")
            .extend(delays);
    }
    StatusCode::OK
}

/// Returns the delay of each STAGE_CHANGED item of `body` to `now_ms`.
/// `newStageTimestamp` has millisecond precision, truncated, so each delay
/// is up to 1 ms longer than the true one.
fn stage_delays_ms(body: &str, now_ms: f64) -> Vec<f64> {
    let Ok(webhook) = serde_json::from_str::<Value>(body) else {
        return Vec::new();
    };
    let Some(jobs) = webhook["payload"]["jobs"].as_array() else {
        return Vec::new();
    };
    jobs.iter()
        .filter_map(|job| job["newStageTimestamp"].as_str())
        .filter_map(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
        .map(|stamp| now_ms - stamp.timestamp_micros() as f64 / 1000.0)
        .collect()
}

async fn report(State(stats): State<Arc<Stats>>) -> Json<Value> {
    let mut delays = stats
        .latencies_ms
        .lock()
        .expect("no holder of the lock panics")
        .clone();
    delays.sort_by(f64::total_cmp);
    let percentile = |p: f64| -> Option<f64> {
        let last = delays.len().checked_sub(1)?;
        Some(delays[((last as f64) * p).round() as usize])
    };
    Json(json!({
        "requests": stats.requests.load(Ordering::Relaxed),
        "first_unix_ms": stats.first_unix_ms.load(Ordering::Relaxed),
        "last_unix_ms": stats.last_unix_ms.load(Ordering::Relaxed),
        "latency_samples": delays.len(),
        "latency_p50_ms": percentile(0.50),
        "latency_p99_ms": percentile(0.99),
        "latency_max_ms": delays.last(),
    }))
}

async fn reset(State(stats): State<Arc<Stats>>) -> StatusCode {
    stats.requests.store(0, Ordering::Relaxed);
    stats.first_unix_ms.store(0, Ordering::Relaxed);
    stats.last_unix_ms.store(0, Ordering::Relaxed);
    stats
        .latencies_ms
        .lock()
        .expect("no holder of the lock panics")
        .clear();
    StatusCode::OK
}

async fn load(url: &str, seconds: f64, concurrency: usize) -> anyhow::Result<()> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();

    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, url, sent) = (client.clone(), url.to_owned(), Arc::clone(&sent));
        tasks.spawn(async move {
            while Instant::now() < deadline {
                let response = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(SAMPLE_BODY)
                    .send()
                    .await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "receiver responded {}",
                    response.status()
                );
                sent.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    let rate = sent.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    println!("{rate:.0}");
    Ok(())
}

fn unix_ms(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0
}

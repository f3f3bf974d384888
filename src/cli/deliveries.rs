//! `walhook deliveries list|retry` and `walhook subscriptions enable`: the
//! operator's view of the queue and redelivery, through the queue database of
//! the configuration file.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context as _};
use clap::{ArgGroup, Subcommand};
use tokio_postgres::Client;

use crate::queue::admin::{self, DeliveryFilter, DeliverySummary};
use crate::routing::SubscriptionKey;

/// Rows that `deliveries list` shows when `--limit` is absent.
const DEFAULT_LIST_LIMIT: i64 = 50;

/// Characters of `last_error` shown in the table; `--json` shows all.
const ERROR_COLUMN_CHARS: usize = 60;

/// `walhook deliveries …`
#[derive(Subcommand)]
pub enum DeliveriesCommand {
    /// List deliveries, newest first.
    List {
        /// Configuration file.
        #[arg(long, default_value = "/etc/walhook/config.toml")]
        config: PathBuf,
        /// Only deliveries with this status.
        #[arg(long, value_parser = ["pending", "delivered", "failed"])]
        status: Option<String>,
        /// Only deliveries of this subscription: the application's numeric id
        /// or a key such as `sub_42` or `endpoint_1a2b3c4d5e6f`.
        #[arg(long, value_parser = parse_subscription)]
        subscription: Option<SubscriptionKey>,
        /// Only deliveries about this job id.
        #[arg(long)]
        job: Option<i64>,
        /// Maximum number of rows shown.
        #[arg(long, default_value_t = DEFAULT_LIST_LIMIT)]
        limit: i64,
        /// Print one JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make deliveries pending and due now, for one more attempt each.
    #[command(group(ArgGroup::new("which").required(true).args(["ids", "failed"])))]
    Retry {
        /// Configuration file.
        #[arg(long, default_value = "/etc/walhook/config.toml")]
        config: PathBuf,
        /// Delivery ids, as `deliveries list` shows them.
        ids: Vec<i64>,
        /// Retry every failed delivery instead of the given ids.
        #[arg(long, conflicts_with = "ids")]
        failed: bool,
        /// With `--failed`: only deliveries created at or after this RFC 3339
        /// time, such as `2026-05-20T05:15:00Z`.
        #[arg(long, requires = "failed", value_parser = parse_rfc3339)]
        since: Option<SystemTime>,
    },
}

/// `walhook subscriptions …`
#[derive(Subcommand)]
pub enum SubscriptionsCommand {
    /// Re-enable a subscription that a receiver disabled with 410 Gone; its
    /// held deliveries go out again.
    Enable {
        /// Configuration file.
        #[arg(long, default_value = "/etc/walhook/config.toml")]
        config: PathBuf,
        /// The application's numeric subscription id, or a key such as
        /// `sub_42` or `endpoint_1a2b3c4d5e6f`.
        #[arg(value_parser = parse_subscription)]
        id: SubscriptionKey,
    },
}

/// Runs a `deliveries` subcommand.
pub async fn run_deliveries(command: DeliveriesCommand) -> anyhow::Result<()> {
    match command {
        DeliveriesCommand::List {
            config,
            status,
            subscription,
            job,
            limit,
            json,
        } => {
            let (client, schema) = connect_queue(&config).await?;
            let filter = DeliveryFilter {
                status,
                subscription: subscription.map(|key| key.to_string()),
                job_id: job,
                limit: limit.max(0),
            };
            let rows = admin::list_deliveries(&client, &schema, &filter)
                .await
                .context("cannot list deliveries")?;
            print!(
                "{}",
                if json {
                    json_lines(&rows)?
                } else {
                    table(&rows)
                }
            );
            Ok(())
        }
        DeliveriesCommand::Retry {
            config,
            ids,
            failed,
            since,
        } => {
            let (client, schema) = connect_queue(&config).await?;
            if failed {
                let count = admin::retry_failed(&client, &schema, since)
                    .await
                    .context("cannot retry failed deliveries")?;
                println!("{count} failed deliveries made pending, due now");
                return Ok(());
            }
            retry_ids(&client, &schema, &ids).await
        }
    }
}

/// Runs a `subscriptions` subcommand.
pub async fn run_subscriptions(command: SubscriptionsCommand) -> anyhow::Result<()> {
    let SubscriptionsCommand::Enable { config, id } = command;
    let (client, schema) = connect_queue(&config).await?;
    let key = id.to_string();
    let was_disabled = admin::enable_subscription(&client, &schema, &key)
        .await
        .with_context(|| format!("cannot enable subscription `{key}`"))?;
    if was_disabled {
        println!("subscription `{key}` enabled; its held deliveries are due now");
    } else {
        println!("subscription `{key}` was not disabled; nothing changed");
    }
    Ok(())
}

async fn retry_ids(client: &Client, schema: &str, ids: &[i64]) -> anyhow::Result<()> {
    let count = admin::retry_deliveries(client, schema, ids)
        .await
        .context("cannot retry deliveries")?;
    println!("{count} deliveries made pending, due now");
    let expected = u64::try_from(ids.len()).unwrap_or(u64::MAX);
    if count < expected {
        bail!(
            "{} of the given delivery ids do not exist: check them with `walhook deliveries list`",
            expected - count
        );
    }
    Ok(())
}

/// Connects to the queue database of the configuration at `path`, and
/// returns the client and `queue.schema`.
async fn connect_queue(path: &Path) -> anyhow::Result<(Client, String)> {
    let config = super::load_config(path)?;
    let client = crate::db::connect(&config.queue_postgres()?, "queue")
        .await
        .context("cannot connect to the queue database: check `queue.url` or `source.url`")?;
    Ok((client, config.queue.schema))
}

/// Parses a subscription argument: a number is the application's id.
fn parse_subscription(text: &str) -> Result<SubscriptionKey, String> {
    if let Ok(id) = text.parse::<i64>() {
        return Ok(SubscriptionKey::App(id));
    }
    SubscriptionKey::parse(text).ok_or_else(|| {
        format!(
            "`{text}` is not a subscription: give the application's numeric id, such as `42`, \
             or a key such as `sub_42` or `endpoint_1a2b3c4d5e6f`"
        )
    })
}

fn parse_rfc3339(text: &str) -> Result<SystemTime, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(SystemTime::from)
        .map_err(|err| {
            format!("`{text}` is not an RFC 3339 time, such as `2026-05-20T05:15:00Z`: {err}")
        })
}

fn json_lines(rows: &[DeliverySummary]) -> anyhow::Result<String> {
    let mut out = String::new();
    for row in rows {
        out.push_str(&serde_json::to_string(row).context("cannot encode a delivery as JSON")?);
        out.push('\n');
    }
    Ok(out)
}

/// Formats deliveries as a table with aligned columns.
fn table(rows: &[DeliverySummary]) -> String {
    let header = [
        "ID",
        "STATUS",
        "ATTEMPTS",
        "SUBSCRIPTION",
        "EVENT",
        "JOBS",
        "NEXT ATTEMPT",
        "LAST RESULT",
    ]
    .map(str::to_owned);
    let mut lines = vec![header];
    lines.extend(rows.iter().map(table_row));

    let widths: Vec<usize> = (0..lines[0].len())
        .map(|column| {
            let width = lines.iter().map(|line| line[column].chars().count());
            width.max().unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in &lines {
        let mut text = String::new();
        for (cell, width) in line.iter().zip(&widths) {
            let _ = write!(text, "{cell:<width$}  ");
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

fn table_row(row: &DeliverySummary) -> [String; 8] {
    let jobs: Vec<String> = row.job_ids.iter().map(i64::to_string).collect();
    let last = match (&row.last_status, &row.last_error) {
        (Some(status), _) => format!("HTTP {status}"),
        (None, Some(error)) => shorten(error, ERROR_COLUMN_CHARS),
        (None, None) => "-".to_owned(),
    };
    let next = if row.status == "pending" {
        row.next_attempt_at.clone()
    } else {
        "-".to_owned()
    };
    [
        row.id.to_string(),
        row.status.clone(),
        row.attempts.to_string(),
        row.subscription.clone(),
        row.event.clone(),
        jobs.join(","),
        next,
        last,
    ]
}

fn shorten(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        return text.to_owned();
    }
    let kept: String = text.chars().take(max_chars.saturating_sub(1)).collect();
    format!("{kept}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(id: i64, status: &str, error: Option<&str>) -> DeliverySummary {
        DeliverySummary {
            id,
            webhook_id: format!("msg_{id}"),
            subscription: "sub_7".to_owned(),
            event: "STAGE_CHANGED".to_owned(),
            job_ids: vec![5001, 5002],
            status: status.to_owned(),
            attempts: 3,
            next_attempt_at: "2026-05-20T05:15:23.457Z".to_owned(),
            created_at: "2026-05-20T05:15:20.000Z".to_owned(),
            last_status: None,
            last_error: error.map(str::to_owned),
        }
    }

    #[test]
    fn subscription_number_is_app_key() {
        assert_eq!(parse_subscription("42"), Ok(SubscriptionKey::App(42)));
        assert_eq!(parse_subscription("sub_42"), Ok(SubscriptionKey::App(42)));
        assert_eq!(
            parse_subscription("endpoint_1a2b3c4d5e6f"),
            Ok(SubscriptionKey::Endpoint("1a2b3c4d5e6f".to_owned()))
        );
        let err = parse_subscription("company-7").expect_err("not a key");
        assert!(err.contains("`company-7`"), "{err}");
    }

    #[test]
    fn since_parses_rfc3339() {
        let parsed = parse_rfc3339("1970-01-01T00:01:40Z").expect("valid time");
        assert_eq!(
            parsed,
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(100)
        );
        assert!(parse_rfc3339("yesterday").is_err());
    }

    #[test]
    fn table_aligns_columns() {
        let long_error = "connection failed: ".repeat(10);
        let text = table(&[
            summary(12, "failed", Some(&long_error)),
            summary(3, "pending", None),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "header and two rows");
        let status_column = lines[0].find("STATUS").expect("header has STATUS");
        assert_eq!(lines[1].find("failed"), Some(status_column));
        assert_eq!(lines[2].find("pending"), Some(status_column));
        assert!(lines[1].contains("5001,5002"), "{}", lines[1]);
        assert!(
            lines[1].ends_with('…'),
            "long errors are shortened: {}",
            lines[1]
        );
        assert!(lines[1].contains(" - "), "no next attempt for a failed row");
    }
}

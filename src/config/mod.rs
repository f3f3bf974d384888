//! `config.toml`: the operator's mapping of the application's tables and columns,
//! and the daemon's settings.
//!
//! Every table and column name is configuration, so the same binary serves any
//! schema. Unknown keys are rejected with their line, and `validate` reports the
//! key and the constraint of every other mistake.

mod duration;
mod load;
mod postgres;
mod reload;
mod secret;
mod tables;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use duration::parse_duration;
pub use load::{load, load_str, ConfigError};
pub use postgres::{parse_connection_string, ParsedConnectionString, PostgresTarget};
pub use reload::{keep_restart_keys, RESTART_KEYS};
pub use secret::Secret;
pub use tables::{
    quote_ident, ChatsTable, HesScoresTable, JobsTable, QualifiedName, SubscriptionsTable, Tables,
    TicketsTable,
};

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub source: SourceConfig,
    #[serde(default)]
    pub queue: QueueConfig,
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub http: HttpConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub replication: ReplicationConfig,
    pub tables: Tables,
    pub subscriptions: SubscriptionsTable,
    /// Static subscriptions that receive the events of every tenant.
    #[serde(default)]
    pub endpoints: Vec<EndpointConfig>,
}

/// `[source]`: the application database and its replication objects.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// libpq-style URL or key=value string of the application database.
    pub url: String,
    /// File holding the password, read at start and on reload; overrides a
    /// password in `url`. A reloaded password applies to new connections.
    pub password_file: Option<PathBuf>,
    /// Publication that covers every mapped table and the subscriptions table.
    #[serde(default = "default_publication")]
    pub publication: String,
    /// Logical replication slot that walhook owns.
    #[serde(default = "default_slot")]
    pub slot: String,
    /// Password read from `password_file`; not a key of the file.
    #[serde(skip)]
    pub password: Option<Secret>,
    /// Interval between standby status updates when the server requests none.
    #[serde(
        default = "default_status_interval",
        deserialize_with = "duration::deserialize"
    )]
    pub status_interval: Duration,
}

/// `[queue]`: where the durable outbox lives.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Database of the queue; `source.url` when absent.
    pub url: Option<String>,
    /// Schema of the queue tables, created by `walhook setup`.
    #[serde(default = "default_queue_schema")]
    pub schema: String,
}

/// `[delivery]`: how webhooks are sent.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Limit of one request: connect, TLS, request and response body.
    #[serde(
        default = "default_timeout",
        deserialize_with = "duration::deserialize"
    )]
    pub timeout: Duration,
    /// Delays between attempts; a delivery gets one attempt more than there are entries.
    #[serde(
        default = "default_retry_schedule",
        deserialize_with = "duration::deserialize_list"
    )]
    pub retry_schedule: Vec<Duration>,
    /// Requests in flight, all endpoints together.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Requests in flight to one endpoint (the `host:port` of the URL as
    /// written), so a slow receiver takes at most this many of `concurrency`.
    #[serde(default = "default_per_endpoint_concurrency")]
    pub per_endpoint_concurrency: usize,
    /// Items in one webhook's payload array.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Lets targets resolve to loopback, private and link-local addresses.
    #[serde(default)]
    pub allow_private_targets: bool,
    /// Networks let through although private, such as `["127.0.0.1/32"]`.
    #[serde(default)]
    pub allowed_networks: Vec<ipnet::IpNet>,
}

/// `[replication]`: what the daemon may do to its slot.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    /// Drops and re-creates a slot that PostgreSQL invalidated, or creates
    /// one that was dropped after progress was stored, logging the LSN range
    /// whose changes are lost, instead of stopping with an error.
    #[serde(default)]
    pub recreate_invalidated_slot: bool,
}

/// `[http]`: the operations endpoint.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz` and the admin API.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// File holding the bearer token of the admin API, read at start and on reload.
    pub admin_token_file: Option<PathBuf>,
}

/// `[log]`: what the daemon logs.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `RUST_LOG`-style filter; the `RUST_LOG` environment variable overrides it.
    #[serde(default = "default_log_filter")]
    pub filter: String,
}

/// `[[endpoints]]`: a subscription defined in the file instead of the application.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Name that identifies the endpoint in the queue (`endpoint_ID`) instead
    /// of a hash of its URL, so that its pending deliveries follow a change
    /// of `url`. Lowercase letters, digits, `_` and `-`.
    pub id: Option<String>,
    pub url: String,
    /// Secret given inline; prefer `secret_file`.
    pub secret: Option<Secret>,
    /// File holding the secret (`whsec_` followed by base64), read at start
    /// and on reload.
    pub secret_file: Option<PathBuf>,
    /// Event names; empty means all.
    #[serde(default)]
    pub events: Vec<String>,
}

pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_CONCURRENCY: usize = 64;
pub const DEFAULT_PER_ENDPOINT_CONCURRENCY: usize = 8;
pub const DEFAULT_MAX_BATCH: usize = 100;
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);

fn default_publication() -> String {
    "walhook".to_owned()
}

fn default_slot() -> String {
    "walhook".to_owned()
}

fn default_status_interval() -> Duration {
    DEFAULT_STATUS_INTERVAL
}

fn default_queue_schema() -> String {
    "walhook".to_owned()
}

fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}

fn default_retry_schedule() -> Vec<Duration> {
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    [
        5,
        5 * MINUTE,
        30 * MINUTE,
        2 * HOUR,
        5 * HOUR,
        10 * HOUR,
        14 * HOUR,
        20 * HOUR,
    ]
    .into_iter()
    .map(Duration::from_secs)
    .collect()
}

fn default_concurrency() -> usize {
    DEFAULT_CONCURRENCY
}

fn default_per_endpoint_concurrency() -> usize {
    DEFAULT_PER_ENDPOINT_CONCURRENCY
}

fn default_max_batch() -> usize {
    DEFAULT_MAX_BATCH
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9187))
}

fn default_log_filter() -> String {
    "info".to_owned()
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            url: None,
            schema: default_queue_schema(),
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            timeout: default_timeout(),
            retry_schedule: default_retry_schedule(),
            concurrency: default_concurrency(),
            per_endpoint_concurrency: default_per_endpoint_concurrency(),
            max_batch: default_max_batch(),
            allow_private_targets: false,
            allowed_networks: Vec::new(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: default_listen(),
            admin_token_file: None,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            filter: default_log_filter(),
        }
    }
}

impl Config {
    /// Returns the connection settings of the application database, with the
    /// password of `password_file` applied, and reads the TLS certificate
    /// files that `source.url` names.
    pub fn source_postgres(&self) -> Result<PostgresTarget, ConfigError> {
        let mut parsed = parse_url("source.url", &self.source.url)?;
        if let Some(password) = &self.source.password {
            parsed.config.password(password.expose());
        }
        load_target("source.url", parsed)
    }

    /// Returns the connection settings of the queue database, which is the
    /// application database unless `queue.url` is set.
    pub fn queue_postgres(&self) -> Result<PostgresTarget, ConfigError> {
        match &self.queue.url {
            Some(url) => load_target("queue.url", parse_url("queue.url", url)?),
            None => self.source_postgres(),
        }
    }

    /// Checks that `source.url` and `queue.url` parse, reading no file.
    pub fn parse_postgres_urls(&self) -> Result<(), ConfigError> {
        parse_url("source.url", &self.source.url)?;
        if let Some(url) = &self.queue.url {
            parse_url("queue.url", url)?;
        }
        Ok(())
    }
}

fn parse_url(key: &str, url: &str) -> Result<ParsedConnectionString, ConfigError> {
    parse_connection_string(url).map_err(|message| ConfigError::Invalid {
        key: key.to_owned(),
        message: format!("is not a valid PostgreSQL connection URL: {message}"),
    })
}

fn load_target(key: &str, parsed: ParsedConnectionString) -> Result<PostgresTarget, ConfigError> {
    parsed.load().map_err(|message| ConfigError::Invalid {
        key: key.to_owned(),
        message,
    })
}

//! Tests of the replication client against a throwaway PostgreSQL cluster.
//!
//! Each test runs `initdb` and `pg_ctl` from `WALHOOK_PG_BIN` (default
//! `/usr/lib/postgresql/15/bin`) in a temporary directory, listening on
//! 127.0.0.1 at a free port and on a Unix socket in the same directory. When
//! the tests run as root, the server runs as the `postgres` user through
//! `runuser`, because PostgreSQL refuses to run as root.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;
use tokio::time::{sleep, timeout, Instant};
use walhook::replication::{
    Lsn, ReplicationClient, ReplicationMessage, ReplicationStream, StandbyStatus,
};

const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const SLOT: &str = "walhook_test";
const PUBLICATION: &str = "walhook_test";
const MD5_PASSWORD: &str = "md5-secret";
const SCRAM_PASSWORD: &str = "scram-secret";
const WAIT: Duration = Duration::from_secs(20);

const PG_HBA: &str = "\
local all all trust
host all postgres 127.0.0.1/32 trust
host all trust_user 127.0.0.1/32 trust
host all md5_user 127.0.0.1/32 md5
host all scram_user 127.0.0.1/32 scram-sha-256
";

const SETUP_SQL: &str = "
CREATE ROLE trust_user LOGIN REPLICATION;
SET password_encryption = 'md5';
CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5-secret';
SET password_encryption = 'scram-sha-256';
CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'scram-secret';
CREATE TABLE items (id int PRIMARY KEY, note text);
CREATE PUBLICATION walhook_test FOR TABLE items;
";

/// A running PostgreSQL cluster that is stopped and deleted on drop, also
/// when a test panics.
struct Cluster {
    dir: TempDir,
    port: u16,
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::tempdir().expect("create temporary directory");
        let cluster = Cluster {
            dir,
            port: free_port(),
        };
        chown_to_postgres(cluster.dir.path());

        let data = cluster.data_dir();
        run_pg(&[
            "initdb",
            "-D",
            path_str(&data),
            "-U",
            "postgres",
            "-A",
            "trust",
        ])
        .args(["-E", "UTF8", "--locale=C", "--no-sync"])
        .status_ok("initdb");
        std::fs::write(data.join("pg_hba.conf"), PG_HBA).expect("write pg_hba.conf");
        let settings = format!(
            "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
             wal_level = logical\nwal_sender_timeout = '10s'\nfsync = off\n",
            cluster.port,
            path_str(cluster.dir.path()),
        );
        append(&data.join("postgresql.conf"), &settings);

        let log = cluster.dir.path().join("server.log");
        run_pg(&[
            "pg_ctl",
            "-D",
            path_str(&data),
            "-l",
            path_str(&log),
            "-w",
            "start",
        ])
        .status_ok("pg_ctl start");
        cluster
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Connection settings over TCP.
    fn tcp_config(&self, user: &str, password: Option<&str>) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(user)
            .dbname("postgres");
        if let Some(password) = password {
            config.password(password);
        }
        config
    }

    /// Connects an ordinary session as the superuser and runs the setup script.
    async fn admin(&self) -> tokio_postgres::Client {
        let (client, connection) = self
            .tcp_config("postgres", None)
            .connect(tokio_postgres::NoTls)
            .await
            .expect("admin connection");
        tokio::spawn(connection);
        client.batch_execute(SETUP_SQL).await.expect("setup script");
        client
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = run_pg(&[
            "pg_ctl",
            "-D",
            path_str(&data),
            "-m",
            "immediate",
            "-w",
            "stop",
        ])
        .output();
    }
}

/// Builds a command for a PostgreSQL binary, through `runuser` when root.
fn run_pg(args: &[&str]) -> Command {
    let bin_dir = std::env::var("WALHOOK_PG_BIN").unwrap_or_else(|_| DEFAULT_PG_BIN.to_owned());
    let program = Path::new(&bin_dir).join(args[0]);
    if nix::unistd::geteuid().is_root() {
        let mut command = Command::new("runuser");
        command
            .args(["-u", "postgres", "--"])
            .arg(program)
            .args(&args[1..]);
        command
    } else {
        let mut command = Command::new(program);
        command.args(&args[1..]);
        command
    }
}

trait StatusOk {
    fn status_ok(&mut self, step: &str);
}

impl StatusOk for Command {
    fn status_ok(&mut self, step: &str) {
        let output = self
            .output()
            .unwrap_or_else(|err| panic!("{step} failed to run: {err}"));
        assert!(
            output.status.success(),
            "{step} failed: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

fn chown_to_postgres(path: &Path) {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let user = nix::unistd::User::from_name("postgres")
        .expect("look up user postgres")
        .expect("user postgres exists");
    let (uid, gid) = (user.uid.as_raw(), user.gid.as_raw());
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown to postgres");
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .expect("open for append");
    file.write_all(text.as_bytes()).expect("append");
}

async fn slot_state(admin: &tokio_postgres::Client) -> (Lsn, bool) {
    let row = admin
        .query_one(
            "SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots \
             WHERE slot_name = $1",
            &[&SLOT],
        )
        .await
        .expect("slot row");
    let lsn: String = row.get(0);
    (lsn.parse().expect("valid LSN"), row.get(1))
}

async fn create_slot(admin: &tokio_postgres::Client) {
    admin
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&SLOT],
        )
        .await
        .expect("create slot");
}

async fn start_stream(cluster: &Cluster) -> ReplicationStream {
    let config = cluster.tcp_config("scram_user", Some(SCRAM_PASSWORD));
    let client = ReplicationClient::connect(&config.into())
        .await
        .expect("connect");
    client
        .start_logical_replication(SLOT, Lsn::ZERO, PUBLICATION)
        .await
        .expect("start replication")
}

#[tokio::test]
async fn auth_methods_connect() {
    let cluster = Cluster::start();
    let admin = cluster.admin().await;
    // pg_hba's `md5` runs the MD5 exchange only for a password stored as MD5.
    let stored = |user: &'static str| {
        let admin = &admin;
        async move {
            let row = admin
                .query_one(
                    "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
                    &[&user],
                )
                .await
                .expect("role row");
            row.get::<_, String>(0)
        }
    };
    assert!(
        stored("md5_user").await.starts_with("md5"),
        "md5_user stored as MD5"
    );
    assert!(
        stored("scram_user").await.starts_with("SCRAM-SHA-256$"),
        "scram_user stored as SCRAM"
    );
    let cases = [
        ("trust_user", None),
        ("md5_user", Some(MD5_PASSWORD)),
        ("scram_user", Some(SCRAM_PASSWORD)),
    ];

    for (user, password) in cases {
        let config = cluster.tcp_config(user, password);
        let mut client = ReplicationClient::connect(&config.into())
            .await
            .unwrap_or_else(|err| panic!("{user} should connect: {err:?}"));

        let identity = client.identify_system().await.expect("IDENTIFY_SYSTEM");

        assert_eq!(
            identity.timeline, 1,
            "{user}: a new cluster is on timeline 1"
        );
        assert_eq!(
            identity.dbname.as_deref(),
            Some("postgres"),
            "{user}: dbname"
        );
        assert!(identity.xlog_pos > Lsn::ZERO, "{user}: xlog_pos after 0/0");
        assert!(!identity.system_id.is_empty(), "{user}: system_id present");
    }
}

#[tokio::test]
async fn wrong_password_rejected() {
    let cluster = Cluster::start();
    let _admin = cluster.admin().await;

    for user in ["md5_user", "scram_user"] {
        let config = cluster.tcp_config(user, Some("wrong"));

        let result = ReplicationClient::connect(&config.into()).await;

        let err = result
            .err()
            .unwrap_or_else(|| panic!("{user} must not connect"));
        assert!(
            err.is_authentication_failed(),
            "{user}: expected 28xxx, got {err:?}"
        );
    }
}

#[tokio::test]
async fn unix_socket_and_session_settings() {
    let cluster = Cluster::start();
    let _admin = cluster.admin().await;
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(cluster.dir.path())
        .port(cluster.port)
        .user("trust_user")
        .dbname("postgres");

    let mut client = ReplicationClient::connect(&config.into())
        .await
        .expect("connect");

    let show =
        |rows: Vec<Vec<Option<String>>>| rows.into_iter().next().and_then(|row| row[0].clone());
    let timezone = show(client.simple_query("SHOW TimeZone").await.expect("SHOW"));
    let datestyle = show(client.simple_query("SHOW DateStyle").await.expect("SHOW"));
    let application = show(
        client
            .simple_query("SHOW application_name")
            .await
            .expect("SHOW"),
    );
    assert_eq!(timezone.as_deref(), Some("UTC"));
    assert_eq!(datestyle.as_deref(), Some("ISO, MDY"));
    assert_eq!(application.as_deref(), Some("walhook"));
    assert_eq!(client.parameter("client_encoding"), Some("UTF8"));
}

#[tokio::test]
async fn simple_query_reports_server_error() {
    let cluster = Cluster::start();
    let _admin = cluster.admin().await;
    let config = cluster.tcp_config("trust_user", None);
    let mut client = ReplicationClient::connect(&config.into())
        .await
        .expect("connect");

    let err = client
        .simple_query("DROP_REPLICATION_SLOT missing_slot")
        .await
        .expect_err("the slot does not exist");
    let rows = client
        .simple_query("SELECT 1, NULL")
        .await
        .expect("usable after an error");

    assert!(err.is_undefined_object(), "expected 42704, got {err:?}");
    assert_eq!(rows, vec![vec![Some("1".to_owned()), None]]);
    client.close().await.expect("close");
}

#[tokio::test]
async fn stream_changes_and_confirm() {
    let cluster = Cluster::start();
    let admin = cluster.admin().await;
    create_slot(&admin).await;
    let (initial_flush, _) = slot_state(&admin).await;
    admin
        .execute("INSERT INTO items VALUES (1, 'first')", &[])
        .await
        .expect("insert");
    let mut stream = start_stream(&cluster).await;

    // A timer races every read, so cancelled reads must lose nothing.
    let mut tags = Vec::new();
    let mut commit_end = None;
    let mut keepalive_seen = false;
    let deadline = Instant::now() + WAIT;
    while commit_end.is_none() || !keepalive_seen {
        assert!(
            Instant::now() < deadline,
            "timed out; tags so far: {tags:?}"
        );
        let message = tokio::select! {
            message = stream.next_message() => message.expect("read").expect("stream open"),
            _ = sleep(Duration::from_millis(5)) => continue,
        };
        match message {
            ReplicationMessage::XLogData(body) => {
                let tag = body
                    .data
                    .first()
                    .copied()
                    .expect("pgoutput message has a tag");
                tags.push(char::from(tag));
                if tag == b'C' {
                    // Commit: tag, flags, commit LSN, end LSN, timestamp.
                    let end = u64::from_be_bytes(body.data[10..18].try_into().expect("8 bytes"));
                    commit_end = Some(Lsn::from_u64(end));
                }
            }
            ReplicationMessage::PrimaryKeepalive(_) => keepalive_seen = commit_end.is_some(),
        }
    }
    let commit_end = commit_end.expect("loop ends after a commit");
    assert_eq!(
        tags.first(),
        Some(&'B'),
        "first XLogData is Begin: {tags:?}"
    );
    assert!(tags.contains(&'I'), "an Insert was streamed: {tags:?}");
    assert!(
        commit_end > initial_flush,
        "commit ends after the slot's start"
    );

    let status = StandbyStatus {
        written: commit_end,
        flushed: commit_end,
        applied: commit_end,
        reply_requested: false,
    };
    stream.send_status(status).await.expect("send status");
    let deadline = Instant::now() + WAIT;
    while slot_state(&admin).await.0 != commit_end {
        assert!(
            Instant::now() < deadline,
            "confirmed_flush_lsn never reached {commit_end}"
        );
        sleep(Duration::from_millis(50)).await;
    }

    timeout(WAIT, stream.close())
        .await
        .expect("close in time")
        .expect("close");
    let deadline = Instant::now() + WAIT;
    while slot_state(&admin).await.1 {
        assert!(Instant::now() < deadline, "slot still active after close");
        sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn second_stream_slot_in_use() {
    let cluster = Cluster::start();
    let admin = cluster.admin().await;
    create_slot(&admin).await;
    let _first = start_stream(&cluster).await;

    let config = cluster.tcp_config("scram_user", Some(SCRAM_PASSWORD));
    let client = ReplicationClient::connect(&config.into())
        .await
        .expect("connect");
    let result = client
        .start_logical_replication(SLOT, Lsn::ZERO, PUBLICATION)
        .await;

    let err = result.expect_err("the first stream is using the slot");
    assert!(err.is_slot_in_use(), "expected 55006, got {err:?}");
    assert!(err.is_transient(), "a held slot is worth retrying");
}

#[tokio::test]
async fn terminated_walsender_ends_stream() {
    let cluster = Cluster::start();
    let admin = cluster.admin().await;
    create_slot(&admin).await;
    let config = cluster.tcp_config("scram_user", Some(SCRAM_PASSWORD));
    let client = ReplicationClient::connect(&config.into())
        .await
        .expect("connect");
    let pid = client.backend_pid();
    let mut stream = client
        .start_logical_replication(SLOT, Lsn::ZERO, PUBLICATION)
        .await
        .expect("start replication");

    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate walsender");
    let outcome = timeout(WAIT, async {
        loop {
            match stream.next_message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("stream ends in time");

    let err = outcome.expect_err("termination is reported as a server error");
    assert_eq!(err.code(), Some("57P01"), "admin_shutdown, got {err:?}");
    assert!(
        err.is_transient(),
        "a terminated walsender is worth reconnecting"
    );
}

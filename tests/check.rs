//! `walhook check --config` against databases and clusters that are set up
//! wrongly: each prints the failed check with its fix and exits non-zero.
//!
//! Mistakes of one database share the test binary's cluster; mistakes of the
//! cluster (`wal_level`, an invalidated slot) start a cluster of their own.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use support::{cluster, connect, TestDb};
use walhook::demo::cluster::{ClusterOptions, TempCluster, APP_DATABASE};
use walhook::demo::{config_for, free_loopback_addr, writes, SCHEMA_SQL};

/// Maximum time to generate WAL until a slot is invalidated.
const SLOT_LOSS_TIMEOUT: Duration = Duration::from_secs(60);

/// A `walhook check` run: its exit status and stdout.
struct CheckRun {
    success: bool,
    stdout: String,
}

impl CheckRun {
    fn failed_lines(&self) -> Vec<&str> {
        self.stdout
            .lines()
            .filter(|line| line.starts_with("FAIL"))
            .collect()
    }

    /// Returns the failed line of check `name`, panicking with the output when absent.
    fn failed_line(&self, name: &str) -> &str {
        let prefix = format!("FAIL  {name}");
        match self.stdout.lines().find(|line| line.starts_with(&prefix)) {
            Some(line) => line,
            None => panic!("no failed `{name}` line in:\n{}", self.stdout),
        }
    }
}

/// Writes `text` as a config file in a new temporary directory.
fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("walhook.toml");
    std::fs::write(&path, text).expect("the config is written");
    (dir, path)
}

async fn run_walhook(command: &'static str, config: &Path) -> Output {
    let config = config.display().to_string();
    tokio::task::spawn_blocking(move || support::walhook(&[command, "--config", &config]))
        .await
        .expect("the walhook run does not panic")
}

async fn run_setup(config: &Path) {
    let output = run_walhook("setup", config).await;
    assert!(
        output.status.success(),
        "walhook setup succeeds: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn run_check(config: &Path) -> CheckRun {
    let output = run_walhook("check", config).await;
    CheckRun {
        success: output.status.success(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
    }
}

/// Creates a database with the example schema, runs `walhook setup` on it
/// and returns it with its config file.
async fn prepared_db() -> (TestDb, tempfile::TempDir, PathBuf) {
    let db = TestDb::with_schema().await;
    let (dir, config) = write_config(&db.config());
    run_setup(&config).await;
    (db, dir, config)
}

#[tokio::test]
async fn all_checks_pass_exit_zero() {
    let (_db, _dir, config) = prepared_db().await;

    let check = run_check(&config).await;

    assert_eq!(check.failed_lines(), Vec::<&str>::new(), "no check fails");
    assert!(check.success, "exit status 0:\n{}", check.stdout);
}

#[tokio::test]
async fn table_missing_from_publication_fails() {
    let (db, _dir, config) = prepared_db().await;
    db.execute("ALTER PUBLICATION walhook DROP TABLE public.tickets")
        .await;

    let check = run_check(&config).await;

    let line = check.failed_line("publication `walhook` covers `public.tickets`");
    assert!(
        line.contains("ALTER PUBLICATION \"walhook\" ADD TABLE"),
        "the fix is shown: {line}"
    );
    assert_eq!(check.failed_lines().len(), 1, "only that check fails");
    assert!(!check.success, "exit status is not 0");
}

#[tokio::test]
async fn default_replica_identity_fails() {
    let (db, _dir, config) = prepared_db().await;
    db.execute("ALTER TABLE public.chats REPLICA IDENTITY DEFAULT")
        .await;

    let check = run_check(&config).await;

    let line = check.failed_line("table `public.chats`");
    assert!(
        line.contains("REPLICA IDENTITY FULL"),
        "the fix is shown: {line}"
    );
    assert_eq!(check.failed_lines().len(), 1, "only that check fails");
    assert!(!check.success, "exit status is not 0");
}

#[tokio::test]
async fn partition_without_full_identity_fails() {
    let (db, _dir, config) = prepared_db().await;
    // The parent gets FULL, its partition keeps DEFAULT.
    db.execute(
        "ALTER TABLE public.tickets RENAME TO tickets_old;
         CREATE TABLE public.tickets (LIKE public.tickets_old) PARTITION BY RANGE (id);
         CREATE TABLE public.tickets_all PARTITION OF public.tickets
             FOR VALUES FROM (MINVALUE) TO (MAXVALUE);
         ALTER TABLE public.tickets REPLICA IDENTITY FULL;
         GRANT SELECT ON public.tickets TO walhook;
         ALTER PUBLICATION walhook ADD TABLE public.tickets;",
    )
    .await;

    let check = run_check(&config).await;

    let line = check.failed_line("table `public.tickets`");
    assert!(
        line.contains("partition `tickets_all` lacks REPLICA IDENTITY FULL"),
        "the partition is named: {line}"
    );
    assert!(!check.success, "exit status is not 0");
}

#[tokio::test]
async fn role_without_replication_fails() {
    let (db, _dir, _config) = prepared_db().await;
    let role = format!("norepl_{}", db.name);
    db.execute(&format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'norepl';
         GRANT USAGE ON SCHEMA public TO {role};
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};"
    ))
    .await;
    let url = format!(
        "postgres://{role}:norepl@127.0.0.1:{}/{}?sslmode=disable",
        cluster().port(),
        db.name
    );
    let listen = free_loopback_addr().expect("127.0.0.1:0 can be bound");
    let (_role_dir, role_config) = write_config(&config_for(&url, &db.slot(), listen));

    let check = run_check(&role_config).await;

    let line = check.failed_line("role may replicate");
    assert!(
        line.contains(&format!("ALTER ROLE \"{role}\" REPLICATION")),
        "the fix is shown: {line}"
    );
    assert!(!check.success, "exit status is not 0");
}

/// Starts a cluster of its own with the example schema in database `app`.
async fn start_cluster(options: ClusterOptions) -> TempCluster {
    tokio::task::spawn_blocking(move || {
        let cluster = TempCluster::start_with(options)?;
        cluster.execute(APP_DATABASE, SCHEMA_SQL)?;
        cluster.execute(APP_DATABASE, &writes::admin_setup_sql(APP_DATABASE))?;
        Ok::<_, anyhow::Error>(cluster)
    })
    .await
    .expect("the start task does not panic")
    .expect("the cluster starts with the example schema")
}

fn cluster_config(cluster: &TempCluster) -> (tempfile::TempDir, PathBuf) {
    let listen = free_loopback_addr().expect("127.0.0.1:0 can be bound");
    write_config(&config_for(
        &cluster.walhook_url(APP_DATABASE),
        "walhook",
        listen,
    ))
}

async fn stop(cluster: TempCluster) {
    drop(tokio::task::spawn_blocking(move || drop(cluster)).await);
}

#[tokio::test]
async fn wal_level_replica_fails() {
    let cluster = start_cluster(ClusterOptions {
        wal_level: "replica".to_owned(),
        ..ClusterOptions::default()
    })
    .await;
    let (_dir, config) = cluster_config(&cluster);

    let check = run_check(&config).await;

    let line = check.failed_line("wal_level = logical");
    assert!(
        line.contains("wal_level is `replica`"),
        "the current value is shown: {line}"
    );
    assert!(
        line.contains("restart PostgreSQL"),
        "the fix is shown: {line}"
    );
    assert!(!check.success, "exit status is not 0");
    stop(cluster).await;
}

#[tokio::test]
async fn invalidated_slot_fails() {
    let cluster = start_cluster(ClusterOptions {
        extra_conf: "max_slot_wal_keep_size = 1MB".to_owned(),
        ..ClusterOptions::default()
    })
    .await;
    let (_dir, config) = cluster_config(&cluster);
    run_setup(&config).await;

    // No client consumes the slot, so switching segments and checkpointing
    // removes the WAL it needs once more than 1MB is retained.
    let client = connect(&cluster.superuser_url(APP_DATABASE)).await;
    client
        .batch_execute("CREATE TABLE filler (x int)")
        .await
        .expect("the filler table is created");
    let deadline = Instant::now() + SLOT_LOSS_TIMEOUT;
    loop {
        let status: Option<String> = client
            .query_one(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'walhook'",
                &[],
            )
            .await
            .expect("the slot exists")
            .get(0);
        if status.as_deref() == Some("lost") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slot not invalidated within {SLOT_LOSS_TIMEOUT:?}, wal_status `{status:?}`"
        );
        client
            .batch_execute(
                "INSERT INTO filler SELECT generate_series(1, 1000);
                 SELECT pg_switch_wal();
                 CHECKPOINT;",
            )
            .await
            .expect("WAL is generated");
    }

    let check = run_check(&config).await;

    let line = check.failed_line("replication slot `walhook`");
    assert!(
        line.contains("wal_status = lost"),
        "the state is shown: {line}"
    );
    assert!(
        line.contains("drop it and run `walhook setup`"),
        "the fix is shown: {line}"
    );
    assert!(!check.success, "exit status is not 0");
    stop(cluster).await;
}

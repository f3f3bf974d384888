//! Integration-test harness: one throwaway PostgreSQL cluster per test
//! binary, a fresh database per test, and the `walhook` binary as a child
//! process.
//!
//! The shared cluster is started on first use and stopped by a background
//! shell once the test binary exits, because a `static` is never dropped.
//! Tests that stop, kill or restart PostgreSQL start their own
//! [`TempCluster`] instead of disturbing the shared one.

// Each test binary uses a different part of the harness.
#![allow(dead_code, unused_imports)]

use std::fs;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio_postgres::{Client, NoTls};
use walhook::demo::cluster::TempCluster;
use walhook::demo::{config_for, free_loopback_addr, writes, SCHEMA_SQL};

pub mod delivery;

pub use walhook::demo::receiver::{generate_secret, ReceivedRequest, Receiver, Reply};

/// Path of the `walhook` binary that Cargo built for these tests.
pub const WALHOOK_BIN: &str = env!("CARGO_BIN_EXE_walhook");

/// Maximum wait for the daemon to exit after SIGTERM.
const DAEMON_EXIT_TIMEOUT: Duration = Duration::from_secs(15);

/// Returns the cluster shared by the tests of this binary, starting it on first use.
///
/// Panics when the cluster cannot start, with the reason; no test of this
/// binary can run without it.
pub fn cluster() -> &'static TempCluster {
    static CLUSTER: OnceLock<TempCluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = match TempCluster::start() {
            Ok(cluster) => cluster,
            Err(err) => panic!("cannot start the test cluster: {err:#}"),
        };
        if let Err(err) = cluster.stop_when_process_exits() {
            panic!("cannot arrange the test cluster's cleanup: {err:#}");
        }
        cluster
    })
}

/// A database of its own for one test, in the shared cluster.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    /// Creates an empty database with a name unique in this cluster.
    pub async fn create() -> TestDb {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let db_name = name.clone();
        let created =
            tokio::task::spawn_blocking(move || cluster().create_database(&db_name)).await;
        match created {
            Ok(Ok(())) => TestDb { name },
            Ok(Err(err)) => panic!("cannot create database `{name}`: {err:#}"),
            Err(err) => panic!("the task creating database `{name}` panicked: {err}"),
        }
    }

    /// Creates a database with the example schema, its seed rows, the grants
    /// of the role `walhook` and the publication `walhook`.
    pub async fn with_schema() -> TestDb {
        let db = TestDb::create().await;
        db.execute(SCHEMA_SQL).await;
        db.execute(&writes::admin_setup_sql(&db.name)).await;
        db
    }

    /// Returns the URL of this database for the superuser.
    pub fn superuser_url(&self) -> String {
        cluster().superuser_url(&self.name)
    }

    /// Returns the URL of this database for the role `walhook`.
    pub fn walhook_url(&self) -> String {
        cluster().walhook_url(&self.name)
    }

    /// Returns the slot name for this database; slots are per cluster.
    pub fn slot(&self) -> String {
        self.name.clone()
    }

    /// Connects as the superuser.
    pub async fn connect(&self) -> Client {
        connect(&self.superuser_url()).await
    }

    /// Runs one or more SQL statements as the superuser, panicking on error.
    pub async fn execute(&self, sql: &str) {
        let client = self.connect().await;
        if let Err(err) = client.batch_execute(sql).await {
            panic!("SQL failed in `{}`: {err:?}\n{sql}", self.name);
        }
    }

    /// Returns a configuration of the example mapping for this database, as
    /// the role `walhook`, with its own slot and a free `/metrics` port.
    pub fn config(&self) -> String {
        let listen = free_loopback_addr().expect("127.0.0.1:0 can be bound");
        config_for(&self.walhook_url(), &self.slot(), listen)
    }
}

/// Connects to `url` without TLS, panicking on failure.
pub async fn connect(url: &str) -> Client {
    let (client, connection) = match tokio_postgres::connect(url, NoTls).await {
        Ok(pair) => pair,
        Err(err) => panic!("cannot connect to the test cluster: {err:?}"),
    };
    tokio::spawn(async move {
        // The connection ends when the test drops the client or the server stops.
        let _ = connection.await;
    });
    client
}

/// Runs `walhook ARGS` to completion and returns its output.
pub fn walhook(args: &[&str]) -> Output {
    match Command::new(WALHOOK_BIN).args(args).output() {
        Ok(output) => output,
        Err(err) => panic!("cannot run `{WALHOOK_BIN}`: {err}"),
    }
}

/// A `walhook run --config FILE` child process, killed on drop.
///
/// Its stdout and stderr go to `daemon.log` next to the config file; the
/// log is printed when a test panics while the daemon is alive.
pub struct Daemon {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Environment variables added to the daemon's, such as `NOTIFY_SOCKET`.
    env: Vec<(String, String)>,
}

impl Daemon {
    /// Writes `config` to a file and starts `walhook run` with it.
    pub fn start(config: &str) -> Daemon {
        let mut daemon = Daemon::with_config(config);
        daemon.spawn();
        daemon
    }

    /// Runs `walhook setup` on the config, then starts the daemon.
    pub fn setup_and_start(config: &str) -> Daemon {
        Daemon::setup_and_start_with_env(config, &[])
    }

    /// Runs `walhook setup`, then starts the daemon with `env` added to its
    /// environment.
    pub fn setup_and_start_with_env(config: &str, env: &[(&str, &str)]) -> Daemon {
        let mut daemon = Daemon::with_config(config);
        daemon.env = env
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let output = walhook(&[
            "setup",
            "--config",
            &daemon.config_path().display().to_string(),
        ]);
        assert!(
            output.status.success(),
            "`walhook setup` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        daemon.spawn();
        daemon
    }

    /// Path of the config file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// Returns what the daemon has logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills the daemon with SIGKILL, like a crash, and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the exit, panicking when the daemon
    /// does not exit within 15 seconds.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the daemon is running");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pids fit in i32"));
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + DAEMON_EXIT_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the daemon did not exit within {DAEMON_EXIT_TIMEOUT:?} after SIGTERM");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the daemon if it runs, then starts it again with the same config.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Sends a signal, such as SIGHUP, to the running daemon.
    pub fn signal(&self, signal: Signal) {
        let child = self.child.as_ref().expect("the daemon is running");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pids fit in i32"));
        kill(pid, signal).expect("the daemon process exists");
    }

    /// Returns the exit status if the daemon has exited.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Replaces the config file, which the daemon reads again on SIGHUP.
    pub fn write_config(&self, config: &str) {
        fs::write(self.config_path(), config).expect("the config file is writable");
    }

    /// Sends SIGHUP and waits until the daemon logs `expected` more often
    /// than before the signal, panicking after `timeout` with the log.
    pub async fn reload_and_wait(&self, expected: &str, timeout: Duration) {
        let before = self.log().matches(expected).count();
        self.signal(Signal::SIGHUP);
        self.wait_for_log(expected, before + 1, timeout).await;
    }

    /// Waits until the log contains `expected` at least `count` times,
    /// panicking after `timeout` with the log. It sleeps without blocking, so
    /// a receiver on the test's runtime keeps responding.
    pub async fn wait_for_log(&self, expected: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.log().matches(expected).count() < count {
            assert!(
                Instant::now() < deadline,
                "the daemon did not log `{expected}` {count} times within {timeout:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Writes the config file into a new temporary directory, without starting anything.
    fn with_config(config: &str) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("walhook-daemon-")
            .tempdir()
            .expect("the temporary directory is writable");
        fs::write(dir.path().join("config.toml"), config).expect("the config file is writable");
        Daemon {
            child: None,
            dir,
            env: Vec::new(),
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    fn spawn(&mut self) {
        let log = open_append(&self.log_path());
        let log_err = log
            .try_clone()
            .expect("the log file handle can be duplicated");
        let mut command = Command::new(WALHOOK_BIN);
        command
            .arg("run")
            .arg("--config")
            .arg(self.config_path())
            .envs(self.env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        // SAFETY: prctl is async-signal-safe, and the closure allocates nothing.
        // The daemon gets SIGKILL when the test thread that started it ends,
        // so a test that aborts leaves no daemon behind.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        match command.spawn() {
            Ok(child) => self.child = Some(child),
            Err(err) => panic!("cannot start `{WALHOOK_BIN} run`: {err}"),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() && thread::panicking() {
            eprintln!(
                "--- daemon log ---\n{}--- end of daemon log ---",
                self.log()
            );
        }
        self.kill9();
    }
}

fn open_append(path: &Path) -> fs::File {
    match fs::OpenOptions::new().create(true).append(true).open(path) {
        Ok(file) => file,
        Err(err) => panic!("cannot open `{}`: {err}", path.display()),
    }
}

/// Waits up to `timeout` for the next webhook, panicking with `what` on timeout.
pub async fn expect_delivery(
    receiver: &Receiver,
    timeout: Duration,
    what: &str,
) -> ReceivedRequest {
    match receiver.next_delivery(timeout).await {
        Some(request) => request,
        None => panic!("no webhook within {timeout:?}: expected {what}"),
    }
}

/// Returns a fresh loopback address for the daemon's HTTP endpoint.
pub fn loopback_addr() -> SocketAddr {
    free_loopback_addr().expect("127.0.0.1:0 can be bound")
}

/// Returns the `http.listen` address of a config written by
/// [`walhook::demo::config_for`].
pub fn listen_addr(config: &str) -> SocketAddr {
    let value = config
        .lines()
        .find_map(|line| line.strip_prefix("listen = "))
        .expect("the config sets http.listen");
    value
        .trim_matches('"')
        .parse()
        .expect("http.listen is a socket address")
}

/// Sends `GET /readyz` to the daemon at `addr` and returns the status and
/// body, or `None` when the request fails, such as before the daemon listens.
pub async fn get_readyz(addr: SocketAddr) -> Option<(u16, String)> {
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/readyz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    let status = response.status().as_u16();
    let body = response.text().await.ok()?;
    Some((status, body))
}

/// Polls `/readyz` at `addr` every 100 ms until it returns `status`, and
/// returns the body. Panics after `timeout`.
pub async fn wait_for_readyz(addr: SocketAddr, status: u16, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        let reply = get_readyz(addr).await;
        if let Some((got, body)) = &reply {
            if *got == status {
                return body.clone();
            }
        }
        last = reply.or(last);
        assert!(
            Instant::now() < deadline,
            "/readyz did not return {status} within {timeout:?}; last reply: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

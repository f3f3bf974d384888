//! A throwaway PostgreSQL cluster for the demo and the integration tests.
//!
//! [`TempCluster::start`] runs `initdb` and `pg_ctl` from the installed server
//! binaries into a temporary directory, with `wal_level = logical`, a free
//! loopback port and the Unix socket in that directory. Local socket
//! connections use `trust`; TCP connections from 127.0.0.1, replication
//! included, use `scram-sha-256`, as a production server would. PostgreSQL
//! refuses to run as root, so under root the server runs as the `postgres`
//! user. Nothing is printed on stdout; the server log is `server.log` in the
//! temporary directory. [`TempCluster::start_with`] changes these settings,
//! so tests can start clusters that are set up wrongly or accept only TLS.

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, Uid, User};
use rand::distributions::{Alphanumeric, DistString};

/// Name of the role that walhook logs in as.
pub const WALHOOK_ROLE: &str = "walhook";

/// Name of the database that [`TempCluster::start`] creates for the application.
pub const APP_DATABASE: &str = "app";

/// Maximum wait for the server to start or to stop.
const SERVER_TIMEOUT: Duration = Duration::from_secs(60);

const POSTGRESQL_CONF: &str = "
# Settings of a throwaway cluster for walhook's demo and tests.
listen_addresses = '127.0.0.1'
max_wal_senders = 20
max_replication_slots = 20
max_connections = 200
# Skipping fsync only risks data on an OS crash, which a throwaway cluster
# can afford. Commits still reach the WAL before they return, so a killed
# server keeps them and logical decoding sees them at once.
fsync = off
full_page_writes = off
logging_collector = off
log_min_messages = warning
";

/// `pg_hba.conf`, with `{host}` replaced by `host` or `hostssl`.
const PG_HBA_CONF: &str = "
# TYPE  DATABASE     USER  ADDRESS       METHOD
local   all          all                 trust
local   replication  all                 trust
{host}    replication  all   127.0.0.1/32  scram-sha-256
{host}    all          all   127.0.0.1/32  scram-sha-256
";

/// Settings of a cluster that [`TempCluster::start_with`] starts.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// `wal_level`; walhook needs `logical`.
    pub wal_level: String,
    /// Server certificate and key; `None` leaves `ssl = off`.
    pub ssl: Option<ServerTls>,
    /// Lines appended to `postgresql.conf`, such as `max_slot_wal_keep_size = 1MB`.
    pub extra_conf: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            wal_level: "logical".to_owned(),
            ssl: None,
            extra_conf: String::new(),
        }
    }
}

/// The server side of TLS for [`ClusterOptions::ssl`].
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// PEM of the server certificate, followed by its intermediates if any.
    pub cert_pem: String,
    /// PEM of the server certificate's private key.
    pub key_pem: String,
    /// Whether TCP connections must use TLS: `hostssl` in `pg_hba.conf` instead of `host`.
    pub tls_only: bool,
}

/// A running PostgreSQL cluster in a temporary directory, removed on drop.
///
/// Dropping it stops the server in `immediate` mode and deletes the directory.
pub struct TempCluster {
    dir: tempfile::TempDir,
    bin_dir: PathBuf,
    port: u16,
    run_as: Option<User>,
    superuser_password: String,
    walhook_password: String,
    running: bool,
}

impl TempCluster {
    /// Creates and starts a cluster with database `app` and the login role
    /// `walhook` (LOGIN REPLICATION, with a random password).
    ///
    /// Blocks for a few seconds; call it from `spawn_blocking` in async code.
    /// Fails when no server binaries are installed, or when running as root
    /// and no `postgres` user exists. Fails also when `initdb` or the server
    /// fails, and the error then contains the tool's output.
    pub fn start() -> anyhow::Result<TempCluster> {
        TempCluster::start_with(ClusterOptions::default())
    }

    /// Creates and starts a cluster like [`TempCluster::start`], with the settings of `options`.
    pub fn start_with(options: ClusterOptions) -> anyhow::Result<TempCluster> {
        let bin_dir = find_bin_dir()?;
        let run_as = server_user()?;
        let dir = tempfile::Builder::new()
            .prefix("walhook-pg-")
            .tempdir()
            .context("cannot create a temporary directory for the cluster; check TMPDIR")?;
        if let Some(user) = &run_as {
            chown(dir.path(), Some(user.uid.as_raw()), Some(user.gid.as_raw())).with_context(
                || format!("cannot give `{}` to user `postgres`", dir.path().display()),
            )?;
        }

        let mut cluster = TempCluster {
            dir,
            bin_dir,
            port: pick_free_port()?,
            run_as,
            superuser_password: random_password(),
            walhook_password: random_password(),
            running: false,
        };
        cluster.initdb()?;
        cluster.write_settings(&options)?;
        cluster.start_server()?;

        let create_role = format!(
            "CREATE ROLE {WALHOOK_ROLE} WITH LOGIN REPLICATION PASSWORD '{}'",
            cluster.walhook_password
        );
        cluster.execute("postgres", &create_role)?;
        cluster.create_database(APP_DATABASE)?;
        Ok(cluster)
    }

    /// Returns the TCP port of the server on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Returns the temporary directory, which also contains the Unix socket.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Returns the path of the server log.
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("server.log")
    }

    /// Returns a `postgres://` URL of database `db` for the superuser `postgres`.
    pub fn superuser_url(&self, db: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{db}?sslmode=disable",
            self.superuser_password, self.port
        )
    }

    /// Returns a `postgres://` URL of database `db` for the role `walhook`.
    pub fn walhook_url(&self, db: &str) -> String {
        format!(
            "postgres://{WALHOOK_ROLE}:{}@127.0.0.1:{}/{db}?sslmode=disable",
            self.walhook_password, self.port
        )
    }

    /// Returns a `postgres://` URL of database `db` for the role `walhook` at
    /// `host` (a name or address of 127.0.0.1), with `query` as its parameters.
    pub fn walhook_url_at(&self, host: &str, db: &str, query: &str) -> String {
        format!(
            "postgres://{WALHOOK_ROLE}:{}@{host}:{}/{db}?{query}",
            self.walhook_password, self.port
        )
    }

    /// Returns the password of the role `walhook`.
    pub fn walhook_password(&self) -> &str {
        &self.walhook_password
    }

    /// Creates database `name`, owned by the superuser, in UTF8.
    pub fn create_database(&self, name: &str) -> anyhow::Result<()> {
        let sql = format!(
            "CREATE DATABASE {} ENCODING 'UTF8' TEMPLATE template0",
            crate::config::quote_ident(name)
        );
        self.execute("postgres", &sql)
    }

    /// Runs SQL text (one or more statements) in database `db` as the
    /// superuser, through `psql` on the Unix socket, stopping at the first error.
    pub fn execute(&self, db: &str, sql: &str) -> anyhow::Result<()> {
        let mut command = self.command("psql");
        command
            .args(["--no-psqlrc", "--quiet", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", &self.socket_dir(), "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", db, "-f", "-"])
            .stdin(Stdio::piped());
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot run `psql`; install the PostgreSQL client")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(sql.as_bytes())
                .context("cannot send SQL to `psql`")?;
        }
        let output = child.wait_with_output().context("cannot wait for `psql`")?;
        check_output("psql", &output)
    }

    /// Stops the server in `fast` mode: sessions are ended, then a checkpoint is written.
    pub fn stop(&mut self) -> anyhow::Result<()> {
        self.pg_ctl_stop("fast")
    }

    /// Stops the server in `immediate` mode: every process exits at once
    /// without a checkpoint, and the next start runs crash recovery.
    pub fn stop_immediate(&mut self) -> anyhow::Result<()> {
        self.pg_ctl_stop("immediate")
    }

    /// Sends SIGKILL to the postmaster, like a crash, and waits until it is gone.
    ///
    /// The next [`TempCluster::restart`] runs crash recovery.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        let pid = self.postmaster_pid()?;
        kill(pid, Signal::SIGKILL)
            .with_context(|| format!("cannot send SIGKILL to postmaster `{pid}`"))?;
        self.running = false;
        wait_until_gone(pid, SERVER_TIMEOUT)
    }

    /// Stops the server in `fast` mode if it runs, then starts it again on the same port.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        if self.running {
            self.stop()?;
        }
        self.start_server()
    }

    /// Starts a background shell that stops this cluster and deletes its
    /// directory once the current process has exited.
    ///
    /// Drop does that already; this also covers a process that never drops
    /// the cluster, such as one kept in a `static`, or a process killed by a
    /// signal. The shell polls once per second.
    pub fn stop_when_process_exits(&self) -> anyhow::Result<()> {
        let pid_file = self.data_dir().join("postmaster.pid");
        let script = format!(
            "while kill -0 {parent} 2>/dev/null; do sleep 1; done; \
             pid=$(head -n 1 '{pid_file}' 2>/dev/null) && kill -QUIT \"$pid\" 2>/dev/null; \
             sleep 2; rm -rf '{dir}'",
            parent = std::process::id(),
            pid_file = pid_file.display(),
            dir = self.dir().display(),
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("cannot start `sh` to clean up the cluster at exit")?;
        Ok(())
    }

    fn data_dir(&self) -> PathBuf {
        self.dir().join("data")
    }

    fn socket_dir(&self) -> String {
        self.dir().display().to_string()
    }

    /// Returns a command for a server binary, run as `postgres` when this process runs as root.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin_dir.join(program));
        command.current_dir(self.dir()).env_remove("PGDATA");
        for var in ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGPASSWORD"] {
            command.env_remove(var);
        }
        if let Some(user) = &self.run_as {
            command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
            command.env("HOME", self.dir()).env("USER", "postgres");
        }
        command
    }

    fn initdb(&self) -> anyhow::Result<()> {
        let password_file = self.dir().join("superuser-password");
        fs::write(&password_file, &self.superuser_password)
            .context("cannot write the superuser password file")?;
        if let Some(user) = &self.run_as {
            chown(
                &password_file,
                Some(user.uid.as_raw()),
                Some(user.gid.as_raw()),
            )
            .context("cannot give the password file to user `postgres`")?;
        }

        let output = self
            .command("initdb")
            .arg("--pgdata")
            .arg(self.data_dir())
            .args(["--username=postgres", "--encoding=UTF8", "--no-locale"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", password_file.display()))
            .output()
            .context("cannot run `initdb`")?;
        check_output("initdb", &output)?;
        fs::remove_file(&password_file).context("cannot remove the superuser password file")
    }

    fn write_settings(&self, options: &ClusterOptions) -> anyhow::Result<()> {
        let mut settings = format!(
            "{POSTGRESQL_CONF}port = {}\nunix_socket_directories = '{}'\nwal_level = {}\n",
            self.port,
            self.socket_dir(),
            options.wal_level
        );
        if let Some(tls) = &options.ssl {
            self.write_server_file("server.crt", &tls.cert_pem)?;
            self.write_server_file("server.key", &tls.key_pem)?;
            settings
                .push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        }
        settings.push_str(&options.extra_conf);
        settings.push('\n');

        let conf = self.data_dir().join("postgresql.conf");
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .with_context(|| format!("cannot open `{}`", conf.display()))?;
        file.write_all(settings.as_bytes())
            .with_context(|| format!("cannot write `{}`", conf.display()))?;
        let host_type = match &options.ssl {
            Some(tls) if tls.tls_only => "hostssl",
            _ => "host",
        };
        fs::write(
            self.data_dir().join("pg_hba.conf"),
            PG_HBA_CONF.replace("{host}", host_type),
        )
        .context("cannot write `pg_hba.conf`")
    }

    /// Writes a file into the data directory, readable only by the server's
    /// user, as PostgreSQL requires of its private key.
    fn write_server_file(&self, name: &str, contents: &str) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;

        let path = self.data_dir().join(name);
        fs::write(&path, contents).with_context(|| format!("cannot write `{}`", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot chmod `{}`", path.display()))?;
        if let Some(user) = &self.run_as {
            chown(&path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                .with_context(|| format!("cannot give `{}` to user `postgres`", path.display()))?;
        }
        Ok(())
    }

    /// Starts the server and waits until it accepts connections.
    ///
    /// Retries for a while, because after [`TempCluster::kill`] the old
    /// backends may still hold the shared memory for a moment.
    fn start_server(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + SERVER_TIMEOUT;
        loop {
            let output = self
                .command("pg_ctl")
                .arg("start")
                .arg("--pgdata")
                .arg(self.data_dir())
                .arg("--log")
                .arg(self.log_path())
                .args(["--wait", "--timeout=60", "--silent"])
                .output()
                .context("cannot run `pg_ctl start`")?;
            match check_output("pg_ctl start", &output) {
                Ok(()) => break,
                Err(err) if Instant::now() > deadline => {
                    return Err(err.context(format!("see `{}`", self.log_path().display())));
                }
                Err(_) => thread::sleep(Duration::from_millis(250)),
            }
        }
        self.running = true;
        Ok(())
    }

    fn pg_ctl_stop(&mut self, mode: &str) -> anyhow::Result<()> {
        let output = self
            .command("pg_ctl")
            .arg("stop")
            .arg("--pgdata")
            .arg(self.data_dir())
            .args(["--wait", "--timeout=60", "--silent", "--mode", mode])
            .output()
            .context("cannot run `pg_ctl stop`")?;
        self.running = false;
        check_output("pg_ctl stop", &output)
    }

    fn postmaster_pid(&self) -> anyhow::Result<Pid> {
        let pid_file = self.data_dir().join("postmaster.pid");
        let text = fs::read_to_string(&pid_file).with_context(|| {
            format!(
                "cannot read `{}`; is the server running?",
                pid_file.display()
            )
        })?;
        let first_line = text.lines().next().unwrap_or_default();
        let pid: i32 = first_line
            .trim()
            .parse()
            .with_context(|| format!("invalid pid `{first_line}` in `{}`", pid_file.display()))?;
        Ok(Pid::from_raw(pid))
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        if self.running {
            // Drop cannot return an error. The directory is deleted next, so a
            // failed stop leaves at most a server without its data files.
            let _ = self.pg_ctl_stop("immediate");
        }
    }
}

/// Finds the directory of `initdb`: on `PATH` first, then the newest
/// `/usr/lib/postgresql/*/bin` (Debian's layout).
fn find_bin_dir() -> anyhow::Result<PathBuf> {
    let from_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    for dir in from_path {
        let initdb = dir.join("initdb");
        if initdb.is_file() {
            // A symlink such as /usr/local/bin/initdb leads to the real bin
            // directory, which also contains pg_ctl and psql.
            let real = fs::canonicalize(&initdb).unwrap_or(initdb);
            if let Some(parent) = real.parent() {
                return Ok(parent.to_owned());
            }
        }
    }

    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => Ok(bin),
        None => bail!(
            "no PostgreSQL server binaries found: `initdb` is neither on PATH nor in \
             `/usr/lib/postgresql/*/bin`; install them (`apt-get install postgresql`)"
        ),
    }
}

/// Returns the `postgres` user when running as root, because the server refuses root.
fn server_user() -> anyhow::Result<Option<User>> {
    if !Uid::effective().is_root() {
        return Ok(None);
    }
    match User::from_name("postgres").context("cannot look up user `postgres`")? {
        Some(user) => Ok(Some(user)),
        None => bail!(
            "running as root, but user `postgres` does not exist; PostgreSQL refuses to run \
             as root, so create it (`useradd --system postgres`) or run as another user"
        ),
    }
}

/// Picks a free TCP port on 127.0.0.1 by binding port 0.
///
/// NOTE: another process can take the port between this check and the server start.
fn pick_free_port() -> anyhow::Result<u16> {
    let listener =
        TcpListener::bind("127.0.0.1:0").context("cannot bind a TCP port on 127.0.0.1")?;
    let port = listener
        .local_addr()
        .context("cannot read the address of a bound socket")?
        .port();
    Ok(port)
}

fn random_password() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), 24)
}

fn check_output(tool: &str, output: &Output) -> anyhow::Result<()> {
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let text: Vec<&str> = [stderr.trim(), stdout.trim()]
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect();
    bail!("`{tool}` failed ({}): {}", output.status, text.join("\n"))
}

/// Waits until process `pid` has exited, counting a zombie as exited.
fn wait_until_gone(pid: Pid, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while kill(pid, None).is_ok() && !is_zombie(pid) {
        if Instant::now() > deadline {
            bail!("postmaster `{pid}` still runs {timeout:?} after SIGKILL");
        }
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn is_zombie(pid: Pid) -> bool {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name, which is in parentheses.
    stat.rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bin_dir_contains_server_tools() {
        let Ok(dir) = find_bin_dir() else {
            eprintln!("skipped: no PostgreSQL server binaries installed");
            return;
        };
        for tool in ["initdb", "pg_ctl", "postgres", "psql"] {
            assert!(
                dir.join(tool).is_file(),
                "`{tool}` missing in `{}`",
                dir.display()
            );
        }
    }

    #[test]
    fn free_port_is_not_zero() {
        let port = pick_free_port().expect("binding 127.0.0.1:0 works on any test machine");
        assert_ne!(port, 0, "the OS assigns a real port");
    }
}

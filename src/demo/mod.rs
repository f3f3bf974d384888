//! `walhook demo`: the whole pipeline on a throwaway local PostgreSQL cluster.
//!
//! The demo starts a [`cluster::TempCluster`] and loads the example schema of
//! `sql/schema.sql`. It starts a [`receiver::Receiver`] on 127.0.0.1 and
//! subscribes the example companies and program to it. It runs `walhook
//! setup` and then `walhook run` as child processes of the current
//! executable, and makes example writes that raise every event. Each webhook body is printed on
//! stdout as one JSON line; everything else goes to stderr, the daemon's
//! logs included. The demo exits 0 once every event kind has arrived with a
//! valid signature, and 1 after [`DEMO_TIMEOUT`] with the missing kinds named.

pub mod cluster;
pub mod receiver;
pub mod writes;

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};
use tokio_postgres::{Client, NoTls};

use crate::payload::EventKind;
use cluster::{TempCluster, APP_DATABASE};
use receiver::{ReceivedRequest, Receiver};

/// The example application schema with its seed rows.
pub const SCHEMA_SQL: &str = include_str!("../../sql/schema.sql");

/// The example configuration; its `[tables.*]` and `[subscriptions]`
/// sections map [`SCHEMA_SQL`].
pub const EXAMPLE_CONFIG: &str = include_str!("../../config.toml");

/// Maximum wait for all webhooks after the example writes.
pub const DEMO_TIMEOUT: Duration = Duration::from_secs(60);

/// Maximum wait for the daemon to exit after SIGTERM, before SIGKILL.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Exit status after Ctrl-C, as shells report a SIGINT death.
const EXIT_INTERRUPTED: u8 = 130;

/// Result of the wait for webhooks.
enum Outcome {
    AllArrived,
    TimedOut(BTreeSet<EventKind>),
    DaemonExited(ExitStatus),
    Interrupted,
}

/// Runs the demo with the current executable as the `walhook` binary.
///
/// SIGINT or SIGTERM at any stage stops the demo; dropping its future stops
/// the daemon and removes the cluster.
pub async fn run() -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe().context("cannot find the path of the walhook binary")?;
    tokio::select! {
        result = run_with(&exe) => result,
        signal = interrupted() => {
            say(&format!("{signal} received, stopping and removing the cluster"));
            Ok(ExitCode::from(EXIT_INTERRUPTED))
        }
    }
}

/// Waits for SIGINT or SIGTERM and returns its name; waits forever when the
/// handlers cannot be installed.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut interrupt), Ok(mut terminate)) => tokio::select! {
            _ = interrupt.recv() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        },
        _ => std::future::pending().await,
    }
}

/// Runs the demo with `exe` as the `walhook` binary.
///
/// Errors are failures to prepare the demo (cluster, schema, receiver,
/// `walhook setup`); a missing webhook is reported on stderr and returns
/// exit code 1.
pub async fn run_with(exe: &Path) -> anyhow::Result<ExitCode> {
    say("starting a throwaway PostgreSQL cluster");
    let cluster = tokio::task::spawn_blocking(TempCluster::start)
        .await
        .context("the task that starts the cluster panicked")??;
    cluster.stop_when_process_exits()?;

    let result = run_in_cluster(exe, &cluster).await;

    // Dropping the cluster runs `pg_ctl stop`, which blocks.
    let _ = tokio::task::spawn_blocking(move || drop(cluster)).await;
    result
}

async fn run_in_cluster(exe: &Path, cluster: &TempCluster) -> anyhow::Result<ExitCode> {
    let mut client = connect(&cluster.superuser_url(APP_DATABASE)).await?;
    client
        .batch_execute(SCHEMA_SQL)
        .await
        .context("cannot load the example schema")?;
    client
        .batch_execute(&writes::admin_setup_sql(APP_DATABASE))
        .await
        .context("cannot grant the role `walhook` access or create the publication")?;

    let secret = receiver::generate_secret();
    let receiver = Receiver::start(&secret).await?;
    let subscriptions = writes::insert_subscriptions(&client, &receiver.url(), &secret).await?;
    say(&format!("receiver listens on {}", receiver.url()));

    let config_path = cluster.dir().join("config.toml");
    let config = config_for(
        &cluster.walhook_url(APP_DATABASE),
        "walhook",
        free_loopback_addr()?,
    );
    std::fs::write(&config_path, config)
        .with_context(|| format!("cannot write `{}`", config_path.display()))?;

    run_setup(exe, &config_path).await?;
    let mut daemon = spawn_daemon(exe, &config_path)?;

    say("making example writes");
    let outcome = match writes::make_example_writes(&mut client, subscriptions.second_company).await
    {
        Ok(_) => {
            let mut stdout = std::io::stdout();
            collect_webhooks(&receiver, &mut daemon, DEMO_TIMEOUT, &mut stdout).await
        }
        Err(err) => {
            stop_daemon(&mut daemon).await;
            return Err(err);
        }
    };
    stop_daemon(&mut daemon).await;
    Ok(report(outcome))
}

/// Returns a configuration for the example schema that reads `source_url`
/// through replication slot `slot`, serves `/metrics` on `listen`, allows
/// loopback receivers and retries after 1, 2 and 5 seconds.
///
/// Slots are per cluster, so databases of one cluster need distinct slots.
pub fn config_for(source_url: &str, slot: &str, listen: SocketAddr) -> String {
    let mapping = EXAMPLE_CONFIG
        .find("\n[tables.jobs]")
        .map_or(EXAMPLE_CONFIG, |start| &EXAMPLE_CONFIG[start..]);
    format!(
        "[source]
url = \"{source_url}\"
publication = \"walhook\"
slot = \"{slot}\"

[queue]
schema = \"walhook\"

[delivery]
timeout = \"5s\"
retry_schedule = [\"1s\", \"2s\", \"5s\"]
allow_private_targets = true

[http]
listen = \"{listen}\"

[log]
filter = \"info\"
{mapping}"
    )
}

/// Returns 127.0.0.1 with a port that was free a moment ago.
pub fn free_loopback_addr() -> anyhow::Result<SocketAddr> {
    let listener =
        TcpListener::bind("127.0.0.1:0").context("cannot bind a TCP port on 127.0.0.1")?;
    listener
        .local_addr()
        .context("cannot read the address of a bound socket")
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .context("cannot connect to the demo cluster")?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            eprintln!("walhook demo: database connection closed: {err}");
        }
    });
    Ok(client)
}

/// Runs `walhook setup --config FILE` and fails unless it exits 0.
async fn run_setup(exe: &Path, config_path: &Path) -> anyhow::Result<()> {
    say("running `walhook setup`");
    let status = walhook_command(exe, "setup", config_path)?
        .status()
        .await
        .with_context(|| format!("cannot run `{} setup`", exe.display()))?;
    if !status.success() {
        bail!("`walhook setup` failed ({status}); its output is above");
    }
    Ok(())
}

fn spawn_daemon(exe: &Path, config_path: &Path) -> anyhow::Result<Child> {
    say("starting `walhook run`");
    walhook_command(exe, "run", config_path)?
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start `{} run`", exe.display()))
}

/// Returns `exe SUBCOMMAND --config FILE` with its stdout sent to our stderr,
/// because our stdout carries only webhook bodies.
fn walhook_command(exe: &Path, subcommand: &str, config_path: &Path) -> anyhow::Result<Command> {
    let stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .context("cannot duplicate stderr for the daemon's output")?;
    let mut command = Command::new(exe);
    command
        .arg(subcommand)
        .arg("--config")
        .arg(PathBuf::from(config_path))
        .stdin(Stdio::null())
        .stdout(Stdio::from(stderr))
        .stderr(Stdio::inherit());
    Ok(command)
}

/// Writes webhook bodies to `out` until every event kind arrived, `timeout`
/// passed, the daemon exited or Ctrl-C was pressed.
async fn collect_webhooks(
    receiver: &Receiver,
    daemon: &mut Child,
    timeout: Duration,
    out: &mut impl Write,
) -> Outcome {
    let deadline = Instant::now() + timeout;
    let mut missing: BTreeSet<EventKind> = EventKind::ALL.into_iter().collect();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    while !missing.is_empty() {
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::select! {
            request = receiver.next_delivery(remaining) => match request {
                Some(request) => record_webhook(&request, &mut missing, out),
                None => return Outcome::TimedOut(missing),
            },
            status = daemon.wait() => match status {
                Ok(status) => return Outcome::DaemonExited(status),
                Err(err) => {
                    say(&format!("cannot wait for the daemon: {err}"));
                    return Outcome::TimedOut(missing);
                }
            },
            _ = &mut ctrl_c => return Outcome::Interrupted,
        }
    }
    Outcome::AllArrived
}

/// Writes one webhook body as a JSON line and marks its event as arrived
/// when its signature is valid.
fn record_webhook(
    request: &ReceivedRequest,
    missing: &mut BTreeSet<EventKind>,
    out: &mut impl Write,
) {
    let event = request.event();
    say(&format!(
        "{} to `{}`, webhook-id `{}`",
        event.as_deref().unwrap_or("unknown event"),
        request.path,
        request.header("webhook-id").unwrap_or("none")
    ));
    write_body(&request.body, out);
    if !request.signature_valid {
        say(&format!(
            "{} webhook to `{}` has no valid signature; not counted",
            event.as_deref().unwrap_or("unknown"),
            request.path
        ));
        return;
    }
    if let Some(kind) = event.as_deref().and_then(EventKind::from_name) {
        missing.remove(&kind);
    }
}

/// Writes `body` on one line: as received when it has no line break,
/// otherwise re-encoded as compact JSON.
fn write_body(body: &[u8], out: &mut impl Write) {
    let text = String::from_utf8_lossy(body);
    let line = if text.contains('\n') {
        serde_json::from_str::<serde_json::Value>(&text)
            .map(|json| json.to_string())
            .unwrap_or_else(|_| text.replace('\n', " "))
    } else {
        text.into_owned()
    };
    // A closed stdout (such as `walhook demo | head -1`) must not stop the demo.
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Sends SIGTERM so that the daemon drains and exits, then SIGKILL after
/// [`SHUTDOWN_TIMEOUT`].
async fn stop_daemon(daemon: &mut Child) {
    if let Some(pid) = daemon.id().and_then(|id| i32::try_from(id).ok()) {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    if tokio::time::timeout(SHUTDOWN_TIMEOUT, daemon.wait())
        .await
        .is_err()
    {
        say("the daemon did not exit after SIGTERM; killing it");
        let _ = daemon.kill().await;
    }
}

fn report(outcome: Outcome) -> ExitCode {
    match outcome {
        Outcome::AllArrived => {
            say("every event kind arrived with a valid signature");
            ExitCode::SUCCESS
        }
        Outcome::TimedOut(missing) => {
            let names: Vec<&str> = missing.iter().map(|kind| kind.as_str()).collect();
            say(&format!(
                "no webhook within {}s for: {}",
                DEMO_TIMEOUT.as_secs(),
                names.join(", ")
            ));
            ExitCode::FAILURE
        }
        Outcome::DaemonExited(status) => {
            say(&format!(
                "`walhook run` exited early ({status}); its log is above"
            ));
            ExitCode::FAILURE
        }
        Outcome::Interrupted => {
            say("interrupted");
            ExitCode::from(EXIT_INTERRUPTED)
        }
    }
}

fn say(message: &str) {
    eprintln!("walhook demo: {message}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_is_valid() {
        if let Err(err) = crate::config::load_str(EXAMPLE_CONFIG) {
            panic!("config.toml does not load: {err}");
        }
    }

    #[test]
    fn demo_config_is_valid() {
        let listen = SocketAddr::from(([127, 0, 0, 1], 9999));
        let text = config_for(
            "postgres://walhook:pw@127.0.0.1:5432/app",
            "walhook",
            listen,
        );
        let config = match crate::config::load_str(&text) {
            Ok(config) => config,
            Err(err) => panic!("demo config does not load: {err}\n{text}"),
        };
        assert!(
            config.delivery.allow_private_targets,
            "loopback receiver allowed"
        );
        assert_eq!(config.http.listen, listen);
        assert_eq!(config.tables.jobs.stage, "stage_id");
        let chats = config.tables.chats.expect("chats mapped");
        assert_eq!(chats.system.as_deref(), Some("is_system"));
    }

    /// Starts a stand-in daemon that runs until killed.
    fn spawn_sleeper() -> Child {
        Command::new("sleep")
            .arg("60")
            .kill_on_drop(true)
            .spawn()
            .expect("`sleep` exists on every test machine")
    }

    /// Posts one webhook of `kind`, signed with `secret` when it is given.
    async fn post_webhook(receiver: &Receiver, kind: EventKind, secret: Option<&str>) {
        let body = format!(r#"{{"event":"{kind}","payload":{{"jobs":[]}}}}"#);
        let mut request = reqwest::Client::new()
            .post(format!("{}/company-101", receiver.url()))
            .header("webhook-id", "msg_1")
            .header("webhook-timestamp", "1700000000");
        if let Some(secret) = secret {
            let signature = receiver::sign(secret, "msg_1", "1700000000", body.as_bytes())
                .expect("generated secrets are valid");
            request = request.header("webhook-signature", signature);
        }
        request.body(body).send().await.expect("receiver answers");
    }

    #[tokio::test]
    async fn collect_ends_when_all_arrive() {
        let secret = receiver::generate_secret();
        let receiver = Receiver::start(&secret).await.expect("receiver starts");
        let mut daemon = spawn_sleeper();
        for kind in EventKind::ALL {
            post_webhook(&receiver, kind, Some(&secret)).await;
        }

        let mut out = Vec::new();
        let outcome =
            collect_webhooks(&receiver, &mut daemon, Duration::from_secs(10), &mut out).await;

        assert!(
            matches!(outcome, Outcome::AllArrived),
            "every kind was posted"
        );
        let text = String::from_utf8(out).expect("bodies are UTF-8");
        assert_eq!(
            text.lines().count(),
            EventKind::ALL.len(),
            "one line per webhook"
        );
        assert!(
            text.starts_with(r#"{"event":"NEW_JOB_CREATED","payload":"#),
            "bodies are written as received: {text}"
        );
    }

    #[tokio::test]
    async fn collect_ignores_unsigned_webhook() {
        let secret = receiver::generate_secret();
        let receiver = Receiver::start(&secret).await.expect("receiver starts");
        let mut daemon = spawn_sleeper();
        post_webhook(&receiver, EventKind::Ping, None).await;
        for kind in &EventKind::ALL[..EventKind::ALL.len() - 1] {
            post_webhook(&receiver, *kind, Some(&secret)).await;
        }

        let mut out = Vec::new();
        let outcome =
            collect_webhooks(&receiver, &mut daemon, Duration::from_millis(500), &mut out).await;

        let Outcome::TimedOut(missing) = outcome else {
            panic!("an unsigned PING must not complete the demo");
        };
        assert_eq!(missing.into_iter().collect::<Vec<_>>(), [EventKind::Ping]);
        assert_eq!(
            out.iter().filter(|&&byte| byte == b'\n').count(),
            EventKind::ALL.len(),
            "the unsigned webhook is written too"
        );
    }

    #[tokio::test]
    async fn collect_stops_when_daemon_exits() {
        let receiver = Receiver::start(&receiver::generate_secret())
            .await
            .expect("receiver starts");
        let mut daemon = Command::new("true").spawn().expect("`true` exists");

        let mut out = Vec::new();
        let outcome =
            collect_webhooks(&receiver, &mut daemon, Duration::from_secs(10), &mut out).await;

        assert!(
            matches!(outcome, Outcome::DaemonExited(_)),
            "`true` exits at once"
        );
    }
}

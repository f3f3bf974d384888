//! Logging with tracing: to the systemd journal when stderr is connected to
//! it, human-readable to stderr otherwise.
//!
//! systemd sets `JOURNAL_STREAM` to `DEVICE:INODE` of the stream that it
//! connects to stdout and stderr (`systemd.exec(5)`). Only when those numbers
//! match stderr does the daemon write native journal entries, which keep the
//! tracing fields as journal fields with the prefix `F_` (`F_LSN`, `F_EVENT`,
//! `F_SUBSCRIPTION`, …) and the level as `PRIORITY`. A child process that inherited the variable but
//! writes its stderr elsewhere logs to stderr.

use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `RUST_LOG` overrides `filter`, which
/// `Config::validate` has checked.
pub fn init(filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));

    // NOTE: no automated test covers the journald branch, because the test
    // machines run no journald; the stderr branch is what the tests see.
    if is_stderr_journal() {
        match tracing_journald::layer() {
            Ok(journald) => {
                let journald = journald.with_syslog_identifier("walhook".to_owned());
                let _ = tracing_subscriber::registry()
                    .with(filter)
                    .with(journald)
                    .try_init();
                return;
            }
            Err(err) => {
                eprintln!("walhook: cannot open the journal socket, logging to stderr: {err}")
            }
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Tells whether `JOURNAL_STREAM` names the device and inode of stderr.
fn is_stderr_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some(expected) = value.to_str().and_then(parse_journal_stream) else {
        return false;
    };
    stderr_identity() == Some(expected)
}

/// Parses `DEVICE:INODE`, both decimal.
fn parse_journal_stream(value: &str) -> Option<(u64, u64)> {
    let (device, inode) = value.split_once(':')?;
    Some((device.parse().ok()?, inode.parse().ok()?))
}

fn stderr_identity() -> Option<(u64, u64)> {
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let metadata = std::fs::File::from(fd).metadata().ok()?;
    Some((metadata.dev(), metadata.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_stream_parses_device_and_inode() {
        assert_eq!(parse_journal_stream("8:1234"), Some((8, 1234)));
    }

    #[test]
    fn journal_stream_rejects_garbage() {
        assert_eq!(parse_journal_stream("8-1234"), None);
        assert_eq!(parse_journal_stream("x:1"), None);
    }
}

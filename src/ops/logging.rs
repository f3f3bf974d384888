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
use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{reload, EnvFilter, Registry};

/// Handle that replaces the filter of the installed subscriber.
static FILTER: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Outcome of [`set_filter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterChange {
    /// The new filter is in force.
    Applied,
    /// `RUST_LOG` is set and valid, so it stays in force.
    OverriddenByEnv,
}

/// Installs the global subscriber; `RUST_LOG` overrides `filter`, which
/// `Config::validate` has checked.
pub fn init(filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let _ = FILTER.set(handle);

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
    let stderr = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(stderr)
        .try_init();
}

/// Replaces the filter of the subscriber that [`init`] installed with
/// `filter`, a `RUST_LOG`-style directive list, unless `RUST_LOG` overrides
/// it. Returns an error naming the filter when it does not parse or no
/// subscriber was installed.
pub fn set_filter(filter: &str) -> Result<FilterChange, String> {
    if EnvFilter::try_from_default_env().is_ok() {
        return Ok(FilterChange::OverriddenByEnv);
    }
    let parsed = EnvFilter::try_new(filter)
        .map_err(|err| format!("log filter `{filter}` is invalid: {err}"))?;
    let handle = FILTER
        .get()
        .ok_or_else(|| format!("cannot apply log filter `{filter}`: logging is not set up"))?;
    handle
        .reload(parsed)
        .map_err(|err| format!("cannot apply log filter `{filter}`: {err}"))?;
    Ok(FilterChange::Applied)
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

//! The byte stream under the replication connection: TCP or a Unix socket.
//!
//! Hosts and ports pair up as in libpq: no port means 5432, one port applies
//! to every host, otherwise the i-th port belongs to the i-th host. A Unix
//! socket host is a directory, and the socket inside it is named
//! `.s.PGSQL.<port>`. When `hostaddr` is set, the i-th address replaces the
//! name lookup of the i-th TCP host.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::Host;
use tracing::warn;

use super::ReplicationError;

/// The port that libpq uses when none is configured.
const DEFAULT_PORT: u16 = 5432;

/// A connected TCP or Unix socket.
#[derive(Debug)]
pub(crate) enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// Connects to the first host that accepts, trying them in order.
///
/// # Errors
///
/// [`ReplicationError::MissingHost`] without hosts, otherwise a
/// [`ReplicationError::Connect`] that names the last address tried.
pub(crate) async fn connect_any(
    config: &tokio_postgres::Config,
) -> Result<(Socket, String), ReplicationError> {
    let hosts = config.get_hosts();
    let ports = config.get_ports();
    let host_addrs = config.get_hostaddrs();
    let timeout = config.get_connect_timeout().copied();

    let mut last_error = ReplicationError::MissingHost;
    for (index, host) in hosts.iter().enumerate() {
        let port = port_for(ports, index);
        let host = match (host, host_addrs.get(index)) {
            (Host::Tcp(_), Some(addr)) => Host::Tcp(addr.to_string()),
            (host, _) => host.clone(),
        };
        let address = describe(&host, port);
        match connect_one(&host, port, timeout).await {
            Ok(socket) => return Ok((socket, address)),
            Err(source) => {
                warn!(address = %address, error = %source, "failed to connect to postgres host");
                last_error = ReplicationError::Connect { address, source };
            }
        }
    }
    Err(last_error)
}

fn port_for(ports: &[u16], index: usize) -> u16 {
    match ports {
        [] => DEFAULT_PORT,
        [port] => *port,
        ports => ports.get(index).copied().unwrap_or(DEFAULT_PORT),
    }
}

/// Formats a host and port for logs and errors: `host:port` or the socket path.
fn describe(host: &Host, port: u16) -> String {
    match host {
        Host::Tcp(name) if name.contains(':') => format!("[{name}]:{port}"),
        Host::Tcp(name) => format!("{name}:{port}"),
        Host::Unix(dir) => dir.join(format!(".s.PGSQL.{port}")).display().to_string(),
    }
}

async fn connect_one(host: &Host, port: u16, timeout: Option<Duration>) -> io::Result<Socket> {
    let connect = async {
        match host {
            Host::Tcp(name) => {
                let stream = TcpStream::connect((name.as_str(), port)).await?;
                stream.set_nodelay(true)?;
                Ok(Socket::Tcp(stream))
            }
            Host::Unix(dir) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                Ok(Socket::Unix(UnixStream::connect(path).await?))
            }
        }
    };
    match timeout {
        Some(limit) => tokio::time::timeout(limit, connect)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?,
        None => connect.await,
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(stream) => Pin::new(stream).poll_read(cx, buf),
            Socket::Unix(stream) => Pin::new(stream).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(stream) => Pin::new(stream).poll_write(cx, buf),
            Socket::Unix(stream) => Pin::new(stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            Socket::Unix(stream) => Pin::new(stream).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            Socket::Unix(stream) => Pin::new(stream).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn port_pairing_follows_libpq() {
        assert_eq!(port_for(&[], 3), 5432, "no port means the default");
        assert_eq!(port_for(&[6000], 2), 6000, "one port applies to every host");
        assert_eq!(port_for(&[6000, 6001], 1), 6001, "ports pair with hosts");
    }

    #[test]
    fn describe_names_socket_file() {
        let host = Host::Unix(PathBuf::from("/run/postgresql"));

        assert_eq!(describe(&host, 5433), "/run/postgresql/.s.PGSQL.5433");
    }

    #[test]
    fn describe_brackets_ipv6() {
        let host = Host::Tcp("::1".to_owned());

        assert_eq!(describe(&host, 5432), "[::1]:5432");
    }
}

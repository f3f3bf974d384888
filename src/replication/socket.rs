//! The byte stream under the replication connection: TCP or a Unix socket.
//!
//! Hosts and ports pair up as in libpq: no port means 5432, one port applies
//! to every host, otherwise the i-th port belongs to the i-th host. A Unix
//! socket host is a directory, and the socket inside it is named
//! `.s.PGSQL.<port>`. When `hostaddr` is set, the i-th address replaces the
//! name lookup of the i-th TCP host, and the host name is still the one that
//! the server certificate must list.
//!
//! TLS starts as in libpq: an SSLRequest, a one-byte response (`S` or `N`),
//! then the handshake, before the startup message (PostgreSQL's "Message
//! Flow", section "SSL Session Encryption"). Unix sockets never use TLS, as
//! in libpq.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::Host;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tracing::{debug, warn};

use super::ReplicationError;
use crate::tls::{describe_handshake_error, SslMode, TlsSettings};

/// The port that libpq uses when none is configured.
const DEFAULT_PORT: u16 = 5432;

/// A connected TCP or Unix socket, or TLS over TCP.
#[derive(Debug)]
pub(crate) enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Socket {
    /// Returns true when the connection is encrypted.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, Socket::Tls(_))
    }

    /// Returns the `tls-server-end-point` channel binding data of a TLS connection.
    pub(crate) fn tls_server_end_point(&self) -> Option<Vec<u8>> {
        let Socket::Tls(stream) = self else {
            return None;
        };
        let certs = stream.get_ref().1.peer_certificates()?;
        crate::tls::tls_server_end_point(certs.first()?)
    }
}

/// Connects to the first host that accepts, trying them in order, and starts
/// TLS as `tls` requests.
///
/// # Errors
///
/// [`ReplicationError::MissingHost`] without hosts, otherwise the error of
/// the last address tried: [`ReplicationError::Connect`],
/// [`ReplicationError::TlsNotOffered`] or [`ReplicationError::Tls`].
pub(crate) async fn connect_any(
    config: &tokio_postgres::Config,
    tls: &TlsSettings,
) -> Result<(Socket, String), ReplicationError> {
    let hosts = config.get_hosts();
    let ports = config.get_ports();
    let host_addrs = config.get_hostaddrs();
    let timeout = config.get_connect_timeout().copied();

    let mut last_error = ReplicationError::MissingHost;
    for (index, host) in hosts.iter().enumerate() {
        let port = port_for(ports, index);
        let target = match (host, host_addrs.get(index)) {
            (Host::Tcp(_), Some(addr)) => Host::Tcp(addr.to_string()),
            (host, _) => host.clone(),
        };
        let address = describe(&target, port);
        let socket = match connect_one(&target, port, timeout).await {
            Ok(socket) => socket,
            Err(source) => {
                warn!(address = %address, error = %source, "failed to connect to postgres host");
                last_error = ReplicationError::Connect { address, source };
                continue;
            }
        };
        let (stream, name) = match (socket, host) {
            (Socket::Tcp(stream), Host::Tcp(name)) => (stream, name),
            (socket, _) => return Ok((socket, address)),
        };
        match start_tls(stream, name, tls, &address).await {
            Ok(socket) => return Ok((socket, address)),
            Err(err) if tls.mode() == SslMode::Prefer && !err.is_transient() => {
                // libpq's `prefer` retries without TLS after a failed handshake.
                debug!(address = %address, error = %err, "TLS handshake failed, retrying without TLS");
                match connect_one(&target, port, timeout).await {
                    Ok(socket) => return Ok((socket, address)),
                    Err(source) => last_error = ReplicationError::Connect { address, source },
                }
            }
            Err(err) => {
                warn!(address = %address, error = %err, "failed to start TLS with postgres host");
                last_error = err;
            }
        }
    }
    Err(last_error)
}

/// Sends SSLRequest and runs the TLS handshake when the mode requests TLS
/// and the server offers it.
async fn start_tls(
    mut stream: TcpStream,
    host_name: &str,
    tls: &TlsSettings,
    address: &str,
) -> Result<Socket, ReplicationError> {
    let Some(client_config) = tls.client_config() else {
        return Ok(Socket::Tcp(stream));
    };
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    stream.write_all(&request).await?;

    // The response is one unframed byte, so nothing else may be read with it.
    match stream.read_u8().await? {
        b'S' => {}
        b'N' if tls.mode().is_required() => {
            return Err(ReplicationError::TlsNotOffered {
                address: address.to_owned(),
                mode: tls.mode(),
            })
        }
        b'N' => return Ok(Socket::Tcp(stream)),
        other => {
            return Err(ReplicationError::UnexpectedMessage {
                tag: char::from(other),
                context: "requesting TLS",
            })
        }
    }

    let server_name =
        ServerName::try_from(host_name.to_owned()).map_err(|_| ReplicationError::Tls {
            address: address.to_owned(),
            mode: tls.mode(),
            reason: format!("`{host_name}` is not a valid host name for TLS"),
        })?;
    let connector = TlsConnector::from(Arc::clone(client_config));
    match connector.connect(server_name, stream).await {
        Ok(stream) => Ok(Socket::Tls(Box::new(stream))),
        Err(err) => Err(ReplicationError::Tls {
            address: address.to_owned(),
            mode: tls.mode(),
            reason: describe_handshake_error(&err),
        }),
    }
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
            Socket::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
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
            Socket::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(stream) => Pin::new(stream).poll_flush(cx),
            Socket::Unix(stream) => Pin::new(stream).poll_flush(cx),
            Socket::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(stream) => Pin::new(stream).poll_shutdown(cx),
            Socket::Unix(stream) => Pin::new(stream).poll_shutdown(cx),
            Socket::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
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

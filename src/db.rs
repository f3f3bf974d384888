//! Ordinary (non-replication) connections to PostgreSQL through tokio-postgres,
//! with TLS through rustls as [`crate::tls`] describes.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::{Client, Connection};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::PostgresTarget;
use crate::tls::{describe_handshake_error, SslMode};

/// Opens a connection and drives it on a task of its own; `role` names the
/// database in the log line written when the connection closes with an error.
///
/// With `sslmode=prefer`, a connection that fails over TLS is retried once
/// without TLS, as libpq does. Such failures are a failed handshake and an
/// error from the server, such as a `hostnossl` rule in `pg_hba.conf`.
pub async fn connect(
    target: &PostgresTarget,
    role: &'static str,
) -> Result<Client, tokio_postgres::Error> {
    let Some(client_config) = target.tls.client_config() else {
        return connect_plain(&target.config, role).await;
    };
    let tls = MakeRustlsConnect::new(client_config.as_ref().clone());
    match target.config.connect(tls).await {
        Ok((client, connection)) => {
            spawn_connection(connection, role);
            Ok(client)
        }
        Err(err) if target.tls.mode() == SslMode::Prefer && is_tls_failure(&err) => {
            tracing::debug!(
                error = %err,
                database = role,
                "connection over TLS failed, retrying without TLS"
            );
            let mut plain = target.config.clone();
            plain.ssl_mode(PgSslMode::Disable);
            connect_plain(&plain, role).await
        }
        Err(err) => Err(err),
    }
}

async fn connect_plain(
    config: &tokio_postgres::Config,
    role: &'static str,
) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    spawn_connection(connection, role);
    Ok(client)
}

/// Drives a connection on a task of its own until it closes.
fn spawn_connection<S, T>(connection: Connection<S, T>, role: &'static str)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::warn!(error = %err, database = role, "database connection closed");
        }
    });
}

/// Describes a connection error with its causes, which the `Display` of
/// tokio-postgres leaves out: the server's message, or why the TLS handshake
/// failed.
pub fn describe_error(err: &tokio_postgres::Error) -> String {
    let mut text = err.to_string();
    if let Some(db_error) = err.as_db_error() {
        text.push_str(": ");
        text.push_str(&db_error.to_string());
        return text;
    }
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        match cause.downcast_ref::<std::io::Error>() {
            Some(io) => text.push_str(&describe_handshake_error(io)),
            None => text.push_str(&cause.to_string()),
        }
        source = cause.source();
    }
    text
}

/// Returns true for a failed handshake or a server error, the failures after
/// which libpq's `prefer` retries without TLS.
fn is_tls_failure(err: &tokio_postgres::Error) -> bool {
    if err.as_db_error().is_some() {
        return true;
    }
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        if cause.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io
                .get_ref()
                .is_some_and(|inner| inner.is::<rustls::Error>())
            {
                return true;
            }
        }
        source = cause.source();
    }
    false
}

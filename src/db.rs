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
            tracing::warn!(error = %describe(&err), database = role, "database connection closed");
        }
    });
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

/// Describes a tokio-postgres error with what the server reported: message,
/// SQLSTATE, detail and hint, or the chain of causes down to why a TLS
/// handshake failed. The error's own `Display` prints only "db error".
pub fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            text.push_str(&format!("; {detail}"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        return text;
    }
    let mut text = err.to_string();
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

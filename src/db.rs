//! Ordinary (non-replication) connections to PostgreSQL through tokio-postgres.

use tokio_postgres::{Client, Config};

/// Opens a connection and drives it on a task of its own; `role` names the
/// database in the log line written when the connection closes with an error.
pub async fn connect(config: &Config, role: &'static str) -> Result<Client, tokio_postgres::Error> {
    // TODO: TLS (`sslmode=require` and stricter) is not supported yet; the
    // connection is made without it.
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::warn!(error = %err, database = role, "database connection closed");
        }
    });
    Ok(client)
}

/// Describes a tokio-postgres error with what the server reported: message,
/// SQLSTATE, detail and hint, or the I/O cause. The error's own `Display`
/// prints only "db error".
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
    match std::error::Error::source(err) {
        Some(cause) => format!("{err}: {cause}"),
        None => err.to_string(),
    }
}

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

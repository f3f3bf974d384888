//! The replication connection before streaming: connect, start up,
//! authenticate and run replication commands.
//!
//! The startup message sets `replication=database`, so the server starts a
//! walsender that accepts both replication commands (IDENTIFY_SYSTEM,
//! CREATE_REPLICATION_SLOT, START_REPLICATION) and plain SQL in the simple
//! query protocol. See PostgreSQL's "Streaming Replication Protocol"
//! documentation (protocol-replication.html). The session runs with
//! `TimeZone=UTC` and `DateStyle=ISO`, because pgoutput prints timestamps and
//! dates in the walsender's session settings.

use std::collections::HashMap;

use postgres_protocol::message::backend::{DataRowBody, Message};
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;
use tokio_util::codec::Framed;
use tracing::{debug, info};

use super::auth::{authenticate, BindingPolicy};
use super::codec::Transport;
use super::codec::{log_notice, read_message, send_message, tag_of, BackendMessage, PostgresCodec};
use super::socket::{connect_any, Socket};
use super::stream::ReplicationStream;
use super::{Lsn, ReplicationError};
use crate::config::{quote_ident, PostgresTarget};
use crate::tls::{SslMode, TlsSettings};

/// `application_name` when the connection settings set none.
const DEFAULT_APPLICATION_NAME: &str = "walhook";

/// Session settings that the decoded text values depend on. They follow any
/// `options` of the connection settings, so they win over them.
const SESSION_OPTIONS: &str = "-c TimeZone=UTC -c DateStyle=ISO";

/// A replication connection in the simple query state.
#[derive(Debug)]
pub struct ReplicationClient {
    transport: Transport,
    parameters: HashMap<String, String>,
    backend_pid: i32,
}

/// The result of IDENTIFY_SYSTEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemIdentity {
    /// The cluster's unique system identifier, a decimal 64-bit number.
    pub system_id: String,
    /// The current timeline.
    pub timeline: u32,
    /// The current WAL flush position.
    pub xlog_pos: Lsn,
    /// The database of the connection, or `None` on a physical replication connection.
    pub dbname: Option<String>,
}

impl ReplicationClient {
    /// Connects, starts TLS as `sslmode` requests, authenticates and waits until
    /// the server is ready for commands.
    ///
    /// Hosts are tried in order until one accepts the connection. With
    /// `sslmode=prefer`, a login that the server rejects over TLS is retried
    /// once without TLS, as libpq does.
    ///
    /// # Errors
    ///
    /// A configuration error for a missing user or host, and
    /// [`ReplicationError::ChannelBindingRequired`]. [`ReplicationError::Connect`] when no host accepts,
    /// [`ReplicationError::TlsNotOffered`] and [`ReplicationError::Tls`] when
    /// TLS is required and fails. [`ReplicationError::Server`] when the server
    /// rejects the login, for example with SQLSTATE 28P01 for a wrong password.
    pub async fn connect(target: &PostgresTarget) -> Result<Self, ReplicationError> {
        let config = &target.config;
        config.get_user().ok_or(ReplicationError::MissingUser)?;
        let (socket, address) = connect_any(config, &target.tls).await?;
        let over_tls = socket.is_tls();
        match Self::start_up(socket, &address, config).await {
            Err(ReplicationError::Server { code, message })
                if over_tls && target.tls.mode() == SslMode::Prefer =>
            {
                debug!(%address, code, message, "login over TLS rejected, retrying without TLS");
                let (socket, address) = connect_any(config, &TlsSettings::disabled()).await?;
                Self::start_up(socket, &address, config).await
            }
            result => result,
        }
    }

    /// Sends the startup message on a connected socket and authenticates.
    async fn start_up(
        socket: Socket,
        address: &str,
        config: &tokio_postgres::Config,
    ) -> Result<Self, ReplicationError> {
        let user = config.get_user().ok_or(ReplicationError::MissingUser)?;
        let database = config.get_dbname().unwrap_or(user);
        let over_tls = socket.is_tls();
        let binding = BindingPolicy {
            mode: config.get_channel_binding(),
            data: socket.tls_server_end_point(),
        };
        let mut transport = Framed::new(socket, PostgresCodec);

        let options = session_options(config.get_options());
        let application_name = config
            .get_application_name()
            .unwrap_or(DEFAULT_APPLICATION_NAME);
        let parameters = [
            ("user", user),
            ("database", database),
            ("replication", "database"),
            ("application_name", application_name),
            ("client_encoding", "UTF8"),
            ("options", options.as_str()),
        ];
        send_message(&mut transport, |buf| {
            frontend::startup_message(parameters, buf)
        })
        .await?;
        authenticate(&mut transport, user, config.get_password(), &binding).await?;

        let mut client = ReplicationClient {
            transport,
            parameters: HashMap::new(),
            backend_pid: 0,
        };
        client.read_startup_parameters().await?;
        info!(
            %address,
            user,
            database,
            tls = over_tls,
            backend_pid = client.backend_pid,
            server_version = client.parameter("server_version").unwrap_or("unknown"),
            "connected to postgres for replication"
        );
        Ok(client)
    }

    /// Reads ParameterStatus and BackendKeyData up to ReadyForQuery.
    async fn read_startup_parameters(&mut self) -> Result<(), ReplicationError> {
        loop {
            match self.read("starting up").await? {
                Message::ParameterStatus(body) => {
                    self.parameters
                        .insert(body.name()?.to_owned(), body.value()?.to_owned());
                }
                Message::BackendKeyData(body) => self.backend_pid = body.process_id(),
                Message::ReadyForQuery(_) => return Ok(()),
                other => return Err(unexpected(other, "starting up")),
            }
        }
    }

    /// Returns a parameter that the server reported, such as `server_version`.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// Returns the process id of the walsender that serves this connection.
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Runs IDENTIFY_SYSTEM.
    ///
    /// # Errors
    ///
    /// [`ReplicationError::InvalidResult`] when the result is not one row of
    /// four columns with a numeric timeline and a valid LSN.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity, ReplicationError> {
        const COMMAND: &str = "IDENTIFY_SYSTEM";
        let invalid = |reason: String| ReplicationError::InvalidResult {
            command: COMMAND,
            reason,
        };

        let rows = self.simple_query(COMMAND).await?;
        let [row] = rows.as_slice() else {
            return Err(invalid(format!("expected 1 row, got {}", rows.len())));
        };
        let [Some(system_id), Some(timeline), Some(xlog_pos), dbname] = row.as_slice() else {
            return Err(invalid(format!("expected 4 columns, got `{row:?}`")));
        };
        let timeline = timeline
            .parse()
            .map_err(|_| invalid(format!("timeline `{timeline}` is not a number")))?;
        let xlog_pos = xlog_pos.parse().map_err(|err| invalid(format!("{err}")))?;
        Ok(SystemIdentity {
            system_id: system_id.clone(),
            timeline,
            xlog_pos,
            dbname: dbname.clone(),
        })
    }

    /// Runs a command in the simple query protocol and returns its rows as
    /// text, `None` for SQL NULL. Several statements return their rows in
    /// one list.
    ///
    /// # Errors
    ///
    /// [`ReplicationError::Server`] when a statement fails, and the connection
    /// stays usable. A command that starts a COPY, such as START_REPLICATION,
    /// gives [`ReplicationError::UnexpectedMessage`] and leaves the
    /// connection unusable.
    pub async fn simple_query(
        &mut self,
        sql: &str,
    ) -> Result<Vec<Vec<Option<String>>>, ReplicationError> {
        debug!(sql, "sending replication command");
        send_message(&mut self.transport, |buf| frontend::query(sql, buf)).await?;

        // Read up to ReadyForQuery even after an error, so the next command starts clean.
        let mut rows = Vec::new();
        let mut first_error = None;
        loop {
            match self.read("running a query").await? {
                Message::DataRow(body) => match parse_text_row(&body) {
                    Ok(row) => rows.push(row),
                    Err(err) => {
                        first_error.get_or_insert(err);
                    }
                },
                Message::ErrorResponse(body) => {
                    first_error.get_or_insert(ReplicationError::from_fields(body.fields()));
                }
                Message::RowDescription(_)
                | Message::CommandComplete(_)
                | Message::EmptyQueryResponse => {}
                Message::ReadyForQuery(_) => break,
                other => return Err(unexpected(other, "running a query")),
            }
        }
        first_error.map_or(Ok(rows), Err)
    }

    /// Starts streaming the changes of a logical slot through pgoutput
    /// protocol version 1, with logical decoding messages included.
    ///
    /// `start` is the position to resume from. [`Lsn::ZERO`] resumes from the
    /// slot's `confirmed_flush_lsn`.
    ///
    /// # Errors
    ///
    /// [`ReplicationError::Server`], for example SQLSTATE 55006
    /// ([`ReplicationError::is_slot_in_use`]) when another process streams
    /// from the slot, or 42704 when the slot does not exist.
    pub async fn start_logical_replication(
        mut self,
        slot: &str,
        start: Lsn,
        publication: &str,
    ) -> Result<ReplicationStream, ReplicationError> {
        let command = start_replication_command(slot, start, publication);
        debug!(command, "starting replication");
        send_message(&mut self.transport, |buf| frontend::query(&command, buf)).await?;

        loop {
            match read_message(&mut self.transport).await? {
                BackendMessage::CopyBothResponse => break,
                BackendMessage::Message(message) => {
                    self.handle_async_message(message, "starting replication")?;
                }
            }
        }
        info!(slot, %start, publication, "started logical replication");
        Ok(ReplicationStream::new(self.transport))
    }

    /// Reads the next message, handling notices and parameter changes, which
    /// the server may send at any time.
    async fn read(&mut self, context: &'static str) -> Result<Message, ReplicationError> {
        loop {
            match read_message(&mut self.transport).await? {
                BackendMessage::Message(Message::NoticeResponse(body)) => log_notice(&body),
                BackendMessage::Message(message) => return Ok(message),
                other => {
                    return Err(ReplicationError::UnexpectedMessage {
                        tag: tag_of(&other),
                        context,
                    })
                }
            }
        }
    }

    /// Sends Terminate and closes the socket.
    ///
    /// # Errors
    ///
    /// [`ReplicationError::Io`] when the write fails.
    pub async fn close(mut self) -> Result<(), ReplicationError> {
        send_message(&mut self.transport, |buf| {
            frontend::terminate(buf);
            Ok(())
        })
        .await?;
        self.transport.get_mut().shutdown().await?;
        Ok(())
    }

    /// Handles a message that is valid at any time and rejects all others.
    fn handle_async_message(
        &mut self,
        message: Message,
        context: &'static str,
    ) -> Result<(), ReplicationError> {
        match message {
            Message::NoticeResponse(body) => log_notice(&body),
            Message::ParameterStatus(body) => {
                self.parameters
                    .insert(body.name()?.to_owned(), body.value()?.to_owned());
            }
            Message::ErrorResponse(body) => {
                return Err(ReplicationError::from_fields(body.fields()))
            }
            other => return Err(unexpected(other, context)),
        }
        Ok(())
    }
}

/// Appends walhook's session settings to the `options` of the connection settings.
fn session_options(configured: Option<&str>) -> String {
    match configured {
        Some(options) if !options.trim().is_empty() => format!("{options} {SESSION_OPTIONS}"),
        _ => SESSION_OPTIONS.to_owned(),
    }
}

/// Builds START_REPLICATION for pgoutput.
///
/// `publication_names` is a string literal that contains a list of
/// identifiers, so the publication is quoted as an identifier first and the
/// result as a literal.
fn start_replication_command(slot: &str, start: Lsn, publication: &str) -> String {
    let publication_names = quote_literal(&quote_ident(publication));
    format!(
        "START_REPLICATION SLOT {} LOGICAL {start} (proto_version '1', \
         publication_names {publication_names}, messages 'true')",
        quote_ident(slot)
    )
}

/// Quotes a string literal, doubling embedded single quotes. The replication
/// command scanner reads no backslash escapes.
fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

fn parse_text_row(body: &DataRowBody) -> Result<Vec<Option<String>>, ReplicationError> {
    use fallible_iterator::FallibleIterator;

    let buffer = body.buffer();
    let ranges: Vec<_> = body.ranges().collect()?;
    ranges
        .into_iter()
        .map(|range| {
            let Some(range) = range else { return Ok(None) };
            let text = std::str::from_utf8(&buffer[range]).map_err(|err| {
                ReplicationError::InvalidResult {
                    command: "simple query",
                    reason: format!("column value is not UTF-8: {err}"),
                }
            })?;
            Ok(Some(text.to_owned()))
        })
        .collect()
}

fn unexpected(message: Message, context: &'static str) -> ReplicationError {
    if let Message::ErrorResponse(body) = message {
        return ReplicationError::from_fields(body.fields());
    }
    ReplicationError::UnexpectedMessage {
        tag: tag_of(&BackendMessage::Message(message)),
        context,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_replication_quotes_names() {
        let command = start_replication_command("walhook", Lsn::from_u64(0x16_B374_D848), "pub");

        assert_eq!(
            command,
            "START_REPLICATION SLOT \"walhook\" LOGICAL 16/B374D848 (proto_version '1', \
             publication_names '\"pub\"', messages 'true')"
        );
    }

    #[test]
    fn start_replication_escapes_quotes() {
        let command = start_replication_command("s", Lsn::ZERO, "a\"b'c");

        assert!(
            command.contains("publication_names '\"a\"\"b''c\"'"),
            "double quotes doubled inside the identifier, single quotes inside the literal: {command}"
        );
    }

    #[test]
    fn session_options_follow_configured_options() {
        assert_eq!(session_options(None), SESSION_OPTIONS);
        assert_eq!(
            session_options(Some("-c work_mem=64MB")),
            "-c work_mem=64MB -c TimeZone=UTC -c DateStyle=ISO"
        );
    }

    #[tokio::test]
    async fn connect_rejects_missing_user() {
        let config: tokio_postgres::Config = "host=127.0.0.1".parse().expect("valid settings");

        let result = ReplicationClient::connect(&config.into()).await;

        assert!(matches!(result, Err(ReplicationError::MissingUser)));
    }
}

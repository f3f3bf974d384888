//! The CopyBoth stream after START_REPLICATION.
//!
//! The server sends XLogData and keepalives as CopyData messages, and the
//! client sends standby status updates the same way. Either side may end
//! the copy with CopyDone. After both have sent it, the server completes the
//! command with CommandComplete and ReadyForQuery. See PostgreSQL's
//! "Streaming Replication Protocol" and "COPY Operations" documentation
//! (protocol-replication.html, protocol-flow.html).
//!
//! The server ends the connection if it hears nothing for
//! `wal_sender_timeout` (60 s by default), so callers reply to keepalives with
//! `reply_requested` at once and send a status update more often than that.

use std::time::SystemTime;

use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;
use tracing::{debug, trace};

use super::codec::{log_notice, read_message, send_message, tag_of, BackendMessage, Transport};
use super::protocol::{
    encode_standby_status, parse_copy_data, postgres_epoch_micros, ReplicationMessage,
    StandbyStatus,
};
use super::ReplicationError;

/// A logical replication stream in CopyBoth mode.
#[derive(Debug)]
pub struct ReplicationStream {
    transport: Transport,
    /// Set once the server has sent CopyDone, after which no data follows.
    server_copy_done: bool,
}

impl ReplicationStream {
    pub(crate) fn new(transport: Transport) -> Self {
        ReplicationStream {
            transport,
            server_copy_done: false,
        }
    }

    /// Waits for the next XLogData or keepalive.
    ///
    /// Returns `Ok(None)` once the server has ended the copy with CopyDone or
    /// closed the connection. Call [`ReplicationStream::close`] after that.
    ///
    /// Cancel-safe: dropping the future, as `tokio::select!` does when another
    /// branch wins, loses no message.
    ///
    /// # Errors
    ///
    /// [`ReplicationError::Server`] for an ErrorResponse, such as a server
    /// shutdown (SQLSTATE 57P01), [`ReplicationError::Protocol`] for a payload
    /// that is not XLogData or keepalive, and [`ReplicationError::Io`] for a
    /// failed read.
    pub async fn next_message(&mut self) -> Result<Option<ReplicationMessage>, ReplicationError> {
        if self.server_copy_done {
            return Ok(None);
        }
        loop {
            let message = match read_message(&mut self.transport).await {
                Ok(BackendMessage::Message(message)) => message,
                Ok(other) => return Err(unexpected(&other)),
                Err(ReplicationError::Closed) => return Ok(None),
                Err(err) => return Err(err),
            };
            match message {
                Message::CopyData(body) => {
                    let message = parse_copy_data(body.into_bytes())?;
                    trace!(?message, "received replication message");
                    return Ok(Some(message));
                }
                // A walsender that shuts down in `fast` mode may complete the
                // command without a CopyDone first; either ends the stream.
                Message::CopyDone | Message::CommandComplete(_) => {
                    debug!("server ended the replication stream");
                    self.server_copy_done = true;
                    return Ok(None);
                }
                Message::ErrorResponse(body) => {
                    return Err(ReplicationError::from_fields(body.fields()))
                }
                Message::NoticeResponse(body) => log_notice(&body),
                Message::ParameterStatus(body) => {
                    debug!(name = ?body.name(), value = ?body.value(), "server parameter changed");
                }
                other => return Err(unexpected(&BackendMessage::Message(other))),
            }
        }
    }

    /// Sends a standby status update stamped with the current time.
    ///
    /// Not cancel-safe: a cancelled send may leave half a message in the
    /// socket, so await it outside `tokio::select!`.
    ///
    /// # Errors
    ///
    /// [`ReplicationError::Io`] when the write fails.
    pub async fn send_status(&mut self, status: StandbyStatus) -> Result<(), ReplicationError> {
        let client_clock = postgres_epoch_micros(SystemTime::now());
        let payload = encode_standby_status(&status, client_clock);
        send_message(&mut self.transport, |buf| {
            frontend::CopyData::new(payload)?.write(buf);
            Ok(())
        })
        .await?;
        debug!(
            written = %status.written,
            flushed = %status.flushed,
            applied = %status.applied,
            reply_requested = status.reply_requested,
            "sent standby status update"
        );
        Ok(())
    }

    /// Ends the stream: sends CopyDone, reads until the server completes the
    /// command, and terminates the session.
    ///
    /// XLogData that arrives before the server's CopyDone is discarded, so
    /// send a final status update first. A server that never responds makes
    /// this wait, so wrap the call in `tokio::time::timeout`.
    ///
    /// # Errors
    ///
    /// [`ReplicationError::Server`] when the server reports an error while
    /// ending, and [`ReplicationError::Io`] when a write fails. A server that
    /// closes the connection instead of answering is not an error.
    pub async fn close(mut self) -> Result<(), ReplicationError> {
        send_message(&mut self.transport, |buf| {
            frontend::copy_done(buf);
            Ok(())
        })
        .await?;

        loop {
            let message = match read_message(&mut self.transport).await {
                Ok(BackendMessage::Message(message)) => message,
                Ok(other) => return Err(unexpected(&other)),
                Err(ReplicationError::Closed) => return Ok(()),
                Err(err) => return Err(err),
            };
            match message {
                Message::ReadyForQuery(_) => break,
                Message::ErrorResponse(body) => {
                    return Err(ReplicationError::from_fields(body.fields()))
                }
                Message::NoticeResponse(body) => log_notice(&body),
                Message::CopyData(_)
                | Message::CopyDone
                | Message::CommandComplete(_)
                | Message::ParameterStatus(_) => {}
                other => return Err(unexpected(&BackendMessage::Message(other))),
            }
        }

        send_message(&mut self.transport, |buf| {
            frontend::terminate(buf);
            Ok(())
        })
        .await?;
        self.transport.get_mut().shutdown().await?;
        debug!("replication stream closed");
        Ok(())
    }
}

fn unexpected(message: &BackendMessage) -> ReplicationError {
    ReplicationError::UnexpectedMessage {
        tag: tag_of(message),
        context: "streaming",
    }
}

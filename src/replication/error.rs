//! Errors of the replication connection.
//!
//! The variants split by what the caller does next. Errors of the connection
//! itself (refused, closed, a server shutting down) are transient, so the
//! caller reconnects after a pause. Configuration errors (a rejected server
//! certificate, missing password or user) need the operator to act, so retrying
//! does not help. A server error keeps its SQLSTATE code, so callers can tell
//! "slot in use by another process" (55006) apart from "slot does not exist"
//! (42704). The codes are listed in PostgreSQL's Appendix A, "PostgreSQL Error
//! Codes".

use std::io;

use postgres_protocol::message::backend::ErrorFields;

use super::protocol::ProtocolError;
use crate::tls::SslMode;

/// SQLSTATE `object_in_use`, raised when another process is streaming from the slot.
const SQLSTATE_OBJECT_IN_USE: &str = "55006";

/// SQLSTATE `undefined_object`, raised for a slot or publication that does not exist.
const SQLSTATE_UNDEFINED_OBJECT: &str = "42704";

/// SQLSTATE class 57 "operator intervention", raised on server shutdown or a
/// terminated backend.
const SQLSTATE_CLASS_OPERATOR_INTERVENTION: &str = "57";

/// SQLSTATE class 28 "invalid authorization specification", raised for a
/// wrong password or a rejected `pg_hba.conf` entry.
const SQLSTATE_CLASS_INVALID_AUTHORIZATION: &str = "28";

/// An error of the replication connection.
#[derive(Debug, thiserror::Error)]
pub enum ReplicationError {
    /// The connection settings contain no host.
    #[error("no host in the source connection settings: set `host` in `source.url`")]
    MissingHost,

    /// The connection settings contain no user.
    #[error("no user in the source connection settings: set `user` in `source.url`")]
    MissingUser,

    /// The server requested a password and none is configured.
    #[error(
        "the server requested a password for user `{user}` but none is configured: \
         set `source.password_file` or a password in `source.url`"
    )]
    MissingPassword {
        /// The user that the server authenticates.
        user: String,
    },

    /// The server rejected the SSLRequest with `N`, and the mode needs TLS.
    #[error(
        "server `{address}` does not offer TLS, which sslmode `{mode}` requires: set ssl = on \
         in postgresql.conf, or use sslmode=prefer or disable"
    )]
    TlsNotOffered {
        /// The host and port.
        address: String,
        /// The mode of the connection settings.
        mode: SslMode,
    },

    /// The TLS handshake failed, for example on a rejected server certificate.
    #[error("TLS with `{address}` failed (sslmode `{mode}`): {reason}")]
    Tls {
        /// The host and port.
        address: String,
        /// The mode of the connection settings.
        mode: SslMode,
        /// The failure, with the fix when there is one.
        reason: String,
    },

    /// `channel_binding=require`, and the login ended without channel binding.
    #[error(
        "channel_binding `require`, but the server authenticated without SCRAM-SHA-256-PLUS: \
         connect over TLS to a role with scram-sha-256 in pg_hba.conf, or remove \
         `channel_binding` from the URL"
    )]
    ChannelBindingRequired,

    /// The server requested an authentication method that this client lacks.
    #[error(
        "the server requested `{method}` authentication, which walhook does not support: \
         use `scram-sha-256`, `md5`, `password` or `trust` for this user in pg_hba.conf"
    )]
    UnsupportedAuthentication {
        /// The method's name as in `pg_hba.conf`.
        method: String,
    },

    /// The server's SCRAM messages were invalid, or its proof of the password was wrong.
    #[error("SCRAM-SHA-256 authentication failed: the server's messages are invalid")]
    Scram(#[source] io::Error),

    /// Connecting the socket failed.
    #[error("failed to connect to `{address}`")]
    Connect {
        /// The host and port, or the Unix socket path.
        address: String,
        /// The failure of the last attempt.
        #[source]
        source: io::Error,
    },

    /// The server sent an ErrorResponse.
    #[error("server error {code}: {message}")]
    Server {
        /// The SQLSTATE code, such as `55006`.
        code: String,
        /// The primary message, with the detail and hint appended when present.
        message: String,
    },

    /// Reading or writing the socket failed.
    #[error("i/o error on the replication connection")]
    Io(#[from] io::Error),

    /// The server closed the connection in the middle of an exchange.
    #[error("the server closed the replication connection unexpectedly")]
    Closed,

    /// The server sent a message that is not valid at this point of the protocol.
    #[error("unexpected message with tag `{tag}` from the server while {context}")]
    UnexpectedMessage {
        /// The message's tag byte as a character.
        tag: char,
        /// The exchange in progress, such as `authenticating`.
        context: &'static str,
    },

    /// A CopyData payload of the replication stream could not be parsed.
    #[error("invalid message in the replication stream")]
    Protocol(#[from] ProtocolError),

    /// A query result was not what the command returns.
    #[error("invalid result of `{command}`: {reason}")]
    InvalidResult {
        /// The command, such as `IDENTIFY_SYSTEM`.
        command: &'static str,
        /// The reason the result is invalid.
        reason: String,
    },
}

impl ReplicationError {
    /// Returns the SQLSTATE code of a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ReplicationError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    /// Returns true when another process is streaming from the replication slot.
    ///
    /// A second walhook instance waits and retries on this error until the
    /// first one exits.
    pub fn is_slot_in_use(&self) -> bool {
        self.code() == Some(SQLSTATE_OBJECT_IN_USE)
    }

    /// Returns true when the slot or publication named in a command does not exist.
    pub fn is_undefined_object(&self) -> bool {
        self.code() == Some(SQLSTATE_UNDEFINED_OBJECT)
    }

    /// Returns true when the server rejected the user or password.
    pub fn is_authentication_failed(&self) -> bool {
        self.code()
            .is_some_and(|code| code.starts_with(SQLSTATE_CLASS_INVALID_AUTHORIZATION))
    }

    /// Returns true when reconnecting later can succeed without a change of
    /// configuration: lost connections, refused connects and server shutdowns.
    pub fn is_transient(&self) -> bool {
        match self {
            ReplicationError::Connect { .. }
            | ReplicationError::Io(_)
            | ReplicationError::Closed => true,
            ReplicationError::Server { code, .. } => {
                code.starts_with(SQLSTATE_CLASS_OPERATOR_INTERVENTION)
                    || code == SQLSTATE_OBJECT_IN_USE
            }
            _ => false,
        }
    }

    /// Builds a [`ReplicationError::Server`] from the fields of an ErrorResponse.
    pub(crate) fn from_fields(mut fields: ErrorFields<'_>) -> ReplicationError {
        let fields = ServerFields::collect(&mut fields);
        let mut message = fields.message;
        if let Some(detail) = fields.detail {
            message.push_str(": ");
            message.push_str(&detail);
        }
        if let Some(hint) = fields.hint {
            message.push_str(" (hint: ");
            message.push_str(&hint);
            message.push(')');
        }
        ReplicationError::Server {
            code: fields.code,
            message,
        }
    }
}

/// The fields of an ErrorResponse or NoticeResponse that walhook reports.
#[derive(Debug, Default)]
pub(crate) struct ServerFields {
    pub(crate) severity: String,
    pub(crate) code: String,
    pub(crate) message: String,
    pub(crate) detail: Option<String>,
    pub(crate) hint: Option<String>,
}

impl ServerFields {
    /// Collects the fields, keeping what was read when a field is malformed,
    /// because a half-read error still beats no error.
    pub(crate) fn collect(fields: &mut ErrorFields<'_>) -> ServerFields {
        use fallible_iterator::FallibleIterator;

        let mut collected = ServerFields::default();
        while let Ok(Some(field)) = fields.next() {
            let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
            match field.type_() {
                // 'V' is the severity in English, unlike 'S', which may be translated.
                b'V' => collected.severity = value,
                b'C' => collected.code = value,
                b'M' => collected.message = value,
                b'D' => collected.detail = Some(value),
                b'H' => collected.hint = Some(value),
                _ => {}
            }
        }
        collected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_error(code: &str) -> ReplicationError {
        ReplicationError::Server {
            code: code.to_owned(),
            message: "test".to_owned(),
        }
    }

    #[test]
    fn slot_in_use_predicate() {
        assert!(
            server_error("55006").is_slot_in_use(),
            "55006 is object_in_use"
        );
        assert!(
            !server_error("42704").is_slot_in_use(),
            "42704 is undefined_object"
        );
        assert!(
            !ReplicationError::Closed.is_slot_in_use(),
            "not a server error"
        );
    }

    #[test]
    fn transient_classification() {
        assert!(
            ReplicationError::Closed.is_transient(),
            "a closed connection"
        );
        assert!(server_error("57P01").is_transient(), "admin_shutdown");
        assert!(server_error("55006").is_transient(), "slot held elsewhere");
        assert!(
            !server_error("42704").is_transient(),
            "missing slot needs setup"
        );
        assert!(
            !ReplicationError::MissingHost.is_transient(),
            "configuration error"
        );
    }

    #[test]
    fn server_error_from_fields() {
        use bytes::BufMut;
        use postgres_protocol::message::backend::Message;

        let body = b"SFEHLER\0VERROR\0C55006\0Mslot busy\0Dheld by 42\0Hwait\0\0";
        let mut frame = bytes::BytesMut::new();
        frame.put_u8(b'E');
        frame.put_u32(u32::try_from(body.len() + 4).expect("small body"));
        frame.put_slice(body);
        let Ok(Some(Message::ErrorResponse(response))) = Message::parse(&mut frame) else {
            panic!("expected an ErrorResponse");
        };

        let err = ReplicationError::from_fields(response.fields());

        assert_eq!(err.code(), Some("55006"));
        assert_eq!(
            err.to_string(),
            "server error 55006: slot busy: held by 42 (hint: wait)"
        );
    }

    #[test]
    fn authentication_failed_predicate() {
        assert!(
            server_error("28P01").is_authentication_failed(),
            "invalid_password"
        );
        assert!(
            server_error("28000").is_authentication_failed(),
            "rejected by pg_hba"
        );
        assert!(
            !server_error("55006").is_authentication_failed(),
            "object_in_use"
        );
    }
}

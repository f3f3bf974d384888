//! Password authentication after the startup message.
//!
//! The server picks the method from `pg_hba.conf` and requests it with an
//! Authentication message. walhook supports `trust` (nothing to send),
//! `password` (cleartext), `md5` and `scram-sha-256`, as described in
//! PostgreSQL's "Message Flow" and "SASL Authentication" documentation
//! (protocol-flow.html, sasl-authentication.html). Over TLS, SCRAM binds
//! to the server certificate (SCRAM-SHA-256-PLUS with `tls-server-end-point`)
//! when the server offers it, unless `channel_binding=disable`. Without
//! binding data the client sends `n` in the GS2 header, and `y` when the
//! client could bind but the server offered no binding.

use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use postgres_protocol::message::backend::{AuthenticationSaslBody, Message};
use postgres_protocol::message::frontend;
use tokio_postgres::config::ChannelBinding as BindingMode;
use tracing::debug;

use super::codec::{read_message, send_message, tag_of, BackendMessage, Transport};
use super::ReplicationError;

/// Exchange name for errors of unexpected messages.
const CONTEXT: &str = "authenticating";

/// The channel binding setting and the binding data of the connection.
pub(crate) struct BindingPolicy {
    /// `channel_binding` of the connection settings.
    pub(crate) mode: BindingMode,
    /// `tls-server-end-point` data; `None` without TLS.
    pub(crate) data: Option<Vec<u8>>,
}

/// Runs the authentication exchange until the server sends AuthenticationOk.
///
/// # Errors
///
/// [`ReplicationError::Server`] when the server rejects the user or
/// password, [`ReplicationError::MissingPassword`] when it requests one that
/// is not configured, and [`ReplicationError::UnsupportedAuthentication`] for
/// GSSAPI, SSPI, Kerberos or SASL mechanisms other than SCRAM-SHA-256.
/// [`ReplicationError::ChannelBindingRequired`] when `channel_binding=require`
/// and the login ended without channel binding.
pub(crate) async fn authenticate(
    transport: &mut Transport,
    user: &str,
    password: Option<&[u8]>,
    binding: &BindingPolicy,
) -> Result<(), ReplicationError> {
    let mut bound = false;
    loop {
        let message = match read_message(transport).await? {
            BackendMessage::Message(message) => message,
            other => return Err(unexpected(&other)),
        };
        match message {
            Message::AuthenticationOk => {
                if binding.mode == BindingMode::Require && !bound {
                    return Err(ReplicationError::ChannelBindingRequired);
                }
                debug!(user, channel_binding = bound, "authenticated");
                return Ok(());
            }
            Message::AuthenticationCleartextPassword => {
                let password = require_password(user, password)?;
                send_message(transport, |buf| frontend::password_message(password, buf)).await?;
            }
            Message::AuthenticationMd5Password(body) => {
                let password = require_password(user, password)?;
                let hash = md5_hash(user.as_bytes(), password, body.salt());
                send_message(transport, |buf| {
                    frontend::password_message(hash.as_bytes(), buf)
                })
                .await?;
            }
            Message::AuthenticationSasl(body) => {
                let password = require_password(user, password)?;
                bound = authenticate_scram(transport, &body, password, binding).await?;
            }
            Message::ErrorResponse(body) => {
                return Err(ReplicationError::from_fields(body.fields()))
            }
            Message::AuthenticationKerberosV5 => return Err(unsupported("krb5")),
            Message::AuthenticationScmCredential => return Err(unsupported("scm")),
            Message::AuthenticationGss => return Err(unsupported("gss")),
            Message::AuthenticationSspi => return Err(unsupported("sspi")),
            other => return Err(unexpected(&BackendMessage::Message(other))),
        }
    }
}

/// Runs a SCRAM-SHA-256 exchange up to and including AuthenticationSASLFinal,
/// and returns whether it was bound to the TLS channel.
async fn authenticate_scram(
    transport: &mut Transport,
    body: &AuthenticationSaslBody,
    password: &[u8],
    binding: &BindingPolicy,
) -> Result<bool, ReplicationError> {
    let offers_plus = check_scram_offered(body)?;
    let (mechanism, channel_binding) = match (&binding.data, binding.mode) {
        (_, BindingMode::Disable) | (None, _) => (SCRAM_SHA_256, ChannelBinding::unsupported()),
        (Some(data), _) if offers_plus => (
            SCRAM_SHA_256_PLUS,
            ChannelBinding::tls_server_end_point(data.clone()),
        ),
        (Some(_), _) => (SCRAM_SHA_256, ChannelBinding::unrequested()),
    };
    let bound = mechanism == SCRAM_SHA_256_PLUS;
    let mut scram = ScramSha256::new(password, channel_binding);
    send_message(transport, |buf| {
        frontend::sasl_initial_response(mechanism, scram.message(), buf)
    })
    .await?;

    // The server sends its nonce and salt, and the client proves the password.
    match read_auth_message(transport).await? {
        Message::AuthenticationSaslContinue(body) => {
            scram.update(body.data()).map_err(ReplicationError::Scram)?;
        }
        other => return Err(unexpected(&BackendMessage::Message(other))),
    }
    send_message(transport, |buf| {
        frontend::sasl_response(scram.message(), buf)
    })
    .await?;

    // The server proves that it has the password too.
    match read_auth_message(transport).await? {
        Message::AuthenticationSaslFinal(body) => {
            scram.finish(body.data()).map_err(ReplicationError::Scram)?;
            Ok(bound)
        }
        other => Err(unexpected(&BackendMessage::Message(other))),
    }
}

/// Reads a message of the SCRAM exchange, turning an ErrorResponse into an error.
async fn read_auth_message(transport: &mut Transport) -> Result<Message, ReplicationError> {
    match read_message(transport).await? {
        BackendMessage::Message(Message::ErrorResponse(body)) => {
            Err(ReplicationError::from_fields(body.fields()))
        }
        BackendMessage::Message(message) => Ok(message),
        other => Err(unexpected(&other)),
    }
}

/// Checks that SCRAM-SHA-256 is offered, and returns whether its channel
/// binding variant is offered too.
fn check_scram_offered(body: &AuthenticationSaslBody) -> Result<bool, ReplicationError> {
    use fallible_iterator::FallibleIterator;

    let mechanisms: Vec<&str> = body.mechanisms().collect()?;
    if mechanisms.contains(&SCRAM_SHA_256) {
        return Ok(mechanisms.contains(&SCRAM_SHA_256_PLUS));
    }
    Err(unsupported(&format!("SASL {}", mechanisms.join(", "))))
}

fn require_password<'a>(
    user: &str,
    password: Option<&'a [u8]>,
) -> Result<&'a [u8], ReplicationError> {
    password.ok_or_else(|| ReplicationError::MissingPassword {
        user: user.to_owned(),
    })
}

fn unsupported(method: &str) -> ReplicationError {
    ReplicationError::UnsupportedAuthentication {
        method: method.to_owned(),
    }
}

fn unexpected(message: &BackendMessage) -> ReplicationError {
    ReplicationError::UnexpectedMessage {
        tag: tag_of(message),
        context: CONTEXT,
    }
}

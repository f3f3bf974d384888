//! Framing of the PostgreSQL wire protocol for [`tokio_util::codec::Framed`].
//!
//! A backend message is a tag byte, a 32-bit big-endian length that counts
//! itself, and the body. The decoder waits until a whole message is buffered
//! and only then removes it from the buffer. So a read that is cancelled
//! (dropped inside `tokio::select!`) loses no bytes, and the next read resumes
//! where the last one stopped.
//!
//! `postgres_protocol::message::backend::Message` parses every message that
//! walhook needs except CopyBothResponse (`W`), which only replication
//! connections receive, so this codec parses that one itself.

use std::io;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use postgres_protocol::message::backend::{Header, Message, NoticeResponseBody};
use tokio_util::codec::{Decoder, Encoder, Framed};
use tracing::{debug, warn};

use super::error::ServerFields;
use super::socket::Socket;
use super::ReplicationError;

/// Tag of CopyBothResponse, the server's response to START_REPLICATION.
const COPY_BOTH_RESPONSE_TAG: u8 = b'W';

/// Length of a message header: tag byte and 32-bit length.
const HEADER_LEN: usize = 5;

/// Largest backend message accepted, in bytes. PostgreSQL builds each message
/// in a buffer of at most 1 GiB (`MaxAllocSize`), so larger lengths mean a
/// corrupt stream.
const MAX_MESSAGE_LEN: usize = 1 << 30;

/// The framed connection to the server.
pub(crate) type Transport = Framed<Socket, PostgresCodec>;

/// A message from the server.
pub(crate) enum BackendMessage {
    /// The server entered CopyBoth mode after START_REPLICATION.
    CopyBothResponse,
    /// Any other message, parsed by `postgres_protocol`.
    Message(Message),
}

/// Decodes backend messages and passes already encoded frontend messages through.
#[derive(Debug, Default)]
pub(crate) struct PostgresCodec;

impl Decoder for PostgresCodec {
    type Item = BackendMessage;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<BackendMessage>> {
        let Some(header) = Header::parse(src)? else {
            src.reserve(HEADER_LEN);
            return Ok(None);
        };
        let total_len = frame_len(header)?;
        if src.len() < total_len {
            src.reserve(total_len - src.len());
            return Ok(None);
        }

        if header.tag() == COPY_BOTH_RESPONSE_TAG {
            // The body lists the column formats, which are always binary here.
            src.advance(total_len);
            return Ok(Some(BackendMessage::CopyBothResponse));
        }
        match Message::parse(src)? {
            Some(message) => Ok(Some(BackendMessage::Message(message))),
            None => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "backend message parser wanted more bytes than the message length",
            )),
        }
    }
}

/// Returns the length of the whole message, header included.
fn frame_len(header: Header) -> io::Result<usize> {
    let len = usize::try_from(header.len()).unwrap_or(usize::MAX);
    if !(4..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "invalid length `{}` of backend message `{}`",
                header.len(),
                char::from(header.tag())
            ),
        ));
    }
    Ok(len + 1)
}

impl Encoder<Bytes> for PostgresCodec {
    type Error = io::Error;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> io::Result<()> {
        dst.extend_from_slice(&item);
        Ok(())
    }
}

/// Reads the next message, waiting as long as the server takes.
///
/// Cancel-safe: a message is removed from the read buffer only when it is
/// returned.
pub(crate) async fn read_message(
    transport: &mut Transport,
) -> Result<BackendMessage, ReplicationError> {
    match transport.next().await {
        Some(Ok(message)) => Ok(message),
        Some(Err(err)) => Err(ReplicationError::Io(err)),
        None => Err(ReplicationError::Closed),
    }
}

/// Encodes a frontend message with `encode` and sends it, flushing the socket.
pub(crate) async fn send_message(
    transport: &mut Transport,
    encode: impl FnOnce(&mut BytesMut) -> io::Result<()>,
) -> Result<(), ReplicationError> {
    let mut buf = BytesMut::new();
    encode(&mut buf)?;
    transport.send(buf.freeze()).await?;
    Ok(())
}

/// Logs a NoticeResponse: warnings at warn, other severities at debug.
pub(crate) fn log_notice(body: &NoticeResponseBody) {
    let fields = ServerFields::collect(&mut body.fields());
    if fields.severity == "WARNING" {
        warn!(code = %fields.code, detail = ?fields.detail, "postgres: {}", fields.message);
    } else {
        debug!(severity = %fields.severity, code = %fields.code, "postgres: {}", fields.message);
    }
}

/// Returns the tag character of a message for [`ReplicationError::UnexpectedMessage`].
pub(crate) fn tag_of(message: &BackendMessage) -> char {
    let message = match message {
        BackendMessage::CopyBothResponse => return char::from(COPY_BOTH_RESPONSE_TAG),
        BackendMessage::Message(message) => message,
    };
    let tag = match message {
        Message::AuthenticationCleartextPassword
        | Message::AuthenticationGss
        | Message::AuthenticationKerberosV5
        | Message::AuthenticationMd5Password(_)
        | Message::AuthenticationOk
        | Message::AuthenticationScmCredential
        | Message::AuthenticationSspi
        | Message::AuthenticationGssContinue(_)
        | Message::AuthenticationSasl(_)
        | Message::AuthenticationSaslContinue(_)
        | Message::AuthenticationSaslFinal(_) => b'R',
        Message::BackendKeyData(_) => b'K',
        Message::BindComplete => b'2',
        Message::CloseComplete => b'3',
        Message::CommandComplete(_) => b'C',
        Message::CopyData(_) => b'd',
        Message::CopyDone => b'c',
        Message::CopyInResponse(_) => b'G',
        Message::CopyOutResponse(_) => b'H',
        Message::DataRow(_) => b'D',
        Message::EmptyQueryResponse => b'I',
        Message::ErrorResponse(_) => b'E',
        Message::NoData => b'n',
        Message::NoticeResponse(_) => b'N',
        Message::NotificationResponse(_) => b'A',
        Message::ParameterDescription(_) => b't',
        Message::ParameterStatus(_) => b'S',
        Message::ParseComplete => b'1',
        Message::PortalSuspended => b's',
        Message::ReadyForQuery(_) => b'Z',
        Message::RowDescription(_) => b'T',
        _ => b'?',
    };
    char::from(tag)
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::*;

    fn frame(tag: u8, body: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.put_u8(tag);
        buf.put_u32(u32::try_from(body.len() + 4).expect("small body"));
        buf.put_slice(body);
        buf
    }

    #[test]
    fn decode_waits_for_whole_message() {
        let whole = frame(b'd', b"wxyz");
        let mut partial = BytesMut::from(&whole[..6]);

        let decoded = PostgresCodec.decode(&mut partial).expect("valid prefix");

        assert!(decoded.is_none(), "a partial message must not decode");
        assert_eq!(partial.len(), 6, "a partial message stays buffered");
    }

    #[test]
    fn decode_copy_both_response() {
        let mut buf = frame(b'W', &[0, 0, 0]);
        buf.extend_from_slice(&frame(b'c', b""));

        let first = PostgresCodec.decode(&mut buf).expect("valid message");
        let second = PostgresCodec.decode(&mut buf).expect("valid message");

        assert!(matches!(first, Some(BackendMessage::CopyBothResponse)));
        assert!(matches!(
            second,
            Some(BackendMessage::Message(Message::CopyDone))
        ));
        assert!(buf.is_empty(), "both messages consumed");
    }

    #[test]
    fn decode_copy_data() {
        let mut buf = frame(b'd', b"kpayload");

        let decoded = PostgresCodec.decode(&mut buf).expect("valid message");

        let Some(BackendMessage::Message(Message::CopyData(body))) = decoded else {
            panic!("expected CopyData");
        };
        assert_eq!(body.data(), b"kpayload");
    }

    #[test]
    fn decode_rejects_invalid_length() {
        let mut buf = BytesMut::from(&[b'd', 0, 0, 0, 2][..]);

        let result = PostgresCodec.decode(&mut buf);

        assert!(result.is_err(), "a length below 4 is invalid");
    }
}

//! The messages inside the CopyBoth stream of streaming replication.
//!
//! After START_REPLICATION, each CopyData message from the server carries
//! either XLogData (`w`) or a primary keepalive (`k`), and the client replies
//! with standby status updates (`r`). The layouts are those of PostgreSQL's
//! "Streaming Replication Protocol" documentation (protocol-replication.html):
//! every integer is big-endian, LSNs are 64-bit and clocks count microseconds
//! since 2000-01-01 00:00:00 UTC.
//!
//! This module does no I/O. XLogData keeps its payload as [`Bytes`], so the
//! pgoutput decoder reads it without a copy.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::Lsn;

/// Tag of an XLogData message.
const XLOG_DATA_TAG: u8 = b'w';

/// Tag of a primary keepalive message.
const PRIMARY_KEEPALIVE_TAG: u8 = b'k';

/// Tag of a standby status update.
const STANDBY_STATUS_UPDATE_TAG: u8 = b'r';

/// Header length of XLogData after the tag: start, end and clock.
const XLOG_DATA_HEADER_LEN: usize = 24;

/// Body length of a keepalive after the tag: end, clock and reply flag.
const KEEPALIVE_BODY_LEN: usize = 17;

/// Total length of a standby status update, tag included.
const STANDBY_STATUS_UPDATE_LEN: usize = 34;

/// Seconds from the Unix epoch to the PostgreSQL epoch, 2000-01-01 00:00:00 UTC.
const POSTGRES_EPOCH_UNIX_SECS: u64 = 946_684_800;

/// A message of the server inside the replication stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// A chunk of WAL, which logical replication fills with one pgoutput message.
    XLogData(XLogDataBody),
    /// A heartbeat that reports the server's WAL end.
    PrimaryKeepalive(KeepaliveBody),
}

/// The body of an XLogData message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XLogDataBody {
    /// The WAL position where `data` starts. Logical replication sets it to the
    /// LSN of the decoded change, or 0/0 for some messages.
    pub wal_start: Lsn,
    /// The server's current end of WAL.
    pub wal_end: Lsn,
    /// The server's clock when sending, in microseconds since 2000-01-01 UTC.
    pub server_clock: i64,
    /// The payload: one pgoutput message.
    pub data: Bytes,
}

/// The body of a primary keepalive message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeepaliveBody {
    /// The server's current end of WAL.
    pub wal_end: Lsn,
    /// The server's clock when sending, in microseconds since 2000-01-01 UTC.
    pub server_clock: i64,
    /// Whether the server requests a status update at once to avoid a timeout.
    pub reply_requested: bool,
}

/// The positions that a standby status update reports to the server.
///
/// The server moves the slot's `confirmed_flush_lsn` to `flushed`, so WAL
/// before it may be removed and is never sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StandbyStatus {
    /// The last WAL position received and written.
    pub written: Lsn,
    /// The last WAL position stored durably, so the server need not resend it.
    pub flushed: Lsn,
    /// The last WAL position applied.
    pub applied: Lsn,
    /// Whether the server replies with a keepalive at once.
    pub reply_requested: bool,
}

/// A CopyData payload that is not a valid replication message.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The payload has no tag byte.
    #[error("empty CopyData message in the replication stream")]
    Empty,

    /// The tag is neither XLogData nor keepalive.
    #[error("unknown replication message tag `{}` (0x{tag:02x})", char::from(*tag))]
    UnknownTag {
        /// The tag byte.
        tag: u8,
    },

    /// The payload is shorter than its fixed fields.
    #[error(
        "replication message `{}` is truncated: expected at least {expected_len} bytes \
         after the tag, got {actual_len}",
        char::from(*tag)
    )]
    Truncated {
        /// The tag byte.
        tag: u8,
        /// The minimum length after the tag.
        expected_len: usize,
        /// The length after the tag.
        actual_len: usize,
    },

    /// The payload is longer than its fixed fields.
    #[error(
        "replication message `{}` has {extra_len} trailing bytes",
        char::from(*tag)
    )]
    TrailingBytes {
        /// The tag byte.
        tag: u8,
        /// The number of bytes after the last field.
        extra_len: usize,
    },

    /// The keepalive's reply flag is neither 0 nor 1.
    #[error("invalid reply flag `{flag}` in a keepalive: expected 0 or 1")]
    InvalidReplyFlag {
        /// The flag byte.
        flag: u8,
    },
}

/// Parses the payload of a CopyData message from the server.
///
/// # Errors
///
/// Returns a [`ProtocolError`] for an empty payload, an unknown tag, a
/// payload shorter than its fixed fields, trailing bytes after a keepalive
/// or a reply flag other than 0 or 1.
pub fn parse_copy_data(mut payload: Bytes) -> Result<ReplicationMessage, ProtocolError> {
    if payload.is_empty() {
        return Err(ProtocolError::Empty);
    }
    let tag = payload.get_u8();
    match tag {
        XLOG_DATA_TAG => parse_xlog_data(payload).map(ReplicationMessage::XLogData),
        PRIMARY_KEEPALIVE_TAG => parse_keepalive(payload).map(ReplicationMessage::PrimaryKeepalive),
        tag => Err(ProtocolError::UnknownTag { tag }),
    }
}

fn parse_xlog_data(mut body: Bytes) -> Result<XLogDataBody, ProtocolError> {
    check_min_len(XLOG_DATA_TAG, &body, XLOG_DATA_HEADER_LEN)?;
    let wal_start = Lsn::from_u64(body.get_u64());
    let wal_end = Lsn::from_u64(body.get_u64());
    let server_clock = body.get_i64();
    Ok(XLogDataBody {
        wal_start,
        wal_end,
        server_clock,
        data: body,
    })
}

fn parse_keepalive(mut body: Bytes) -> Result<KeepaliveBody, ProtocolError> {
    check_min_len(PRIMARY_KEEPALIVE_TAG, &body, KEEPALIVE_BODY_LEN)?;
    if body.len() > KEEPALIVE_BODY_LEN {
        return Err(ProtocolError::TrailingBytes {
            tag: PRIMARY_KEEPALIVE_TAG,
            extra_len: body.len() - KEEPALIVE_BODY_LEN,
        });
    }

    let wal_end = Lsn::from_u64(body.get_u64());
    let server_clock = body.get_i64();
    let reply_requested = match body.get_u8() {
        0 => false,
        1 => true,
        flag => return Err(ProtocolError::InvalidReplyFlag { flag }),
    };
    Ok(KeepaliveBody {
        wal_end,
        server_clock,
        reply_requested,
    })
}

fn check_min_len(tag: u8, body: &Bytes, expected_len: usize) -> Result<(), ProtocolError> {
    if body.len() < expected_len {
        return Err(ProtocolError::Truncated {
            tag,
            expected_len,
            actual_len: body.len(),
        });
    }
    Ok(())
}

/// Encodes a standby status update as the payload of a CopyData message.
///
/// `client_clock` is the sending time in microseconds since 2000-01-01 UTC,
/// as returned by [`postgres_epoch_micros`].
pub fn encode_standby_status(status: &StandbyStatus, client_clock: i64) -> Bytes {
    let mut buf = BytesMut::with_capacity(STANDBY_STATUS_UPDATE_LEN);
    buf.put_u8(STANDBY_STATUS_UPDATE_TAG);
    buf.put_u64(status.written.as_u64());
    buf.put_u64(status.flushed.as_u64());
    buf.put_u64(status.applied.as_u64());
    buf.put_i64(client_clock);
    buf.put_u8(u8::from(status.reply_requested));
    buf.freeze()
}

/// Converts a system time to microseconds since 2000-01-01 00:00:00 UTC, the
/// clock of the replication protocol.
///
/// Times before 2000 give negative values. Times beyond the `i64` range
/// saturate.
pub fn postgres_epoch_micros(time: SystemTime) -> i64 {
    let epoch = UNIX_EPOCH + Duration::from_secs(POSTGRES_EPOCH_UNIX_SECS);
    match time.duration_since(epoch) {
        Ok(after) => i64::try_from(after.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros())
            .map(|micros| -micros)
            .unwrap_or(i64::MIN),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xlog_data_bytes(start: u64, end: u64, clock: i64, data: &[u8]) -> Bytes {
        let mut buf = BytesMut::new();
        buf.put_u8(b'w');
        buf.put_u64(start);
        buf.put_u64(end);
        buf.put_i64(clock);
        buf.put_slice(data);
        buf.freeze()
    }

    fn keepalive_bytes(end: u64, clock: i64, reply: u8) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.put_u8(b'k');
        buf.put_u64(end);
        buf.put_i64(clock);
        buf.put_u8(reply);
        buf
    }

    #[test]
    fn parse_xlog_data_fields_and_payload() {
        let bytes = xlog_data_bytes(0x16_B374_D848, 0x16_B374_D900, 42, b"B\x00\x01");

        let message = parse_copy_data(bytes).expect("valid XLogData");

        let expected = XLogDataBody {
            wal_start: Lsn::from_u64(0x16_B374_D848),
            wal_end: Lsn::from_u64(0x16_B374_D900),
            server_clock: 42,
            data: Bytes::from_static(b"B\x00\x01"),
        };
        assert_eq!(message, ReplicationMessage::XLogData(expected));
    }

    #[test]
    fn parse_xlog_data_with_empty_payload() {
        let message = parse_copy_data(xlog_data_bytes(1, 2, 3, b"")).expect("valid XLogData");

        let ReplicationMessage::XLogData(body) = message else {
            panic!("expected XLogData, got {message:?}");
        };
        assert!(body.data.is_empty(), "payload should be empty");
    }

    #[test]
    fn parse_keepalive_fields() {
        let bytes = keepalive_bytes(0x1_0000_0010, -5, 1).freeze();

        let message = parse_copy_data(bytes).expect("valid keepalive");

        let expected = KeepaliveBody {
            wal_end: Lsn::from_u64(0x1_0000_0010),
            server_clock: -5,
            reply_requested: true,
        };
        assert_eq!(message, ReplicationMessage::PrimaryKeepalive(expected));
    }

    #[test]
    fn parse_keepalive_without_reply_request() {
        let message = parse_copy_data(keepalive_bytes(7, 8, 0).freeze()).expect("valid keepalive");

        let ReplicationMessage::PrimaryKeepalive(body) = message else {
            panic!("expected keepalive, got {message:?}");
        };
        assert!(
            !body.reply_requested,
            "reply flag 0 means no reply requested"
        );
    }

    #[test]
    fn parse_rejects_empty_payload() {
        assert_eq!(parse_copy_data(Bytes::new()), Err(ProtocolError::Empty));
    }

    #[test]
    fn parse_rejects_unknown_tag() {
        let result = parse_copy_data(Bytes::from_static(b"r\x00"));

        assert_eq!(result, Err(ProtocolError::UnknownTag { tag: b'r' }));
    }

    #[test]
    fn parse_rejects_short_xlog_data() {
        let bytes = xlog_data_bytes(1, 2, 3, b"").slice(..20);

        let result = parse_copy_data(bytes);

        let expected = ProtocolError::Truncated {
            tag: b'w',
            expected_len: 24,
            actual_len: 19,
        };
        assert_eq!(result, Err(expected));
    }

    #[test]
    fn parse_rejects_short_keepalive() {
        let bytes = keepalive_bytes(1, 2, 0).freeze().slice(..17);

        let result = parse_copy_data(bytes);

        let expected = ProtocolError::Truncated {
            tag: b'k',
            expected_len: 17,
            actual_len: 16,
        };
        assert_eq!(result, Err(expected));
    }

    #[test]
    fn parse_rejects_keepalive_trailing_bytes() {
        let mut bytes = keepalive_bytes(1, 2, 0);
        bytes.put_slice(b"xy");

        let result = parse_copy_data(bytes.freeze());

        let expected = ProtocolError::TrailingBytes {
            tag: b'k',
            extra_len: 2,
        };
        assert_eq!(result, Err(expected));
    }

    #[test]
    fn parse_rejects_invalid_reply_flag() {
        let result = parse_copy_data(keepalive_bytes(1, 2, 2).freeze());

        assert_eq!(result, Err(ProtocolError::InvalidReplyFlag { flag: 2 }));
    }

    #[test]
    fn encode_standby_status_layout() {
        let status = StandbyStatus {
            written: Lsn::from_u64(0x0102_0304_0506_0708),
            flushed: Lsn::from_u64(0x10),
            applied: Lsn::from_u64(0x20),
            reply_requested: true,
        };

        let bytes = encode_standby_status(&status, 0x0A0B);

        let mut expected = vec![b'r'];
        expected.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        expected.extend_from_slice(&0x10u64.to_be_bytes());
        expected.extend_from_slice(&0x20u64.to_be_bytes());
        expected.extend_from_slice(&0x0A0Bi64.to_be_bytes());
        expected.push(1);
        assert_eq!(bytes.len(), 34, "a status update is 34 bytes long");
        assert_eq!(&bytes[..], &expected[..]);
    }

    #[test]
    fn encode_standby_status_without_reply_request() {
        let status = StandbyStatus {
            written: Lsn::ZERO,
            flushed: Lsn::ZERO,
            applied: Lsn::ZERO,
            reply_requested: false,
        };

        let bytes = encode_standby_status(&status, 0);

        assert_eq!(bytes.last(), Some(&0), "reply flag should be 0");
    }

    #[test]
    fn postgres_epoch_micros_counts_from_2000() {
        let epoch = UNIX_EPOCH + Duration::from_secs(946_684_800);

        assert_eq!(postgres_epoch_micros(epoch), 0, "2000-01-01 is zero");
        assert_eq!(
            postgres_epoch_micros(epoch + Duration::from_micros(1_500_000)),
            1_500_000,
            "1.5 s after the epoch"
        );
        assert_eq!(
            postgres_epoch_micros(UNIX_EPOCH),
            -946_684_800_000_000,
            "1970 is before the epoch"
        );
    }
}

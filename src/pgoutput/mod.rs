//! An I/O-free decoder for the messages of PostgreSQL's `pgoutput` logical decoding
//! plugin, protocol version 1.
//!
//! The input is the `data` of one XLogData message of the replication stream, which
//! contains exactly one pgoutput message: a tag byte followed by the fields that the
//! PostgreSQL 15 documentation lists under "Logical Replication Message Formats".
//! All integers are big-endian, strings are NUL-terminated, and column values stay
//! slices of the input until a caller asks for them.
//!
//! walhook starts replication with `proto_version '1'` and `messages 'true'`, and
//! without `binary 'true'` or `streaming 'on'`. The decoder therefore rejects the
//! tags of streamed and two-phase transactions (protocol versions 2 and 3) and
//! column values in binary format.
//!
//! The decoder keeps no state. Matching a tuple's columns to its relation's columns
//! belongs to the stage that caches Relation messages.

mod messages;
mod reader;
mod tuple;

#[cfg(test)]
mod tests;

use std::str::Utf8Error;

use bytes::Bytes;

pub use messages::{
    BeginBody, Column, CommitBody, DeleteBody, InsertBody, LogicalMessageBody, Oid, OriginBody,
    RelationBody, ReplicaIdentity, TruncateBody, TypeBody, UpdateBody,
};
pub use tuple::{ColumnValue, OldTuple, TupleData};

use reader::Reader;

/// One decoded pgoutput message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Begin(BeginBody),
    Commit(CommitBody),
    Origin(OriginBody),
    Relation(RelationBody),
    Type(TypeBody),
    Insert(InsertBody),
    Update(UpdateBody),
    Delete(DeleteBody),
    Truncate(TruncateBody),
    LogicalMessage(LogicalMessageBody),
}

/// Error for bytes that are not a pgoutput message of protocol version 1.
///
/// Every variant is definite: the same bytes fail the same way on every retry, so
/// the caller stops replication instead of reconnecting.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error(
        "truncated pgoutput message: field `{field}` needs {needed} bytes at offset {offset}, \
         but {remaining} remain"
    )]
    Truncated {
        field: &'static str,
        offset: usize,
        needed: usize,
        remaining: usize,
    },

    #[error(
        "truncated pgoutput message: string `{field}` at offset {offset} has no NUL terminator"
    )]
    MissingNul { field: &'static str, offset: usize },

    #[error("invalid pgoutput message: string `{field}` is not valid UTF-8")]
    InvalidUtf8 {
        field: &'static str,
        source: Utf8Error,
    },

    #[error("invalid pgoutput message: `{field}` is negative (`{value}`)")]
    NegativeLength { field: &'static str, value: i32 },

    #[error(
        "unknown pgoutput message tag {}: protocol version 1 sends only \
         B, C, O, R, Y, I, U, D, T and M, so check that replication starts with \
         `proto_version '1'` and without `streaming`",
        describe_byte(*.tag)
    )]
    UnknownTag { tag: u8 },

    #[error(
        "invalid pgoutput message: `{field}` is {}, expected {expected}",
        describe_byte(*.value)
    )]
    UnexpectedByte {
        field: &'static str,
        value: u8,
        expected: &'static str,
    },

    #[error(
        "unsupported binary value in column {column}: walhook decodes text values only, \
         so start replication without `binary 'true'`"
    )]
    BinaryValue { column: usize },

    #[error("invalid pgoutput message `{tag}`: {count} bytes remain after its last field")]
    TrailingBytes { tag: char, count: usize },
}

/// Decodes the `data` of one XLogData message into a pgoutput message.
///
/// Column values of the result are slices of `data`. Fails on an empty or truncated
/// message, an unknown tag, bytes after the last field, a string that is not UTF-8
/// and a column value in binary format.
pub fn decode(data: &Bytes) -> Result<Message, DecodeError> {
    let mut reader = Reader::new(data);
    let tag = reader.u8("tag")?;

    let message = match tag {
        b'B' => Message::Begin(messages::decode_begin(&mut reader)?),
        b'C' => Message::Commit(messages::decode_commit(&mut reader)?),
        b'O' => Message::Origin(messages::decode_origin(&mut reader)?),
        b'R' => Message::Relation(messages::decode_relation(&mut reader)?),
        b'Y' => Message::Type(messages::decode_type(&mut reader)?),
        b'I' => Message::Insert(messages::decode_insert(&mut reader)?),
        b'U' => Message::Update(messages::decode_update(&mut reader)?),
        b'D' => Message::Delete(messages::decode_delete(&mut reader)?),
        b'T' => Message::Truncate(messages::decode_truncate(&mut reader)?),
        b'M' => Message::LogicalMessage(messages::decode_logical_message(&mut reader)?),
        _ => return Err(DecodeError::UnknownTag { tag }),
    };

    reader.finish(tag)?;
    Ok(message)
}

/// Formats a protocol byte as its ASCII character when printable, with its hex value.
fn describe_byte(byte: u8) -> String {
    if byte.is_ascii_graphic() {
        format!("`{}` (0x{byte:02X})", char::from(byte))
    } else {
        format!("0x{byte:02X}")
    }
}

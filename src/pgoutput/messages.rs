//! The bodies of pgoutput messages and their decoding, one function per tag.
//!
//! Field order and widths follow "Logical Replication Message Formats" in the
//! PostgreSQL 15 documentation, for protocol version 1: the optional transaction id
//! that versions 2 and later put in streamed messages is absent.

use std::fmt;

use bytes::Bytes;

use super::reader::{Reader, Width};
use super::tuple::{decode_new_tuple, decode_old_tuple, OldTuple, TupleData};
use super::DecodeError;
use crate::replication::Lsn;

/// The object identifier of a relation or a type, as PostgreSQL assigns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Oid(pub u32);

impl fmt::Display for Oid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Message `B`: the start of a transaction, sent when it commits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BeginBody {
    /// The LSN of the transaction's commit record.
    pub final_lsn: Lsn,
    /// Commit time in microseconds since 2000-01-01 00:00:00 UTC.
    pub commit_time: i64,
    pub xid: u32,
}

/// Message `C`: the end of the transaction that the last Begin opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitBody {
    /// Unused by PostgreSQL 15, which always sends 0.
    pub flags: u8,
    /// The LSN of the commit record, equal to the Begin's `final_lsn`.
    pub commit_lsn: Lsn,
    /// The LSN just past the commit record.
    pub end_lsn: Lsn,
    /// Commit time in microseconds since 2000-01-01 00:00:00 UTC.
    pub commit_time: i64,
}

/// Message `O`: the replication origin of a transaction that was itself replicated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginBody {
    /// The commit LSN of the transaction on the origin server.
    pub commit_lsn: Lsn,
    pub name: String,
}

/// Message `R`: the columns of a table, sent before its first change in a session
/// and again after the server invalidates its cache entry, as ALTER TABLE does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelationBody {
    pub rel_id: Oid,
    /// The schema name, or an empty string for `pg_catalog`.
    pub namespace: String,
    pub name: String,
    pub replica_identity: ReplicaIdentity,
    pub columns: Vec<Column>,
}

/// The table's `REPLICA IDENTITY` setting, which decides what old row an Update or
/// Delete carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReplicaIdentity {
    /// `d`: the primary key columns.
    Default,
    /// `n`: no old row.
    Nothing,
    /// `f`: the whole old row.
    Full,
    /// `i`: the columns of a chosen unique index.
    Index,
}

/// One column of a Relation message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Column {
    /// Whether the column is part of the replica identity. With `REPLICA IDENTITY
    /// FULL` every column is.
    pub is_key: bool,
    pub name: String,
    pub type_oid: Oid,
    /// The type modifier (`atttypmod`), -1 when the type has none.
    pub type_modifier: i32,
}

/// Message `Y`: the name of a user-defined type used by a following Relation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeBody {
    pub oid: Oid,
    /// The schema name, or an empty string for `pg_catalog`.
    pub namespace: String,
    pub name: String,
}

/// Message `I`: one inserted row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InsertBody {
    pub rel_id: Oid,
    pub new: TupleData,
}

/// Message `U`: one updated row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateBody {
    pub rel_id: Oid,
    /// The old row: the whole row under `REPLICA IDENTITY FULL`, the key columns
    /// when the update changed the key, and `None` otherwise.
    pub old: Option<OldTuple>,
    /// The new row, in which TOASTed values that did not change are
    /// [`ColumnValue::UnchangedToast`](super::ColumnValue::UnchangedToast).
    pub new: TupleData,
}

/// Message `D`: one deleted row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteBody {
    pub rel_id: Oid,
    pub old: OldTuple,
}

/// Message `T`: one TRUNCATE statement over one or more tables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TruncateBody {
    pub cascade: bool,
    pub restart_identity: bool,
    pub rel_ids: Vec<Oid>,
}

/// Message `M`: a message written with `pg_logical_emit_message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogicalMessageBody {
    /// Whether the message belongs to the enclosing transaction. A non-transactional
    /// message arrives on its own, outside any Begin and Commit.
    pub transactional: bool,
    pub lsn: Lsn,
    pub prefix: String,
    /// The content as written, a slice of the message bytes.
    pub content: Bytes,
}

const TRUNCATE_CASCADE: u8 = 1;
const TRUNCATE_RESTART_IDENTITY: u8 = 2;
const MESSAGE_TRANSACTIONAL: u8 = 1;
const COLUMN_IS_KEY: u8 = 1;

pub(crate) fn decode_begin(reader: &mut Reader<'_>) -> Result<BeginBody, DecodeError> {
    Ok(BeginBody {
        final_lsn: reader.lsn("final_lsn")?,
        commit_time: reader.i64("commit_time")?,
        xid: reader.u32("xid")?,
    })
}

pub(crate) fn decode_commit(reader: &mut Reader<'_>) -> Result<CommitBody, DecodeError> {
    Ok(CommitBody {
        flags: reader.u8("flags")?,
        commit_lsn: reader.lsn("commit_lsn")?,
        end_lsn: reader.lsn("end_lsn")?,
        commit_time: reader.i64("commit_time")?,
    })
}

pub(crate) fn decode_origin(reader: &mut Reader<'_>) -> Result<OriginBody, DecodeError> {
    Ok(OriginBody {
        commit_lsn: reader.lsn("commit_lsn")?,
        name: reader.cstring("origin name")?,
    })
}

pub(crate) fn decode_relation(reader: &mut Reader<'_>) -> Result<RelationBody, DecodeError> {
    let rel_id = Oid(reader.u32("relation id")?);
    let namespace = reader.cstring("namespace")?;
    let name = reader.cstring("relation name")?;
    let replica_identity = decode_replica_identity(reader.u8("replica identity")?)?;

    let count = reader.count("column count", Width::Int16)?;
    let mut columns = Vec::with_capacity(count);
    for _ in 0..count {
        columns.push(decode_column(reader)?);
    }

    Ok(RelationBody {
        rel_id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn decode_replica_identity(value: u8) -> Result<ReplicaIdentity, DecodeError> {
    match value {
        b'd' => Ok(ReplicaIdentity::Default),
        b'n' => Ok(ReplicaIdentity::Nothing),
        b'f' => Ok(ReplicaIdentity::Full),
        b'i' => Ok(ReplicaIdentity::Index),
        value => Err(DecodeError::UnexpectedByte {
            field: "replica identity",
            value,
            expected: "`d`, `n`, `f` or `i`",
        }),
    }
}

/// Decodes one column of a Relation message. Flag bits other than "is key" are
/// ignored because PostgreSQL 15 defines no others.
fn decode_column(reader: &mut Reader<'_>) -> Result<Column, DecodeError> {
    Ok(Column {
        is_key: reader.u8("column flags")? & COLUMN_IS_KEY != 0,
        name: reader.cstring("column name")?,
        type_oid: Oid(reader.u32("column type")?),
        type_modifier: reader.i32("column type modifier")?,
    })
}

pub(crate) fn decode_type(reader: &mut Reader<'_>) -> Result<TypeBody, DecodeError> {
    Ok(TypeBody {
        oid: Oid(reader.u32("type id")?),
        namespace: reader.cstring("type namespace")?,
        name: reader.cstring("type name")?,
    })
}

pub(crate) fn decode_insert(reader: &mut Reader<'_>) -> Result<InsertBody, DecodeError> {
    let rel_id = Oid(reader.u32("relation id")?);
    let kind = reader.u8("new tuple kind")?;
    let new = decode_new_tuple(reader, kind)?;
    Ok(InsertBody { rel_id, new })
}

/// Decodes an Update, whose old row is present when the kind byte after the relation
/// id is `K` or `O` rather than `N`.
pub(crate) fn decode_update(reader: &mut Reader<'_>) -> Result<UpdateBody, DecodeError> {
    let rel_id = Oid(reader.u32("relation id")?);

    let mut kind = reader.u8("tuple kind")?;
    let old = match kind {
        b'N' => None,
        old_kind => {
            let old = decode_old_tuple(reader, old_kind)?;
            kind = reader.u8("new tuple kind")?;
            Some(old)
        }
    };

    let new = decode_new_tuple(reader, kind)?;
    Ok(UpdateBody { rel_id, old, new })
}

pub(crate) fn decode_delete(reader: &mut Reader<'_>) -> Result<DeleteBody, DecodeError> {
    let rel_id = Oid(reader.u32("relation id")?);
    let kind = reader.u8("old tuple kind")?;
    let old = decode_old_tuple(reader, kind)?;
    Ok(DeleteBody { rel_id, old })
}

pub(crate) fn decode_truncate(reader: &mut Reader<'_>) -> Result<TruncateBody, DecodeError> {
    let count = reader.count("relation count", Width::Int32)?;
    let options = reader.u8("truncate options")?;

    // The count comes from the input, so the vector grows with the ids actually read
    // rather than by `with_capacity(count)`.
    let mut rel_ids = Vec::new();
    for _ in 0..count {
        rel_ids.push(Oid(reader.u32("relation id")?));
    }

    Ok(TruncateBody {
        cascade: options & TRUNCATE_CASCADE != 0,
        restart_identity: options & TRUNCATE_RESTART_IDENTITY != 0,
        rel_ids,
    })
}

pub(crate) fn decode_logical_message(
    reader: &mut Reader<'_>,
) -> Result<LogicalMessageBody, DecodeError> {
    let flags = reader.u8("message flags")?;
    let lsn = reader.lsn("message lsn")?;
    let prefix = reader.cstring("message prefix")?;
    let len = reader.count("message content length", Width::Int32)?;
    let content = reader.bytes(len, "message content")?;

    Ok(LogicalMessageBody {
        transactional: flags & MESSAGE_TRANSACTIONAL != 0,
        lsn,
        prefix,
        content,
    })
}

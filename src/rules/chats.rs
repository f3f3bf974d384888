//! Rule of the chats table: a message or file posted to a job's activity feed.

use super::column::{read, read_id, Format, Side};
use super::event::{Audience, Event, JobInfo};
use super::{values, RuleError};
use crate::changes::{ChangeKind, RowChange};
use crate::config::ChatsTable;
use crate::payload::{EventKind, ObjectWriter};

/// Returns the job id of a chats row, to look up its job before [`events`].
pub fn job_id(change: &RowChange, table: &ChatsTable) -> Result<i64, RuleError> {
    read_id(change, side_of(change), &table.job_id)
}

/// Returns the poster's account id of an inserted chat, to look up the name.
pub fn account_id(change: &RowChange, table: &ChatsTable) -> Result<Option<i64>, RuleError> {
    Ok(read(change, Side::New, &table.account_id, Format::Integer)?.as_i64())
}

/// Tells whether the change is a user's post, which raises CHAT_POSTED;
/// updates, deletes and automatic system posts raise nothing.
pub fn is_user_post(change: &RowChange, table: &ChatsTable) -> Result<bool, RuleError> {
    if change.kind != ChangeKind::Insert {
        return Ok(false);
    }
    match &table.system {
        Some(column) => Ok(!change
            .new_value(column)?
            .is_some_and(values::is_truthy_flag)),
        None => Ok(true),
    }
}

/// Returns the CHAT_POSTED event of an inserted user post, with the poster's
/// full name (JSON null when the account is unknown).
pub fn events(
    change: &RowChange,
    table: &ChatsTable,
    job: &JobInfo,
    account_full_name: Option<String>,
) -> Result<Vec<Event>, RuleError> {
    if !is_user_post(change, table)? {
        return Ok(Vec::new());
    }
    let field = |column: &str, format| read(change, Side::New, column, format);
    let item = ObjectWriter::new()
        .value("uuid", &field(&table.uuid, Format::String)?)
        .integer("job_id", job.id)
        .value("account_id", &field(&table.account_id, Format::Integer)?)
        .value("message", &field(&table.message, Format::String)?)
        .value("file_name", &field(&table.file_name, Format::String)?)
        .value("file_uuid", &field(&table.file_uuid, Format::String)?)
        .value("file_url", &field(&table.file_url, Format::String)?)
        .value("created_at", &field(&table.created_at, Format::Timestamp)?)
        .value("updated_at", &field(&table.updated_at, Format::Timestamp)?)
        .value("deleted_at", &field(&table.deleted_at, Format::Timestamp)?)
        .string("accountFullName", account_full_name.as_deref())
        .finish();
    Ok(vec![Event {
        kind: EventKind::ChatPosted,
        audience: Audience::Owners(job.owners()),
        job_ids: vec![job.id],
        item,
    }])
}

fn side_of(change: &RowChange) -> Side {
    match change.kind {
        ChangeKind::Delete => Side::Old,
        _ => Side::New,
    }
}

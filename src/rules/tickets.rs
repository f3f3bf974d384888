//! Rule of the tickets table: a workflow ticket's status changed.

use super::column::{read, read_id, Format, Side};
use super::event::{Audience, Event, JobInfo};
use super::RuleError;
use crate::changes::{ChangeKind, RowChange};
use crate::config::TicketsTable;
use crate::payload::{EventKind, ObjectWriter};

/// Returns the job id of a tickets row, to look up its job before [`events`].
pub fn job_id(change: &RowChange, table: &TicketsTable) -> Result<i64, RuleError> {
    let side = if change.kind == ChangeKind::Delete {
        Side::Old
    } else {
        Side::New
    };
    read_id(change, side, &table.job_id)
}

/// Tells whether the change is an UPDATE of the status column.
pub fn changes_status(change: &RowChange, table: &TicketsTable) -> Result<bool, RuleError> {
    Ok(change.kind == ChangeKind::Update && change.changed(&table.status)?)
}

/// Returns the TICKET_STATUS_CHANGED event of the change, if its status changed.
pub fn events(
    change: &RowChange,
    table: &TicketsTable,
    job: &JobInfo,
) -> Result<Vec<Event>, RuleError> {
    if !changes_status(change, table)? {
        return Ok(Vec::new());
    }
    let item = ObjectWriter::new()
        .integer("jobId", job.id)
        .value(
            "ticketId",
            &read(change, Side::New, &table.id, Format::Integer)?,
        )
        .value(
            "fromTemplateId",
            &read(change, Side::New, &table.template_id, Format::Integer)?,
        )
        .value(
            "statusFrom",
            &read(change, Side::Old, &table.status, Format::String)?,
        )
        .value(
            "statusTo",
            &read(change, Side::New, &table.status, Format::String)?,
        )
        .value(
            "changedByAccountId",
            &read(change, Side::New, &table.changed_by, Format::Integer)?,
        )
        .value(
            "changedAt",
            &read(change, Side::New, &table.changed_at, Format::Timestamp)?,
        )
        .finish();
    Ok(vec![Event {
        kind: EventKind::TicketStatusChanged,
        audience: Audience::Owners(job.owners()),
        job_ids: vec![job.id],
        item,
    }])
}

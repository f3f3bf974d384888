//! Rules of the jobs table: created, stage changed, first modeled, address
//! changed, transferred to another account or company.

use super::column::{read, read_id, read_optional_id, Format, Side};
use super::event::{Audience, Event, JobInfo};
use super::{values, RuleError};
use crate::changes::{ChangeKind, RowChange};
use crate::config::JobsTable;
use crate::payload::{EventKind, JsonItem, ObjectWriter};
use crate::routing::Owner;

/// Returns the events of one jobs row change, in a fixed order.
pub fn events(change: &RowChange, table: &JobsTable) -> Result<Vec<Event>, RuleError> {
    if change.kind == ChangeKind::Delete {
        return Ok(Vec::new());
    }
    let job = job_info(change, table, Side::New)?;
    events_of_job(change, table, &job)
}

/// Returns the events of one jobs row change like [`events`], given the job
/// that [`job_info`] read from its new row.
pub fn events_of_job(
    change: &RowChange,
    table: &JobsTable,
    job: &JobInfo,
) -> Result<Vec<Event>, RuleError> {
    match change.kind {
        ChangeKind::Insert => Ok(vec![job_event(EventKind::NewJobCreated, job, id_item(job))]),
        ChangeKind::Update => updated(change, table, job),
        ChangeKind::Delete => Ok(Vec::new()),
    }
}

/// Returns the job as its new row (or, for a DELETE, its old row) describes it.
pub fn job_info(change: &RowChange, table: &JobsTable, side: Side) -> Result<JobInfo, RuleError> {
    let alt_id = match &table.alt_id {
        Some(column) => read(change, side, column, Format::String)?
            .as_str()
            .map(str::to_owned),
        None => None,
    };
    let program = match &table.program {
        Some(column) => read_optional_id(change, side, column)?,
        None => None,
    };
    Ok(JobInfo {
        id: read_id(change, side, &table.id)?,
        alt_id,
        company: read_optional_id(change, side, &table.company)?,
        program,
    })
}

fn updated(change: &RowChange, table: &JobsTable, job: &JobInfo) -> Result<Vec<Event>, RuleError> {
    let mut events = Vec::new();

    if change.changed(&table.stage)? {
        events.push(job_event(
            EventKind::StageChanged,
            job,
            stage_item(change, table, job.id)?,
        ));
    }
    if let Some(column) = &table.first_modeled {
        if is_first_modeling(change, column)? {
            events.push(job_event(EventKind::JobFirstTimeModeled, job, id_item(job)));
        }
    }
    if any_changed(change, &table.address)? {
        events.push(job_event(EventKind::AddressChanged, job, id_item(job)));
    }
    if change.changed(&table.account)? {
        let item = ObjectWriter::new()
            .integer("id", job.id)
            .string("altId", job.alt_id.as_deref())
            .value(
                "accountIdFrom",
                &read(change, Side::Old, &table.account, Format::Integer)?,
            )
            .value(
                "accountIdTo",
                &read(change, Side::New, &table.account, Format::Integer)?,
            )
            .finish();
        events.push(job_event(EventKind::JobTransferred, job, item));
    }
    if change.changed(&table.company)? {
        events.push(company_transfer(change, table, job)?);
    }
    Ok(events)
}

/// Returns the `{id, altId}` item of several job events.
fn id_item(job: &JobInfo) -> JsonItem {
    ObjectWriter::new()
        .integer("id", job.id)
        .string("altId", job.alt_id.as_deref())
        .finish()
}

fn stage_item(change: &RowChange, table: &JobsTable, job_id: i64) -> Result<JsonItem, RuleError> {
    let stage = &table.stage;
    let changed_at = &table.stage_changed_at;
    Ok(ObjectWriter::new()
        .integer("jobId", job_id)
        .value(
            "previousStage",
            &read(change, Side::Old, stage, Format::Integer)?,
        )
        .value(
            "newStage",
            &read(change, Side::New, stage, Format::Integer)?,
        )
        .value(
            "previousStageTimestamp",
            &read(change, Side::Old, changed_at, Format::Timestamp)?,
        )
        .value(
            "newStageTimestamp",
            &read(change, Side::New, changed_at, Format::Timestamp)?,
        )
        .finish())
}

/// A "first modeled" column may be a timestamp or a boolean: it counts as set
/// when it is neither NULL nor false.
fn is_first_modeling(change: &RowChange, column: &str) -> Result<bool, RuleError> {
    let was_set = change
        .old_value(column)?
        .is_some_and(values::is_truthy_flag);
    let is_set = change
        .new_value(column)?
        .is_some_and(values::is_truthy_flag);
    Ok(!was_set && is_set)
}

fn any_changed(change: &RowChange, columns: &[String]) -> Result<bool, RuleError> {
    for column in columns {
        if change.changed(column)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A company transfer goes to the old company and to the new one.
fn company_transfer(
    change: &RowChange,
    table: &JobsTable,
    job: &JobInfo,
) -> Result<Event, RuleError> {
    let from = read_optional_id(change, Side::Old, &table.company)?;
    let to = read_optional_id(change, Side::New, &table.company)?;
    let mut item = ObjectWriter::new();
    item.integer("id", job.id)
        .string("altId", job.alt_id.as_deref())
        .value("companyIdFrom", &from.into())
        .value("companyIdTo", &to.into());
    let mut owners: Vec<Owner> = from.into_iter().chain(to).map(Owner::Company).collect();
    owners.extend(job.program.map(Owner::Program));
    Ok(Event {
        kind: EventKind::JobTransferredToOtherCompany,
        audience: Audience::Owners(owners),
        job_ids: vec![job.id],
        item: item.finish(),
    })
}

fn job_event(kind: EventKind, job: &JobInfo, item: JsonItem) -> Event {
    Event {
        kind,
        audience: Audience::Owners(job.owners()),
        job_ids: vec![job.id],
        item,
    }
}

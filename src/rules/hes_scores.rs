//! Rule of the hes_scores table: a Home Energy Score label is recorded, by an
//! INSERT with a label number or an UPDATE that sets it.

use super::column::{read, read_id, Format, Side};
use super::event::{Audience, Event, JobInfo};
use super::RuleError;
use crate::changes::{ChangeKind, RowChange};
use crate::config::HesScoresTable;
use crate::payload::{EventKind, ObjectWriter};

/// Returns the job id of a hes_scores row, to look up its job before [`events`].
pub fn job_id(change: &RowChange, table: &HesScoresTable) -> Result<i64, RuleError> {
    let side = if change.kind == ChangeKind::Delete {
        Side::Old
    } else {
        Side::New
    };
    read_id(change, side, &table.job_id)
}

/// Tells whether the change records a label: an INSERT with a label number,
/// or an UPDATE from no label number to one.
pub fn obtains_score(change: &RowChange, table: &HesScoresTable) -> Result<bool, RuleError> {
    match change.kind {
        ChangeKind::Insert => Ok(change.new_value(&table.label_number)?.is_some()),
        ChangeKind::Update => Ok(change.old_value(&table.label_number)?.is_none()
            && change.new_value(&table.label_number)?.is_some()),
        ChangeKind::Delete => Ok(false),
    }
}

/// Returns the HES_SCORE_OBTAINED event of the change, if it records a label.
pub fn events(
    change: &RowChange,
    table: &HesScoresTable,
    job: &JobInfo,
) -> Result<Vec<Event>, RuleError> {
    if !obtains_score(change, table)? {
        return Ok(Vec::new());
    }
    let field = |column: &str, format| read(change, Side::New, column, format);
    let item = ObjectWriter::new()
        .integer("jobId", job.id)
        .string("altId", job.alt_id.as_deref())
        .value(
            "hesLabelNumber",
            &field(&table.label_number, Format::Integer)?,
        )
        .value("hesType", &field(&table.hes_type, Format::String)?)
        .value("baseScore", &field(&table.base_score, Format::Number)?)
        .value(
            "hesAssessmentDate",
            &field(&table.assessment_date, Format::Date)?,
        )
        .finish();
    Ok(vec![Event {
        kind: EventKind::HesScoreObtained,
        audience: Audience::Owners(job.owners()),
        job_ids: vec![job.id],
        item,
    }])
}

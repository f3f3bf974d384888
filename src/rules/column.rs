//! Reading one mapped column of a row change as the JSON type its payload needs.

use serde_json::Value;

use super::values::{self, ValueError};
use super::RuleError;
use crate::changes::RowChange;

/// Which row of an UPDATE to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Old,
    New,
}

/// The JSON type of a payload field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Integer,
    Number,
    String,
    Timestamp,
    Date,
}

/// Reads `column` of `side` as `format`; SQL NULL becomes JSON null.
pub fn read(
    change: &RowChange,
    side: Side,
    column: &str,
    format: Format,
) -> Result<Value, RuleError> {
    let text = match side {
        Side::Old => change.old_value(column)?,
        Side::New => change.new_value(column)?,
    };
    let Some(text) = text else {
        return Ok(Value::Null);
    };
    convert(text, format).map_err(|source| RuleError::Value {
        table: change.relation.name.to_string(),
        column: column.to_owned(),
        source,
    })
}

/// Reads `column` of `side` as a required integer, such as a job id.
pub fn read_id(change: &RowChange, side: Side, column: &str) -> Result<i64, RuleError> {
    let value = read(change, side, column, Format::Integer)?;
    value.as_i64().ok_or_else(|| RuleError::NullId {
        table: change.relation.name.to_string(),
        column: column.to_owned(),
    })
}

/// Reads an optional integer column; `None` for NULL.
pub fn read_optional_id(
    change: &RowChange,
    side: Side,
    column: &str,
) -> Result<Option<i64>, RuleError> {
    Ok(read(change, side, column, Format::Integer)?.as_i64())
}

fn convert(text: &str, format: Format) -> Result<Value, ValueError> {
    match format {
        Format::Integer => values::to_json_integer(text),
        Format::Number => values::to_json_number(text),
        Format::String => Ok(values::to_json_string(text)),
        Format::Timestamp => values::to_json_timestamp(text),
        Format::Date => values::to_json_date(text),
    }
}

//! Row changes: an INSERT, UPDATE or DELETE with its old and new tuples, and
//! column access by name.
//!
//! An UPDATE's new tuple marks a TOASTed value that did not change as
//! "unchanged" (`'u'`) instead of sending it again. Such a value is the old
//! row's value: never NULL and never a change. The watched tables use
//! `REPLICA IDENTITY FULL`, so the old tuple carries it.

use std::sync::Arc;

use super::relations::Relation;
use crate::pgoutput::{ColumnValue, OldTuple, TupleData};

/// What happened to the row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    Insert,
    Update,
    Delete,
}

/// A column that a rule needs but the change cannot supply.
#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("column `{column}` not found in table `{table}`: it was dropped or renamed; fix the mapping in config.toml")]
    MissingColumn { table: String, column: String },
    #[error("table `{table}` sent no old row for column `{column}`: run ALTER TABLE {table} REPLICA IDENTITY FULL")]
    MissingOldRow { table: String, column: String },
    #[error("column `{column}` of table `{table}` is not valid UTF-8")]
    InvalidUtf8 { table: String, column: String },
}

/// One row change of a relation.
#[derive(Debug)]
pub struct RowChange {
    pub relation: Arc<Relation>,
    pub kind: ChangeKind,
    old: Option<TupleData>,
    /// Whether `old` is the whole row (`'O'`) and not only the key columns (`'K'`).
    old_is_full: bool,
    new: Option<TupleData>,
}

impl RowChange {
    pub fn insert(relation: Arc<Relation>, new: TupleData) -> RowChange {
        RowChange {
            relation,
            kind: ChangeKind::Insert,
            old: None,
            old_is_full: false,
            new: Some(new),
        }
    }

    pub fn update(relation: Arc<Relation>, old: Option<OldTuple>, new: TupleData) -> RowChange {
        let old_is_full = matches!(old, Some(OldTuple::Full(_)));
        let old = old.map(old_tuple_data);
        RowChange {
            relation,
            kind: ChangeKind::Update,
            old,
            old_is_full,
            new: Some(new),
        }
    }

    pub fn delete(relation: Arc<Relation>, old: OldTuple) -> RowChange {
        let old_is_full = matches!(old, OldTuple::Full(_));
        let old = Some(old_tuple_data(old));
        RowChange {
            relation,
            kind: ChangeKind::Delete,
            old,
            old_is_full,
            new: None,
        }
    }

    /// Returns the new row's value of `column` (`None` for NULL); an unchanged
    /// TOAST value is taken from the old row.
    pub fn new_value(&self, column: &str) -> Result<Option<&str>, RowError> {
        let position = self.position(column)?;
        match self.new.as_ref().and_then(|tuple| tuple.0.get(position)) {
            Some(ColumnValue::UnchangedToast) | None => self.old_value(column),
            Some(value) => self.text(column, value),
        }
    }

    /// Returns the old row's value of `column` (`None` for NULL). Without
    /// `REPLICA IDENTITY FULL` only key columns have an old value.
    pub fn old_value(&self, column: &str) -> Result<Option<&str>, RowError> {
        let position = self.position(column)?;
        let known = self.old_is_full || self.relation.is_key_column(position);
        match self
            .old
            .as_ref()
            .filter(|_| known)
            .and_then(|tuple| tuple.0.get(position))
        {
            Some(ColumnValue::UnchangedToast) | None => Err(RowError::MissingOldRow {
                table: self.relation.name.to_string(),
                column: column.to_owned(),
            }),
            Some(value) => self.text(column, value),
        }
    }

    /// Tells whether an UPDATE changed `column`; an unchanged TOAST value is no change.
    pub fn changed(&self, column: &str) -> Result<bool, RowError> {
        let position = self.position(column)?;
        if let Some(ColumnValue::UnchangedToast) = self.new.as_ref().and_then(|t| t.0.get(position))
        {
            return Ok(false);
        }
        Ok(self.old_value(column)? != self.new_value(column)?)
    }

    fn position(&self, column: &str) -> Result<usize, RowError> {
        self.relation
            .column_position(column)
            .ok_or_else(|| RowError::MissingColumn {
                table: self.relation.name.to_string(),
                column: column.to_owned(),
            })
    }

    fn text<'a>(&self, column: &str, value: &'a ColumnValue) -> Result<Option<&'a str>, RowError> {
        match value {
            ColumnValue::Null => Ok(None),
            ColumnValue::Text(bytes) => {
                std::str::from_utf8(bytes)
                    .map(Some)
                    .map_err(|_| RowError::InvalidUtf8 {
                        table: self.relation.name.to_string(),
                        column: column.to_owned(),
                    })
            }
            ColumnValue::UnchangedToast => Err(RowError::MissingOldRow {
                table: self.relation.name.to_string(),
                column: column.to_owned(),
            }),
        }
    }
}

fn old_tuple_data(old: OldTuple) -> TupleData {
    match old {
        OldTuple::Key(data) | OldTuple::Full(data) => data,
    }
}

//! Row values of Insert, Update and Delete messages: TupleData and its column values.
//!
//! A TupleData is an Int16 column count followed by one entry per column of the
//! relation, in the relation's column order. Each entry starts with a kind byte:
//! `n` (NULL), `u` (an unchanged TOASTed value that the server did not send) or `t`
//! (an Int32 length and the value in text format). Kind `b` (binary format) only
//! appears when replication starts with `binary 'true'`, which walhook does not do.

use std::str::Utf8Error;

use bytes::Bytes;

use super::reader::{Reader, Width};
use super::DecodeError;

/// The column values of one row, in the column order of its Relation message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TupleData(pub Vec<ColumnValue>);

/// One column value of a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ColumnValue {
    /// SQL NULL.
    Null,
    /// A TOASTed value that the change left as it was. The server omits it, so the
    /// value is the one in the old row, never NULL.
    UnchangedToast,
    /// The value in PostgreSQL's text output format, a slice of the message bytes.
    Text(Bytes),
}

/// The old row of an Update or Delete message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OldTuple {
    /// Kind `K`: only the replica identity key columns are set, the others are NULL.
    Key(TupleData),
    /// Kind `O`: the whole old row, sent for tables with `REPLICA IDENTITY FULL`.
    Full(TupleData),
}

impl ColumnValue {
    /// Returns the text of a `Text` value, or `None` for `Null` and `UnchangedToast`.
    ///
    /// Fails when the bytes are not UTF-8. The server converts values to the session's
    /// `client_encoding`, so this happens when that is not UTF8 or the database is SQL_ASCII.
    pub fn as_str(&self) -> Option<Result<&str, Utf8Error>> {
        match self {
            ColumnValue::Text(bytes) => Some(std::str::from_utf8(bytes)),
            ColumnValue::Null | ColumnValue::UnchangedToast => None,
        }
    }

    /// Returns whether the value is SQL NULL. An unchanged TOAST value is not NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, ColumnValue::Null)
    }
}

impl OldTuple {
    /// Returns the old row's values, whichever kind it is.
    pub fn tuple(&self) -> &TupleData {
        match self {
            OldTuple::Key(tuple) | OldTuple::Full(tuple) => tuple,
        }
    }
}

/// Decodes a TupleData after its kind byte.
fn decode_tuple(reader: &mut Reader<'_>) -> Result<TupleData, DecodeError> {
    let count = reader.count("column count", Width::Int16)?;
    let mut values = Vec::with_capacity(count);
    for column in 0..count {
        values.push(decode_column_value(reader, column)?);
    }
    Ok(TupleData(values))
}

fn decode_column_value(reader: &mut Reader<'_>, column: usize) -> Result<ColumnValue, DecodeError> {
    match reader.u8("column value kind")? {
        b'n' => Ok(ColumnValue::Null),
        b'u' => Ok(ColumnValue::UnchangedToast),
        b't' => {
            let len = reader.count("column value length", Width::Int32)?;
            reader.bytes(len, "column value").map(ColumnValue::Text)
        }
        b'b' => Err(DecodeError::BinaryValue { column }),
        value => Err(DecodeError::UnexpectedByte {
            field: "column value kind",
            value,
            expected: "`n`, `u` or `t`",
        }),
    }
}

/// Decodes an old row, starting at its kind byte `K` or `O`.
pub(crate) fn decode_old_tuple(reader: &mut Reader<'_>, kind: u8) -> Result<OldTuple, DecodeError> {
    match kind {
        b'K' => decode_tuple(reader).map(OldTuple::Key),
        b'O' => decode_tuple(reader).map(OldTuple::Full),
        value => Err(DecodeError::UnexpectedByte {
            field: "old tuple kind",
            value,
            expected: "`K` or `O`",
        }),
    }
}

/// Decodes a new row, starting at its kind byte, which must be `N`.
pub(crate) fn decode_new_tuple(
    reader: &mut Reader<'_>,
    kind: u8,
) -> Result<TupleData, DecodeError> {
    if kind != b'N' {
        return Err(DecodeError::UnexpectedByte {
            field: "new tuple kind",
            value: kind,
            expected: "`N`",
        });
    }
    decode_tuple(reader)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_new(bytes: &'static [u8]) -> Result<TupleData, DecodeError> {
        let data = Bytes::from_static(bytes);
        let mut reader = Reader::new(&data);
        let kind = reader.u8("kind")?;
        let tuple = decode_new_tuple(&mut reader, kind)?;
        reader.finish(b'N')?;
        Ok(tuple)
    }

    #[test]
    fn tuple_with_every_value_kind() {
        let tuple = decode_new(b"N\0\x04nut\0\0\0\x02abt\0\0\0\0").expect("valid tuple");

        let expected = vec![
            ColumnValue::Null,
            ColumnValue::UnchangedToast,
            ColumnValue::Text(Bytes::from_static(b"ab")),
            ColumnValue::Text(Bytes::new()),
        ];
        assert_eq!(tuple.0, expected, "n, u, t and an empty t");
    }

    #[test]
    fn tuple_without_columns() {
        let tuple = decode_new(b"N\0\0").expect("valid tuple");

        assert!(
            tuple.0.is_empty(),
            "a table without columns sends no values"
        );
    }

    #[test]
    fn tuple_rejects_binary_value() {
        let result = decode_new(b"N\0\x02nb\0\0\0\x04\0\0\0\x01");

        assert_eq!(result, Err(DecodeError::BinaryValue { column: 1 }));
    }

    #[test]
    fn tuple_rejects_short_text_value() {
        let result = decode_new(b"N\0\x01t\0\0\0\x05abc");

        let expected = DecodeError::Truncated {
            field: "column value",
            offset: 8,
            needed: 5,
            remaining: 3,
        };
        assert_eq!(result, Err(expected));
    }

    #[test]
    fn tuple_rejects_missing_columns() {
        let result = decode_new(b"N\0\x02n");

        assert!(
            matches!(
                result,
                Err(DecodeError::Truncated {
                    field: "column value kind",
                    ..
                })
            ),
            "the count promises a second column: {result:?}"
        );
    }

    #[test]
    fn old_tuple_kinds() {
        let data = Bytes::from_static(b"\0\x01n");

        let key = decode_old_tuple(&mut Reader::new(&data), b'K').expect("key tuple");
        let full = decode_old_tuple(&mut Reader::new(&data), b'O').expect("full tuple");
        let other = decode_old_tuple(&mut Reader::new(&data), b'N');

        let values = TupleData(vec![ColumnValue::Null]);
        assert_eq!(key, OldTuple::Key(values.clone()));
        assert_eq!(full, OldTuple::Full(values.clone()));
        assert_eq!(
            full.tuple(),
            &values,
            "tuple() returns the values of either kind"
        );
        assert!(
            matches!(
                other,
                Err(DecodeError::UnexpectedByte {
                    field: "old tuple kind",
                    ..
                })
            ),
            "`N` is not an old tuple: {other:?}"
        );
    }
}

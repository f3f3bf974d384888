//! Conversion of column values, which pgoutput sends in PostgreSQL's text output
//! format, to the JSON types that the webhook payloads document.
//!
//! The server prints values with the replication session's settings, and walhook
//! starts that session with `DateStyle = ISO` and `TimeZone = UTC`, so timestamps
//! arrive as `2021-05-20 05:15:23.457123+00`. The parser still accepts any UTC offset
//! that PostgreSQL prints, including the seconds of historical local mean time
//! (`1900-01-01 05:21:10+05:21:10` in `Asia/Kolkata`), so another TimeZone gives the
//! same instants. Payloads carry timestamps as JavaScript's `Date.toISOString()`
//! prints them: UTC, with exactly three fraction digits (`2021-05-20T05:15:23.457Z`).

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use serde_json::{Number, Value};

/// Error for a column value that has no JSON form of the requested type.
///
/// Every variant is definite: the same text fails the same way on every retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("invalid number `{text}`: expected PostgreSQL numeric text such as `42` or `-3.25`")]
    InvalidNumber { text: String },

    #[error(
        "number `{text}` has no JSON form: JSON numbers must be finite, so NaN and infinity \
         cannot be sent"
    )]
    NonFiniteNumber { text: String },

    #[error(
        "invalid timestamp `{text}`: expected ISO text such as `2021-05-20 05:15:23.457123+00`, \
         which PostgreSQL prints with `DateStyle = ISO`"
    )]
    InvalidTimestamp { text: String },

    #[error(
        "timestamp `{text}` cannot be sent: payloads carry only dates from year 1 to 9999, \
         so `infinity`, BC dates and later years are rejected"
    )]
    TimestampOutOfRange { text: String },
}

/// Converts the text of an integer column (`int2`, `int4`, `int8`, or `numeric`
/// holding whole numbers) to a JSON number.
///
/// A fraction of zeros is dropped, so `6.0` gives `6`. A value with a non-zero
/// fraction, or a whole number beyond the `i64` range, is kept as a JSON float
/// (`6.5` gives `6.5`) rather than rounded, as [`to_json_number`] converts it.
pub fn to_json_integer(text: &str) -> Result<Value, ValueError> {
    let whole = match text.split_once('.') {
        Some((whole, fraction)) if is_digits(fraction) && fraction.bytes().all(|b| b == b'0') => {
            whole
        }
        Some(_) => return to_json_number(text),
        None => text,
    };

    match whole.parse::<i64>() {
        Ok(integer) => Ok(Value::from(integer)),
        Err(_) => to_json_number(text),
    }
}

/// Converts the text of a `numeric`, `float4` or `float8` column to a JSON number:
/// an integer when the text is a whole number that fits `i64`, a float otherwise.
///
/// Fails on `NaN` and `Infinity`, which JSON cannot represent, and on numbers beyond
/// the `f64` range. An `f64` keeps 15 to 17 significant digits, so a `numeric` with
/// more digits loses precision.
pub fn to_json_number(text: &str) -> Result<Value, ValueError> {
    if let Ok(integer) = text.parse::<i64>() {
        return Ok(Value::from(integer));
    }

    let non_finite = ["NaN", "Infinity", "+Infinity", "-Infinity"];
    if non_finite
        .iter()
        .any(|name| text.eq_ignore_ascii_case(name))
    {
        return Err(ValueError::NonFiniteNumber {
            text: text.to_owned(),
        });
    }

    if !is_number_text(text) {
        return Err(ValueError::InvalidNumber {
            text: text.to_owned(),
        });
    }
    let float = text.parse::<f64>().map_err(|_| ValueError::InvalidNumber {
        text: text.to_owned(),
    })?;

    Number::from_f64(float)
        .filter(|_| float.is_finite())
        .map(Value::Number)
        .ok_or_else(|| ValueError::NonFiniteNumber {
            text: text.to_owned(),
        })
}

/// Converts the text of any column to a JSON string, unchanged.
pub fn to_json_string(text: &str) -> Value {
    Value::String(text.to_owned())
}

/// Converts the text of a `timestamptz`, `timestamp` or `date` column to a JSON
/// string such as `2021-05-20T05:15:23.457Z`.
///
/// The result is in UTC with exactly three fraction digits, truncated from
/// PostgreSQL's microseconds. A `timestamp` without a zone is taken as UTC, and a
/// date alone as midnight UTC. The date and time may be separated by a space or `T`.
/// Fails on text that is not ISO, on `infinity` and `-infinity`, and on instants
/// outside the years 1 to 9999.
pub fn to_json_timestamp(text: &str) -> Result<Value, ValueError> {
    let utc = parse_timestamp(text)?;
    // `parse_timestamp` keeps the year within 1 to 9999, so four digits fit.
    let formatted = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        utc.year(),
        utc.month(),
        utc.day(),
        utc.hour(),
        utc.minute(),
        utc.second(),
        utc.nanosecond() / 1_000_000
    );
    Ok(Value::String(formatted))
}

/// Converts the text of a `date` column, such as `2021-06-02`, to the JSON string
/// `2021-06-02T00:00:00.000Z`.
///
/// Timestamp text is accepted too and converted as [`to_json_timestamp`] does, so a
/// column mapped as a date may be a `timestamptz`.
pub fn to_json_date(text: &str) -> Result<Value, ValueError> {
    to_json_timestamp(text)
}

/// Returns whether a non-NULL "first modeled" value counts as set.
///
/// The column may be a `boolean`, which PostgreSQL prints as `t` or `f`, or a
/// timestamp. Only `f` and `false` (in any case) count as unset, so any timestamp
/// counts as set. The caller treats NULL as unset before calling this.
pub fn is_truthy_flag(text: &str) -> bool {
    !(text.eq_ignore_ascii_case("f") || text.eq_ignore_ascii_case("false"))
}

fn is_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// Checks the shape of decimal or exponent notation, which `f64::from_str` alone
/// does not, because it also accepts `inf` and `nan`.
fn is_number_text(text: &str) -> bool {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, Some(exponent)),
        None => (unsigned, None),
    };

    let mantissa_ok = match mantissa.split_once('.') {
        Some(("", fraction)) => is_digits(fraction),
        Some((whole, "")) => is_digits(whole),
        Some((whole, fraction)) => is_digits(whole) && is_digits(fraction),
        None => is_digits(mantissa),
    };
    let exponent_ok = exponent
        .is_none_or(|exponent| is_digits(exponent.strip_prefix(['-', '+']).unwrap_or(exponent)));

    mantissa_ok && exponent_ok
}

/// Parses ISO timestamp or date text and returns the instant in UTC.
fn parse_timestamp(text: &str) -> Result<NaiveDateTime, ValueError> {
    let invalid = || ValueError::InvalidTimestamp {
        text: text.to_owned(),
    };
    let out_of_range = || ValueError::TimestampOutOfRange {
        text: text.to_owned(),
    };

    let is_bc = text
        .len()
        .checked_sub(3)
        .and_then(|start| text.get(start..))
        .is_some_and(|end| end.eq_ignore_ascii_case(" bc"));
    if text.eq_ignore_ascii_case("infinity") || text.eq_ignore_ascii_case("-infinity") || is_bc {
        return Err(out_of_range());
    }

    // The date ends at the first space or `T`, and the offset starts at the first
    // sign or `Z` after the time.
    let (date_text, rest) = match text.split_once([' ', 'T']) {
        Some((date_text, rest)) => (date_text, Some(rest)),
        None => (text, None),
    };
    let year_text = date_text.split_once('-').map_or("", |(year, _)| year);
    if year_text.len() > 4 && is_digits(year_text) {
        return Err(out_of_range());
    }
    let date = parse_date(date_text).ok_or_else(invalid)?;

    let Some(rest) = rest else {
        return Ok(date.and_time(NaiveTime::MIN));
    };
    let offset_start = rest.find(['+', '-', 'Z']).unwrap_or(rest.len());
    let (time_text, offset_text) = rest.split_at(offset_start);
    let time = parse_time(time_text).ok_or_else(invalid)?;
    let offset_seconds = parse_offset(offset_text).ok_or_else(invalid)?;

    let utc = date
        .and_time(time)
        .checked_sub_signed(Duration::seconds(offset_seconds))
        .ok_or_else(out_of_range)?;
    if !(1..=9999).contains(&utc.year()) {
        return Err(out_of_range());
    }
    Ok(utc)
}

/// Parses `YYYY-MM-DD` with a four-digit year.
fn parse_date(text: &str) -> Option<NaiveDate> {
    let mut parts = text.split('-');
    let year = parts.next()?;
    let month = parse_two_digits(parts.next()?)?;
    let day = parse_two_digits(parts.next()?)?;
    if parts.next().is_some() || year.len() != 4 || !is_digits(year) {
        return None;
    }

    NaiveDate::from_ymd_opt(year.parse().ok()?, month, day)
}

/// Parses `HH:MM:SS` with an optional fraction of up to nine digits.
fn parse_time(text: &str) -> Option<NaiveTime> {
    let (clock, fraction) = match text.split_once('.') {
        Some((clock, fraction)) => (clock, Some(fraction)),
        None => (text, None),
    };

    let mut parts = clock.split(':');
    let hour = parse_two_digits(parts.next()?)?;
    let minute = parse_two_digits(parts.next()?)?;
    let second = parse_two_digits(parts.next()?)?;
    if parts.next().is_some() {
        return None;
    }

    let nanos = match fraction {
        Some(fraction) if is_digits(fraction) && fraction.len() <= 9 => {
            let padded = format!("{fraction:0<9}");
            padded.parse().ok()?
        }
        Some(_) => return None,
        None => 0,
    };

    // `from_hms_nano_opt` reads nanoseconds past one second as a leap second, which
    // PostgreSQL never prints, and the checks above keep `nanos` below that.
    NaiveTime::from_hms_nano_opt(hour, minute, second, nanos)
}

/// Parses a UTC offset (`+00`, `-03`, `+05:30`, `-03:06:28`, `Z` or nothing) into
/// seconds east of UTC.
fn parse_offset(text: &str) -> Option<i64> {
    if text.is_empty() || text == "Z" {
        return Some(0);
    }

    let (sign, rest) = match text.split_at_checked(1)? {
        ("+", rest) => (1, rest),
        ("-", rest) => (-1, rest),
        _ => return None,
    };
    let mut parts = rest.split(':');
    let hours = parse_two_digits(parts.next()?)?;
    let minutes = parts.next().map_or(Some(0), parse_two_digits)?;
    let seconds = parts.next().map_or(Some(0), parse_two_digits)?;
    if parts.next().is_some() || hours > 23 || minutes > 59 || seconds > 59 {
        return None;
    }

    Some(sign * i64::from(hours * 3600 + minutes * 60 + seconds))
}

fn parse_two_digits(text: &str) -> Option<u32> {
    if text.len() != 2 || !is_digits(text) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn integer_conversions() {
        let cases = [
            ("0", json!(0)),
            ("48604", json!(48604)),
            ("-5", json!(-5)),
            ("9223372036854775807", json!(i64::MAX)),
            ("-9223372036854775808", json!(i64::MIN)),
            ("6.0", json!(6)),
            ("6.000", json!(6)),
            ("-0.00", json!(0)),
            ("6.5", json!(6.5)),
            ("9223372036854775808", json!(9_223_372_036_854_775_808.0)),
        ];
        for (text, expected) in cases {
            assert_eq!(to_json_integer(text), Ok(expected), "integer text `{text}`");
        }
    }

    #[test]
    fn integer_keeps_type_of_whole_numbers() {
        let value = to_json_integer("6.0").expect("valid integer");

        assert!(
            value.is_i64(),
            "`6.0` becomes the JSON integer 6, got {value}"
        );
        assert_eq!(value.to_string(), "6");
    }

    #[test]
    fn integer_rejects_invalid_text() {
        for text in ["", "abc", "1,000", " 1", "1 ", "0x10", "1.2.3", "6.0a"] {
            let expected = ValueError::InvalidNumber {
                text: text.to_owned(),
            };
            assert_eq!(
                to_json_integer(text),
                Err(expected),
                "integer text `{text}`"
            );
        }
    }

    #[test]
    fn number_conversions() {
        let cases = [
            ("42", json!(42)),
            ("-7", json!(-7)),
            ("-3.25", json!(-3.25)),
            ("6.0", json!(6.0)),
            ("0.1", json!(0.1)),
            (".5", json!(0.5)),
            ("1e+100", json!(1e100)),
            ("1.5E-7", json!(1.5e-7)),
            ("1.5e-07", json!(1.5e-7)),
            ("1.2345678901234567e+19", json!(1.234_567_890_123_456_7e19)),
            ("+2", json!(2)),
            ("12345678901234567890", json!(12_345_678_901_234_567_890.0)),
        ];
        for (text, expected) in cases {
            assert_eq!(to_json_number(text), Ok(expected), "number text `{text}`");
        }
    }

    #[test]
    fn number_keeps_fraction_of_floats() {
        let value = to_json_number("6.0").expect("valid number");

        assert!(value.is_f64(), "`6.0` stays a JSON float, got {value}");
        assert_eq!(value.to_string(), "6.0");
    }

    #[test]
    fn number_rejects_non_finite() {
        for text in ["NaN", "nan", "Infinity", "-Infinity", "1e400", "-1e400"] {
            let expected = ValueError::NonFiniteNumber {
                text: text.to_owned(),
            };
            assert_eq!(to_json_number(text), Err(expected), "number text `{text}`");
        }
    }

    #[test]
    fn number_rejects_invalid_text() {
        for text in [
            "", "abc", "inf", "--1", "1.2.3", "1e", "e5", ".", "1_000", "0x10",
        ] {
            let expected = ValueError::InvalidNumber {
                text: text.to_owned(),
            };
            assert_eq!(to_json_number(text), Err(expected), "number text `{text}`");
        }
    }

    #[test]
    fn string_is_unchanged() {
        assert_eq!(to_json_string("Chat."), json!("Chat."));
        assert_eq!(to_json_string(""), json!(""));
        assert_eq!(to_json_string("Zoë \"quoted\""), json!("Zoë \"quoted\""));
    }

    #[test]
    fn timestamp_conversions() {
        let cases = [
            ("2021-05-20 05:15:23.457123+00", "2021-05-20T05:15:23.457Z"),
            ("2021-05-20 05:15:23.457999+00", "2021-05-20T05:15:23.457Z"),
            ("2021-05-20 05:15:19+00", "2021-05-20T05:15:19.000Z"),
            ("2021-05-20 05:15:23.4+00", "2021-05-20T05:15:23.400Z"),
            ("2021-05-20 10:45:23.457+05:30", "2021-05-20T05:15:23.457Z"),
            ("2021-05-20 02:15:23-03", "2021-05-20T05:15:23.000Z"),
            ("2021-05-20 02:15:23.457123-03", "2021-05-20T05:15:23.457Z"),
            // PostgreSQL 15 output in Asia/Kolkata, America/Sao_Paulo and Europe/Amsterdam.
            (
                "1900-01-01 05:21:10.123456+05:21:10",
                "1900-01-01T00:00:00.123Z",
            ),
            ("1899-12-31 20:53:32-03:06:28", "1900-01-01T00:00:00.000Z"),
            ("1930-01-01 00:19:32+00:19:32", "1930-01-01T00:00:00.000Z"),
            ("2021-05-20 05:15:23.457123", "2021-05-20T05:15:23.457Z"),
            ("2021-05-20T05:15:23.457123+00", "2021-05-20T05:15:23.457Z"),
            ("2021-05-20T05:15:23Z", "2021-05-20T05:15:23.000Z"),
            ("2021-06-02", "2021-06-02T00:00:00.000Z"),
            ("2021-12-31 23:30:00-01", "2022-01-01T00:30:00.000Z"),
            ("2021-01-01 00:00:00.5+01", "2020-12-31T23:00:00.500Z"),
            ("2024-02-29 12:00:00+00", "2024-02-29T12:00:00.000Z"),
            ("0001-01-01 00:00:00+00", "0001-01-01T00:00:00.000Z"),
            ("9999-12-31 23:59:59.999999+00", "9999-12-31T23:59:59.999Z"),
        ];
        for (text, expected) in cases {
            assert_eq!(
                to_json_timestamp(text),
                Ok(json!(expected)),
                "timestamp text `{text}`"
            );
        }
    }

    #[test]
    fn timestamp_rejects_out_of_range() {
        let texts = [
            "infinity",
            "-infinity",
            "0044-03-15 BC",
            "0044-03-15 12:00:00+00 BC",
            "0044-03-15 17:53:28+05:53:28 BC",
            "0001-01-01 00:30:00+01",
            "9999-12-31 23:30:00-01",
            "10000-01-01 00:00:00+00",
            "294276-12-31",
        ];
        for text in texts {
            let expected = ValueError::TimestampOutOfRange {
                text: text.to_owned(),
            };
            assert_eq!(
                to_json_timestamp(text),
                Err(expected),
                "timestamp text `{text}`"
            );
        }
    }

    #[test]
    fn timestamp_rejects_invalid_text() {
        let texts = [
            "",
            "yesterday",
            "20210520",
            "2021-5-20",
            "21-05-20",
            "2021-02-30",
            "2021-05-20 ",
            "2021-05-20 05:15",
            "2021-05-20 25:00:00+00",
            "2021-05-20 05:60:00+00",
            "2021-05-20 05:15:60+00",
            "2021-05-20 05:15:23.+00",
            "2021-05-20 05:15:23.1234567890+00",
            "2021-05-20 05:15:23+0530",
            "2021-05-20 05:15:23 +00",
            "2021-05-20 05:15:23+24",
            "2021-05-20 05:15:23+05:60",
            "2021-05-20 05:15:23+",
            "2021-05-20 05:15:23 UTC",
            "May 20 05:15:23 2021",
        ];
        for text in texts {
            let expected = ValueError::InvalidTimestamp {
                text: text.to_owned(),
            };
            assert_eq!(
                to_json_timestamp(text),
                Err(expected),
                "timestamp text `{text}`"
            );
        }
    }

    #[test]
    fn date_conversions() {
        let cases = [
            ("2021-06-02", "2021-06-02T00:00:00.000Z"),
            ("0001-01-01", "0001-01-01T00:00:00.000Z"),
            ("2021-06-02 07:01:51+00", "2021-06-02T07:01:51.000Z"),
            ("2021-06-02 07:01:51.999+02", "2021-06-02T05:01:51.999Z"),
        ];
        for (text, expected) in cases {
            assert_eq!(
                to_json_date(text),
                Ok(json!(expected)),
                "date text `{text}`"
            );
        }
    }

    #[test]
    fn date_rejects_bc_and_invalid() {
        let bc = ValueError::TimestampOutOfRange {
            text: "0044-03-15 BC".to_owned(),
        };
        assert_eq!(to_json_date("0044-03-15 BC"), Err(bc));

        let invalid = ValueError::InvalidTimestamp {
            text: "2021-13-01".to_owned(),
        };
        assert_eq!(to_json_date("2021-13-01"), Err(invalid));
    }

    #[test]
    fn truthy_flag_values() {
        let cases = [
            ("t", true),
            ("true", true),
            ("f", false),
            ("false", false),
            ("F", false),
            ("FALSE", false),
            ("2021-05-20 05:15:19+00", true),
            ("1970-01-01 00:00:00+00", true),
            ("", true),
        ];
        for (text, expected) in cases {
            assert_eq!(is_truthy_flag(text), expected, "flag text `{text}`");
        }
    }

    #[test]
    fn error_messages_name_the_value() {
        let cases = [
            (to_json_integer("1,000"), "`1,000`"),
            (to_json_number("NaN"), "`NaN`"),
            (to_json_timestamp("yesterday"), "`yesterday`"),
            (to_json_timestamp("infinity"), "`infinity`"),
        ];
        for (result, quoted) in cases {
            let error = result.expect_err("invalid value");
            let message = error.to_string();
            assert!(message.contains(quoted), "{message} names {quoted}");
            assert!(
                message.starts_with(char::is_lowercase),
                "{message} starts lowercase"
            );
        }
    }
}

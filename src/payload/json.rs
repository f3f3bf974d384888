//! Payload items as JSON text, written field by field.
//!
//! An item is rendered once, when its rule raises it, and webhook bodies are
//! assembled from the rendered items. So no `serde_json::Value` tree is built
//! or cloned per item. The output is the compact form that `serde_json`
//! prints, with keys in the order they are written.

use std::fmt::Write as _;

use serde_json::Value;

/// One item of a payload array as compact JSON text, such as
/// `{"id":48621,"altId":"234552"}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JsonItem(String);

impl JsonItem {
    /// Returns the JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses the item into a `serde_json::Value`, for tests and inspection.
    pub fn to_value(&self) -> Value {
        serde_json::from_str(&self.0).unwrap_or(Value::Null)
    }
}

/// Writes one JSON object, key after key.
pub struct ObjectWriter {
    text: String,
}

impl Default for ObjectWriter {
    fn default() -> Self {
        ObjectWriter::new()
    }
}

impl ObjectWriter {
    pub fn new() -> ObjectWriter {
        let mut text = String::with_capacity(128);
        text.push('{');
        ObjectWriter { text }
    }

    /// Adds `key` with a scalar value: null, a boolean, a number or a string.
    /// An array or object value is written as `serde_json` prints it.
    pub fn value(&mut self, key: &str, value: &Value) -> &mut ObjectWriter {
        self.key(key);
        match value {
            Value::Null => self.text.push_str("null"),
            Value::Bool(flag) => self.text.push_str(if *flag { "true" } else { "false" }),
            Value::Number(number) => write_display(&mut self.text, number),
            Value::String(text) => push_string(&mut self.text, text),
            Value::Array(_) | Value::Object(_) => write_display(&mut self.text, value),
        }
        self
    }

    /// Adds `key` with an integer value.
    pub fn integer(&mut self, key: &str, value: i64) -> &mut ObjectWriter {
        self.key(key);
        write_display(&mut self.text, value);
        self
    }

    /// Adds `key` with a string value, or null for `None`.
    pub fn string(&mut self, key: &str, value: Option<&str>) -> &mut ObjectWriter {
        self.key(key);
        match value {
            Some(text) => push_string(&mut self.text, text),
            None => self.text.push_str("null"),
        }
        self
    }

    /// Closes the object.
    pub fn finish(&mut self) -> JsonItem {
        let mut text = std::mem::take(&mut self.text);
        text.push('}');
        JsonItem(text)
    }

    /// Writes `key` as is: keys are names from the payload documentation,
    /// which need no escaping.
    fn key(&mut self, key: &str) {
        debug_assert!(
            !key.bytes()
                .any(|byte| byte == b'"' || byte == b'\\' || byte < 0x20),
            "key `{key}` needs escaping"
        );
        if self.text.len() > 1 {
            self.text.push(',');
        }
        self.text.push('"');
        self.text.push_str(key);
        self.text.push_str("\":");
    }
}

/// Returns `{"event":KIND,"payload":{ARRAY_KEY:[ITEM,…]}}` for the items.
pub fn envelope<'a>(
    event: &str,
    array_key: &str,
    items: impl IntoIterator<Item = &'a JsonItem>,
) -> String {
    let mut body = String::with_capacity(256);
    body.push_str("{\"event\":");
    push_string(&mut body, event);
    body.push_str(",\"payload\":{");
    push_string(&mut body, array_key);
    body.push_str(":[");
    for (index, item) in items.into_iter().enumerate() {
        if index > 0 {
            body.push(',');
        }
        body.push_str(item.as_str());
    }
    body.push_str("]}}");
    body
}

fn write_display(text: &mut String, value: impl std::fmt::Display) {
    write!(text, "{value}").expect("writing to a String cannot fail");
}

/// Appends `value` as a JSON string, escaped as `serde_json` escapes it:
/// `"`, `\` and the control characters below U+0020, with the short forms
/// `\b`, `\t`, `\n`, `\f` and `\r` where JSON has them.
fn push_string(text: &mut String, value: &str) {
    text.push('"');
    let mut start = 0;
    for (index, byte) in value.bytes().enumerate() {
        let short = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        // Every escaped byte is ASCII, so `index` is a character boundary.
        text.push_str(&value[start..index]);
        if short.is_empty() {
            write!(text, "\\u{byte:04x}").expect("writing to a String cannot fail");
        } else {
            text.push_str(short);
        }
        start = index + 1;
    }
    text.push_str(&value[start..]);
    text.push('"');
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn strings_escape_as_serde_json() {
        let mut samples: Vec<String> = (0u8..0x80).map(|b| char::from(b).to_string()).collect();
        samples.push("Zoë \"quoted\" \\ back\u{7f}\u{2028} 東京".to_owned());
        samples.push(String::new());
        for sample in samples {
            let mut written = String::new();
            push_string(&mut written, &sample);
            let expected = serde_json::to_string(&sample).expect("a string serializes");
            assert_eq!(written, expected, "string {sample:?}");
        }
    }

    #[test]
    fn object_matches_serde_json_output() {
        let item = ObjectWriter::new()
            .integer("id", -48621)
            .string("altId", Some("A-1"))
            .string("none", None)
            .value("score", &json!(6.5))
            .value("big", &json!(12_345_678_901_234_567_890.0))
            .value("flag", &json!(true))
            .finish();
        let expected = json!({
            "id": -48621,
            "altId": "A-1",
            "none": null,
            "score": 6.5,
            "big": 12_345_678_901_234_567_890.0,
            "flag": true,
        });
        assert_eq!(item.as_str(), expected.to_string());
    }

    #[test]
    fn empty_object() {
        assert_eq!(ObjectWriter::new().finish().as_str(), "{}");
    }

    #[test]
    fn envelope_joins_items() {
        let first = ObjectWriter::new().integer("id", 1).finish();
        let second = ObjectWriter::new().integer("id", 2).finish();
        let body = envelope("NEW_JOB_CREATED", "jobs", [&first, &second]);
        assert_eq!(
            body,
            r#"{"event":"NEW_JOB_CREATED","payload":{"jobs":[{"id":1},{"id":2}]}}"#
        );
    }
}

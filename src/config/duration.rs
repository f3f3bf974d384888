//! Durations written as strings such as `"15s"`, `"5m"` or `"1h 30m"`.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Parses a duration such as `"15s"`, `"5m"` or `"2h"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|err| {
        format!("invalid duration `{text}`: {err}; write a number and a unit, such as \"15s\" or \"5m\"")
    })
}

pub(super) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

pub(super) fn deserialize_list<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Duration>, D::Error> {
    let texts = Vec::<String>::deserialize(deserializer)?;
    texts
        .iter()
        .map(|text| parse_duration(text).map_err(serde::de::Error::custom))
        .collect()
}

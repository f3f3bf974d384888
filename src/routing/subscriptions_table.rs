//! The application's subscriptions table: loaded at start and followed live
//! through the publication, so a subscription committed before a job change
//! applies to that change.

use std::collections::HashSet;

use tokio_postgres::Client;

use super::{Owner, Subscription, SubscriptionKey, Subscriptions};
use crate::changes::{ChangeKind, RowChange};
use crate::config::{quote_ident, QualifiedName, Secret, SubscriptionsTable};
use crate::payload::EventKind;

/// A subscriptions row that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionRowError {
    #[error("subscription row has no `{column}`")]
    Missing { column: String },
    #[error("subscription `{id}`: column `{column}` value `{value}` is invalid: {reason}")]
    Invalid {
        id: String,
        column: String,
        value: String,
        reason: String,
    },
    #[error(transparent)]
    Row(#[from] crate::changes::RowError),
}

/// Loads every row of the subscriptions table into `subscriptions`, drops
/// application subscriptions whose row is gone, and returns how many were
/// loaded.
pub async fn load_all(
    client: &Client,
    table: &SubscriptionsTable,
    subscriptions: &Subscriptions,
) -> Result<usize, tokio_postgres::Error> {
    let columns = [
        &table.id,
        &table.company,
        &table.program,
        &table.url,
        &table.secret,
        &table.events,
        &table.enabled,
    ];
    let select: Vec<String> = columns
        .iter()
        .map(|c| format!("{}::text", quote_ident(c)))
        .collect();
    let sql = format!(
        "SELECT {} FROM {}",
        select.join(", "),
        QualifiedName::parse(&table.table).quoted()
    );
    let rows = client.query(&sql, &[]).await?;
    let mut loaded = 0;
    let mut seen = HashSet::new();
    for row in rows {
        let values: Vec<Option<String>> = (0..columns.len()).map(|i| row.get(i)).collect();
        let lookup = |column: &str| {
            columns
                .iter()
                .position(|c| c.as_str() == column)
                .and_then(|i| values[i].as_deref())
        };
        match parse(table, lookup) {
            Ok(subscription) => {
                seen.insert(subscription.key.clone());
                subscriptions.upsert(subscription);
                loaded += 1;
            }
            Err(err) => tracing::error!(error = %err, "subscription skipped"),
        }
    }
    subscriptions.retain(|key| matches!(key, SubscriptionKey::Endpoint(_)) || seen.contains(key));
    Ok(loaded)
}

/// Applies one change of the subscriptions table to `subscriptions`.
pub fn apply_change(
    change: &RowChange,
    table: &SubscriptionsTable,
    subscriptions: &Subscriptions,
) -> Result<(), SubscriptionRowError> {
    if change.kind == ChangeKind::Delete {
        let id = change
            .old_value(&table.id)?
            .ok_or_else(|| missing(&table.id))?;
        let id = parse_id(&table.id, id)?;
        subscriptions.remove(&SubscriptionKey::App(id));
        tracing::info!(subscription_id = id, "subscription removed");
        return Ok(());
    }
    let mut columns = Vec::new();
    for column in [
        &table.id,
        &table.company,
        &table.program,
        &table.url,
        &table.secret,
        &table.events,
        &table.enabled,
    ] {
        columns.push((column.as_str(), change.new_value(column)?));
    }
    let lookup = |name: &str| {
        columns
            .iter()
            .find(|(column, _)| *column == name)
            .and_then(|(_, value)| *value)
    };
    let subscription = parse(table, lookup)?;
    tracing::info!(subscription = %subscription.key, url = %subscription.url, enabled = subscription.enabled, "subscription updated");
    subscriptions.upsert(subscription);
    Ok(())
}

/// Builds a subscription from its row's text values.
fn parse<'a>(
    table: &SubscriptionsTable,
    value: impl Fn(&str) -> Option<&'a str>,
) -> Result<Subscription, SubscriptionRowError> {
    let id_text = value(&table.id).ok_or_else(|| missing(&table.id))?;
    let id = parse_id(&table.id, id_text)?;
    let invalid = |column: &str, value: &str, reason: &str| SubscriptionRowError::Invalid {
        id: id_text.to_owned(),
        column: column.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    let owner = match (value(&table.company), value(&table.program)) {
        (Some(company), _) => Owner::Company(parse_id(&table.company, company)?),
        (None, Some(program)) => Owner::Program(parse_id(&table.program, program)?),
        (None, None) => {
            return Err(invalid(
                &table.company,
                "NULL",
                "a subscription needs a company or a program",
            ))
        }
    };
    let url = value(&table.url)
        .ok_or_else(|| missing(&table.url))?
        .to_owned();
    let secret = value(&table.secret).ok_or_else(|| missing(&table.secret))?;
    let secrets = secret
        .split_whitespace()
        .map(|part| Secret::new(part.to_owned()))
        .collect();
    let events = value(&table.events)
        .map(parse_event_array)
        .transpose()
        .map_err(|name| invalid(&table.events, &name, "unknown event name"))?;
    let enabled = value(&table.enabled).is_some_and(|text| matches!(text, "t" | "true"));
    Ok(Subscription {
        key: SubscriptionKey::App(id),
        owner,
        url,
        secrets,
        events: events.flatten(),
        enabled,
    })
}

fn parse_id(column: &str, text: &str) -> Result<i64, SubscriptionRowError> {
    text.trim()
        .parse()
        .map_err(|_| SubscriptionRowError::Invalid {
            id: text.to_owned(),
            column: column.to_owned(),
            value: text.to_owned(),
            reason: "expected an integer".to_owned(),
        })
}

fn missing(column: &str) -> SubscriptionRowError {
    SubscriptionRowError::Missing {
        column: column.to_owned(),
    }
}

/// Parses a one-dimensional text array literal such as `{STAGE_CHANGED,"PING"}`;
/// an empty array means all events (`None`). Returns the unknown name on error.
fn parse_event_array(text: &str) -> Result<Option<HashSet<EventKind>>, String> {
    let inner = text.trim().trim_start_matches('{').trim_end_matches('}');
    let mut kinds = HashSet::new();
    for element in inner
        .split(',')
        .map(|e| e.trim().trim_matches('"'))
        .filter(|e| !e.is_empty())
    {
        kinds.insert(EventKind::from_name(element).ok_or_else(|| element.to_owned())?);
    }
    Ok(if kinds.is_empty() { None } else { Some(kinds) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_array_parses_names() {
        let kinds = parse_event_array("{STAGE_CHANGED,\"PING\"}").expect("valid array");
        let expected: HashSet<_> = [EventKind::StageChanged, EventKind::Ping].into();
        assert_eq!(kinds, Some(expected));
    }

    #[test]
    fn empty_event_array_means_all() {
        assert_eq!(parse_event_array("{}"), Ok(None));
    }

    #[test]
    fn event_array_rejects_unknown_name() {
        assert_eq!(
            parse_event_array("{JOB_DELETED}"),
            Err("JOB_DELETED".to_owned())
        );
    }
}

//! `[tables.*]` and `[subscriptions]`: which application columns play which role.

use serde::Deserialize;

/// `[tables]`: the four watched tables.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tables {
    pub jobs: JobsTable,
    pub chats: Option<ChatsTable>,
    pub hes_scores: Option<HesScoresTable>,
    pub tickets: Option<TicketsTable>,
}

/// `[tables.jobs]`: one row per job.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsTable {
    /// Qualified table name, such as `public.jobs`.
    pub table: String,
    pub id: String,
    /// Alternate job id: free text, sent as a string or null.
    pub alt_id: Option<String>,
    pub account: String,
    pub company: String,
    pub program: Option<String>,
    pub stage: String,
    pub stage_changed_at: String,
    /// Timestamp or boolean column set when the job is first modeled.
    pub first_modeled: Option<String>,
    /// Columns whose change raises ADDRESS_CHANGED.
    #[serde(default)]
    pub address: Vec<String>,
}

/// `[tables.chats]`: the activity feed of each job.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatsTable {
    pub table: String,
    pub uuid: String,
    pub job_id: String,
    pub account_id: String,
    pub message: String,
    pub file_name: String,
    pub file_uuid: String,
    pub file_url: String,
    pub created_at: String,
    pub updated_at: String,
    pub deleted_at: String,
    /// Boolean column that marks automatic system posts, which raise no CHAT_POSTED.
    pub system: Option<String>,
    /// Query that returns the poster's full name for the account id in `$1`.
    pub account_full_name: Option<String>,
}

/// `[tables.hes_scores]`: Home Energy Score assessments.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HesScoresTable {
    pub table: String,
    pub job_id: String,
    pub label_number: String,
    pub hes_type: String,
    pub base_score: String,
    pub assessment_date: String,
}

/// `[tables.tickets]`: workflow tickets.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TicketsTable {
    pub table: String,
    pub id: String,
    pub job_id: String,
    pub template_id: String,
    pub status: String,
    pub changed_by: String,
    pub changed_at: String,
}

/// `[subscriptions]`: the application's table of webhook subscriptions.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionsTable {
    pub table: String,
    pub id: String,
    pub company: String,
    pub program: String,
    pub url: String,
    /// Text column of one or more space-separated `whsec_` secrets.
    pub secret: String,
    /// `text[]` column of event names; empty or NULL means all.
    pub events: String,
    pub enabled: String,
}

/// A table name split into schema and name, as Relation messages carry them.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QualifiedName {
    pub schema: String,
    pub name: String,
}

impl QualifiedName {
    /// Splits `schema.table`; a name without a schema is in `public`.
    pub fn parse(text: &str) -> QualifiedName {
        match text.split_once('.') {
            Some((schema, name)) => QualifiedName {
                schema: schema.to_owned(),
                name: name.to_owned(),
            },
            None => QualifiedName {
                schema: "public".to_owned(),
                name: text.to_owned(),
            },
        }
    }

    /// Returns the name quoted for SQL, such as `"public"."jobs"`.
    pub fn quoted(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

impl std::fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

/// Quotes an SQL identifier, doubling embedded quotes.
pub fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

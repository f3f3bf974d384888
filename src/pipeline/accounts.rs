//! The poster's full name of a CHAT_POSTED event, read with the
//! `tables.chats.account_full_name` query and cached for a short time.
//!
//! The accounts table is not part of the publication, so walhook receives no
//! change when a name changes. A cached name is used for at most
//! [`NAME_TTL`], so a renamed account shows its old name in the chats posted
//! during that time. Without the cache, each chat would cost one round trip
//! to the application database, which bounds a catch-up to a few thousand
//! chats per second.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Statement};

use crate::routing::id_param;

/// How long a looked-up name is used before it is read again.
pub const NAME_TTL: Duration = Duration::from_secs(60);

/// Entries kept before the cache starts over; a miss costs one query.
const MAX_CACHED_NAMES: usize = 100_000;

struct CachedName {
    name: Option<String>,
    read_at: Instant,
}

/// Account names by account id, read through the configured query.
pub struct AccountNames {
    sql: Option<String>,
    statement: Option<Statement>,
    cached: HashMap<i64, CachedName>,
}

impl AccountNames {
    /// Creates the cache for the `account_full_name` query; with `None`, every
    /// name is unknown.
    pub fn new(sql: Option<String>) -> AccountNames {
        AccountNames {
            sql,
            statement: None,
            cached: HashMap::new(),
        }
    }

    /// Returns the full name of `account_id`, `None` when the query is not
    /// configured or returns no row or NULL.
    pub async fn lookup(
        &mut self,
        client: &Client,
        account_id: i64,
    ) -> Result<Option<String>, tokio_postgres::Error> {
        let now = Instant::now();
        if let Some(cached) = self.cached.get(&account_id) {
            if now.duration_since(cached.read_at) < NAME_TTL {
                return Ok(cached.name.clone());
            }
        }
        let Some(statement) = self.statement(client).await? else {
            return Ok(None);
        };

        // A query without `$1` fails in `query_opt` with an error naming the
        // parameter count.
        let param_type = statement.params().first().unwrap_or(&Type::INT8);
        let param = id_param(param_type, account_id);
        let row = client.query_opt(&statement, &[param.as_ref()]).await?;
        let name = row.and_then(|row| row.get::<_, Option<String>>(0));
        if self.cached.len() >= MAX_CACHED_NAMES {
            self.cached.clear();
        }
        let entry = CachedName {
            name: name.clone(),
            read_at: now,
        };
        self.cached.insert(account_id, entry);
        Ok(name)
    }

    /// Returns the prepared query, preparing it on first use.
    async fn statement(
        &mut self,
        client: &Client,
    ) -> Result<Option<Statement>, tokio_postgres::Error> {
        if self.statement.is_none() {
            if let Some(sql) = &self.sql {
                self.statement = Some(client.prepare(sql).await?);
            }
        }
        Ok(self.statement.clone())
    }
}

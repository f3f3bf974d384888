//! Jobs by id: the tenants and alternate id of the job that a chat, score or
//! ticket belongs to.
//!
//! The cache is kept fresh by the jobs stream itself; a job not seen since
//! start is read from the jobs table.

use std::collections::HashMap;

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Statement};

use crate::config::{quote_ident, JobsTable, QualifiedName};
use crate::rules::JobInfo;

/// Entries kept before the cache starts over; a miss costs one indexed query.
const MAX_CACHED_JOBS: usize = 200_000;

/// Jobs by id, filled from the jobs stream and from the database.
pub struct JobDirectory {
    table: JobsTable,
    cached: HashMap<i64, JobInfo>,
    select: Option<Statement>,
}

impl JobDirectory {
    pub fn new(table: JobsTable) -> JobDirectory {
        JobDirectory {
            table,
            cached: HashMap::new(),
            select: None,
        }
    }

    /// Stores the job as a jobs change describes it.
    pub fn remember(&mut self, job: JobInfo) {
        if self.cached.len() >= MAX_CACHED_JOBS {
            self.cached.clear();
        }
        self.cached.insert(job.id, job);
    }

    /// Forgets a deleted job.
    pub fn forget(&mut self, id: i64) {
        self.cached.remove(&id);
    }

    /// Returns the job with `id`, from the cache or the jobs table; `None` when
    /// no such job exists.
    pub async fn lookup(
        &mut self,
        client: &Client,
        id: i64,
    ) -> Result<Option<JobInfo>, tokio_postgres::Error> {
        if let Some(job) = self.cached.get(&id) {
            return Ok(Some(job.clone()));
        }
        let statement = match &self.select {
            Some(statement) => statement.clone(),
            None => {
                let statement = client.prepare(&self.select_sql()).await?;
                self.select = Some(statement.clone());
                statement
            }
        };
        let param = id_param(&statement.params()[0], id);
        let Some(row) = client.query_opt(&statement, &[param.as_ref()]).await? else {
            return Ok(None);
        };
        let parse = |text: Option<String>| text.and_then(|t| t.trim().parse::<i64>().ok());
        let job = JobInfo {
            id,
            alt_id: row.get(0),
            company: parse(row.get(1)),
            program: parse(row.get(2)),
        };
        self.remember(job.clone());
        Ok(Some(job))
    }

    fn select_sql(&self) -> String {
        let text = |column: &Option<String>| match column {
            Some(column) => format!("{}::text", quote_ident(column)),
            None => "NULL::text".to_owned(),
        };
        format!(
            "SELECT {}, {}::text, {} FROM {} WHERE {} = $1",
            text(&self.table.alt_id),
            quote_ident(&self.table.company),
            text(&self.table.program),
            QualifiedName::parse(&self.table.table).quoted(),
            quote_ident(&self.table.id),
        )
    }
}

/// Returns `id` as the SQL type of an id column, so the lookup uses its index.
pub fn id_param(ty: &Type, id: i64) -> Box<dyn ToSql + Sync + Send> {
    match *ty {
        Type::INT2 => Box::new(i16::try_from(id).unwrap_or(i16::MAX)),
        Type::INT4 => Box::new(i32::try_from(id).unwrap_or(i32::MAX)),
        Type::TEXT | Type::VARCHAR => Box::new(id.to_string()),
        _ => Box::new(id),
    }
}

//! Turning decoded pgoutput messages into the events of each committed
//! transaction.
//!
//! Changes are processed in the order of the stream: a jobs change updates the
//! job directory before a later chat of the same transaction looks its job up,
//! and subscription changes apply before the transaction's events are routed at
//! its commit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio_postgres::Client;

use super::accounts::AccountNames;
use super::PipelineError;
use crate::changes::{ChangeKind, RelationCache, RowChange};
use crate::config::{Config, QualifiedName};
use crate::pgoutput::{LogicalMessageBody, Message, Oid, OldTuple, TupleData};
use crate::replication::Lsn;
use crate::routing::{subscriptions_table, JobDirectory, Subscriptions};
use crate::rules::{self, Event, JobInfo, Side};

/// The role of a published table in config.toml.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TableRole {
    Jobs,
    Chats,
    HesScores,
    Tickets,
    Subscriptions,
}

/// Events held for an open transaction before they go to the queue as a
/// chunk, so that a transaction of a million rows needs bounded memory.
const CHUNK_EVENTS: usize = 10_000;

/// Events of one source transaction for the queue: a chunk while the
/// transaction is still arriving, or the rest of it at its commit.
#[derive(Debug)]
pub struct EventBatch {
    /// LSN of the transaction's commit record, known from its Begin.
    pub commit_lsn: Lsn,
    /// Index, in the whole transaction, of the first event of `events`.
    pub first_event_index: usize,
    pub events: Vec<Event>,
    /// End of the commit record once the whole transaction has arrived;
    /// `None` for a chunk.
    pub end_lsn: Option<Lsn>,
    /// Whether the queue already contains this transaction's deliveries.
    pub already_stored: bool,
}

struct OpenTransaction {
    final_lsn: Lsn,
    events: Vec<Event>,
    /// Events of this transaction already handed out in chunks.
    events_handed_out: usize,
    /// Whether the operator chose to skip this transaction.
    skipped: bool,
}

/// Decoded messages in, committed transactions out.
pub struct Processor {
    config: Arc<Config>,
    roles: HashMap<QualifiedName, TableRole>,
    relations: RelationCache,
    jobs: JobDirectory,
    subscriptions: Arc<Subscriptions>,
    lookups: Client,
    account_names: AccountNames,
    /// Commit LSN of the last transaction stored in the queue.
    stored_commit_lsn: Lsn,
    /// Commit LSNs of the transactions the operator chose to skip.
    skipped: HashSet<Lsn>,
    open: Option<OpenTransaction>,
}

impl Processor {
    pub fn new(
        config: Arc<Config>,
        subscriptions: Arc<Subscriptions>,
        lookups: Client,
        stored_commit_lsn: Lsn,
        skipped: HashSet<Lsn>,
    ) -> Processor {
        Processor {
            roles: table_roles(&config),
            jobs: JobDirectory::new(config.tables.jobs.clone()),
            account_names: AccountNames::new(account_full_name_sql(&config)),
            config,
            relations: RelationCache::default(),
            subscriptions,
            lookups,
            stored_commit_lsn,
            skipped,
            open: None,
        }
    }

    /// Tells whether a transaction's Begin arrived without its Commit.
    pub fn in_transaction(&self) -> bool {
        self.open.is_some()
    }

    /// Processes one message; returns the events that are ready for the
    /// queue: a full chunk, or the rest of a transaction at its Commit.
    pub async fn handle(&mut self, message: Message) -> Result<Option<EventBatch>, PipelineError> {
        match message {
            Message::Begin(begin) => {
                let skipped = self.skipped.contains(&begin.final_lsn);
                if skipped {
                    tracing::warn!(lsn = %begin.final_lsn, "transaction skipped as the operator chose; it raises no webhook");
                }
                self.open = Some(OpenTransaction {
                    final_lsn: begin.final_lsn,
                    events: Vec::new(),
                    events_handed_out: 0,
                    skipped,
                });
            }
            Message::Commit(commit) => {
                let open = self
                    .open
                    .take()
                    .ok_or(PipelineError::Protocol("Commit without Begin"))?;
                return Ok(Some(EventBatch {
                    commit_lsn: open.final_lsn,
                    first_event_index: open.events_handed_out,
                    already_stored: open.final_lsn <= self.stored_commit_lsn,
                    events: open.events,
                    end_lsn: Some(commit.end_lsn),
                }));
            }
            Message::Relation(body) => {
                let relation = self.relations.insert(body);
                tracing::debug!(table = %relation.name, relation_id = %relation.id, "relation received");
            }
            Message::Insert(body) => {
                let relation = self.relation(body.rel_id, [Some(&body.new)])?;
                self.process(RowChange::insert(relation, body.new)).await?;
                return Ok(self.take_full_chunk());
            }
            Message::Update(body) => {
                let old = body.old.as_ref().map(OldTuple::tuple);
                let relation = self.relation(body.rel_id, [old, Some(&body.new)])?;
                self.process(RowChange::update(relation, body.old, body.new))
                    .await?;
                return Ok(self.take_full_chunk());
            }
            Message::Delete(body) => {
                let relation = self.relation(body.rel_id, [Some(body.old.tuple())])?;
                self.process(RowChange::delete(relation, body.old)).await?;
            }
            Message::Truncate(body) => self.log_truncate(&body.rel_ids),
            Message::LogicalMessage(body) => return self.logical_message(body),
            Message::Origin(_) | Message::Type(_) => {}
        }
        Ok(None)
    }

    /// Returns the open transaction's events as a chunk once there are
    /// [`CHUNK_EVENTS`] of them.
    fn take_full_chunk(&mut self) -> Option<EventBatch> {
        let open = self
            .open
            .as_mut()
            .filter(|open| open.events.len() >= CHUNK_EVENTS)?;
        let first_event_index = open.events_handed_out;
        open.events_handed_out += open.events.len();
        Some(EventBatch {
            commit_lsn: open.final_lsn,
            first_event_index,
            events: std::mem::take(&mut open.events),
            end_lsn: None,
            already_stored: open.final_lsn <= self.stored_commit_lsn,
        })
    }

    /// Records that the queue contains every transaction up to `commit_lsn`.
    pub fn mark_stored(&mut self, commit_lsn: Lsn) {
        self.stored_commit_lsn = self.stored_commit_lsn.max(commit_lsn);
    }

    /// Returns the relation of a change, checking that its tuples have one
    /// value per column of the latest Relation message.
    fn relation<const N: usize>(
        &self,
        id: Oid,
        tuples: [Option<&TupleData>; N],
    ) -> Result<Arc<crate::changes::Relation>, PipelineError> {
        let relation = self
            .relations
            .get(id)
            .ok_or(PipelineError::UnknownRelation(id))?;
        let expected = relation.column_names().len();
        for tuple in tuples.into_iter().flatten() {
            if tuple.0.len() != expected {
                return Err(PipelineError::TupleWidth {
                    table: relation.name.to_string(),
                    expected,
                    found: tuple.0.len(),
                });
            }
        }
        Ok(relation)
    }

    async fn process(&mut self, change: RowChange) -> Result<(), PipelineError> {
        if self.open.as_ref().is_some_and(|open| open.skipped) {
            return Ok(());
        }
        let Some(role) = self.roles.get(&change.relation.name).copied() else {
            tracing::debug!(table = %change.relation.name, "change of an unmapped table ignored");
            return Ok(());
        };
        let events = self
            .events_of(role, &change)
            .await
            .map_err(|source| PipelineError::Rule {
                lsn: self
                    .open
                    .as_ref()
                    .map(|open| open.final_lsn)
                    .unwrap_or_default(),
                table: change.relation.name.to_string(),
                source,
            })?;
        if let Some(open) = self.open.as_mut() {
            for event in &events {
                tracing::debug!(event = %event.kind, job_id = ?event.job_ids.first(), "event detected");
            }
            open.events.extend(events);
        }
        Ok(())
    }

    async fn events_of(
        &mut self,
        role: TableRole,
        change: &RowChange,
    ) -> Result<Vec<Event>, RuleFailure> {
        let tables = &self.config.tables;
        match role {
            TableRole::Jobs => self.job_events(change),
            TableRole::Chats => {
                let Some(table) = tables.chats.clone() else {
                    return Ok(Vec::new());
                };
                if !rules::chats::is_user_post(change, &table)? {
                    return Ok(Vec::new());
                }
                let Some(job) = self.job_of(rules::chats::job_id(change, &table)?).await? else {
                    return Ok(Vec::new());
                };
                let name = match rules::chats::account_id(change, &table)? {
                    Some(account) => self
                        .account_names
                        .lookup(&self.lookups, account)
                        .await
                        .map_err(RuleFailure::Lookup)?,
                    None => None,
                };
                Ok(rules::chats::events(change, &table, &job, name)?)
            }
            TableRole::HesScores => {
                let Some(table) = tables.hes_scores.clone() else {
                    return Ok(Vec::new());
                };
                if !rules::hes_scores::obtains_score(change, &table)? {
                    return Ok(Vec::new());
                }
                let Some(job) = self
                    .job_of(rules::hes_scores::job_id(change, &table)?)
                    .await?
                else {
                    return Ok(Vec::new());
                };
                Ok(rules::hes_scores::events(change, &table, &job)?)
            }
            TableRole::Tickets => {
                let Some(table) = tables.tickets.clone() else {
                    return Ok(Vec::new());
                };
                if !rules::tickets::changes_status(change, &table)? {
                    return Ok(Vec::new());
                }
                let Some(job) = self.job_of(rules::tickets::job_id(change, &table)?).await? else {
                    return Ok(Vec::new());
                };
                Ok(rules::tickets::events(change, &table, &job)?)
            }
            TableRole::Subscriptions => {
                if let Err(err) = subscriptions_table::apply_change(
                    change,
                    &self.config.subscriptions,
                    &self.subscriptions,
                ) {
                    tracing::error!(error = %err, "subscription change ignored; fix the row in the subscriptions table");
                }
                Ok(Vec::new())
            }
        }
    }

    /// Returns the events of a jobs change and keeps the job directory up to
    /// date with the job's row.
    fn job_events(&mut self, change: &RowChange) -> Result<Vec<Event>, RuleFailure> {
        let table = &self.config.tables.jobs;
        if change.kind == ChangeKind::Delete {
            let job = rules::jobs::job_info(change, table, Side::Old)?;
            self.jobs.forget(job.id);
            return Ok(Vec::new());
        }
        let job = rules::jobs::job_info(change, table, Side::New)?;
        let events = rules::jobs::events_of_job(change, table, &job)?;
        self.jobs.remember(job);
        Ok(events)
    }

    async fn job_of(&mut self, job_id: i64) -> Result<Option<JobInfo>, RuleFailure> {
        let job = self
            .jobs
            .lookup(&self.lookups, job_id)
            .await
            .map_err(RuleFailure::Lookup)?;
        if job.is_none() {
            tracing::warn!(
                job_id,
                "job not found in the jobs table, its events go to static endpoints only"
            );
            return Ok(Some(JobInfo {
                id: job_id,
                alt_id: None,
                company: None,
                program: None,
            }));
        }
        Ok(job)
    }

    /// Turns a transactional `walhook` logical message into PING events of
    /// the open transaction. A non-transactional message is sent even when its
    /// transaction rolls back, so it is rejected.
    fn logical_message(
        &mut self,
        body: LogicalMessageBody,
    ) -> Result<Option<EventBatch>, PipelineError> {
        if body.prefix != rules::ping::MESSAGE_PREFIX {
            return Ok(None);
        }
        let Some(open) = self.open.as_mut().filter(|_| body.transactional) else {
            tracing::error!(lsn = %body.lsn, "non-transactional walhook message ignored; send it with pg_logical_emit_message(true, 'walhook', ...) so it counts only if its transaction commits");
            return Ok(None);
        };
        if open.skipped {
            return Ok(None);
        }
        let events = match rules::ping::events_from_message(&body.content) {
            Ok(events) => events,
            Err(err) => {
                tracing::error!(error = %err, lsn = %body.lsn, "logical message ignored");
                return Ok(None);
            }
        };
        if events.is_empty() {
            tracing::warn!(lsn = %body.lsn, "PING request lists no jobs, nothing to send");
        }
        open.events.extend(events);
        Ok(self.take_full_chunk())
    }

    fn log_truncate(&self, rel_ids: &[Oid]) {
        for id in rel_ids {
            let table = self
                .relations
                .get(*id)
                .map(|r| r.name.to_string())
                .unwrap_or_else(|| id.to_string());
            tracing::warn!(table = %table, "table truncated; TRUNCATE raises no webhook");
        }
    }
}

/// A rule that failed, or a lookup it needed.
#[derive(Debug, thiserror::Error)]
pub enum RuleFailure {
    #[error(transparent)]
    Rule(#[from] rules::RuleError),
    #[error("lookup in the application database failed: {0}")]
    Lookup(tokio_postgres::Error),
}

fn table_roles(config: &Config) -> HashMap<QualifiedName, TableRole> {
    let tables = &config.tables;
    let mut roles = HashMap::new();
    roles.insert(QualifiedName::parse(&tables.jobs.table), TableRole::Jobs);
    if let Some(table) = &tables.chats {
        roles.insert(QualifiedName::parse(&table.table), TableRole::Chats);
    }
    if let Some(table) = &tables.hes_scores {
        roles.insert(QualifiedName::parse(&table.table), TableRole::HesScores);
    }
    if let Some(table) = &tables.tickets {
        roles.insert(QualifiedName::parse(&table.table), TableRole::Tickets);
    }
    roles.insert(
        QualifiedName::parse(&config.subscriptions.table),
        TableRole::Subscriptions,
    );
    roles
}

fn account_full_name_sql(config: &Config) -> Option<String> {
    let chats = config.tables.chats.as_ref()?;
    chats.account_full_name.clone()
}

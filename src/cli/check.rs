//! `walhook check`: verifies every prerequisite and prints one line per check,
//! with the fix for each failure.

use std::path::Path;

use tokio_postgres::Client;

use super::setup::published_tables;
use crate::config::{quote_ident, Config, QualifiedName};
use crate::replication::ReplicationClient;

/// The outcome of one check.
struct Finding {
    name: String,
    problem: Option<String>,
}

impl Finding {
    fn ok(name: impl Into<String>) -> Finding {
        Finding {
            name: name.into(),
            problem: None,
        }
    }

    fn failed(name: impl Into<String>, problem: impl Into<String>) -> Finding {
        Finding {
            name: name.into(),
            problem: Some(problem.into()),
        }
    }
}

/// Runs every check and prints the results; fails when any check fails.
pub async fn run(path: &Path) -> anyhow::Result<()> {
    let config = super::load_config(path)?;
    println!("ok    config `{}`", path.display());
    let findings = check_all(&config).await;
    let failures = findings
        .iter()
        .filter(|finding| finding.problem.is_some())
        .count();
    for finding in &findings {
        match &finding.problem {
            None => println!("ok    {}", finding.name),
            Some(problem) => println!("FAIL  {}: {problem}", finding.name),
        }
    }
    if failures > 0 {
        anyhow::bail!("{failures} of {} checks failed", findings.len() + 1);
    }
    Ok(())
}

async fn check_all(config: &Config) -> Vec<Finding> {
    let client = match connect(config).await {
        Ok(client) => client,
        Err(problem) => {
            return vec![Finding::failed(
                "connection to the application database",
                problem,
            )]
        }
    };
    let mut findings = vec![Finding::ok("connection to the application database")];
    findings.push(check_wal_level(&client).await);
    findings.push(check_sender_limits(&client).await);
    findings.push(check_replication_role(&client).await);
    findings.push(check_replication_connection(config).await);
    findings.extend(check_publication(&client, config).await);
    findings.extend(check_tables(&client, config).await);
    findings.push(check_slot(&client, config).await);
    findings.push(check_queue(config).await);
    findings
}

async fn connect(config: &Config) -> Result<Client, String> {
    let postgres = config.source_postgres().map_err(|err| err.to_string())?;
    crate::db::connect(&postgres, "application")
        .await
        .map_err(|err| {
            let text = crate::db::describe(&err);
            if text.contains("no pg_hba.conf entry") {
                // The server names the encryption it saw ("no encryption",
                // "SSL encryption"), whatever lines pg_hba.conf has.
                format!("{text}; add a pg_hba.conf line for this role, database and address (`host DATABASE ROLE ADDRESS scram-sha-256`, as sql/setup.sql shows) and reload the server, or, when the server accepts this role only over TLS (`hostssl` lines), set sslmode=require, verify-ca or verify-full in source.url")
            } else {
                format!("{text}; check source.url and that the server accepts the role")
            }
        })
}

async fn setting(client: &Client, name: &str) -> Result<String, String> {
    let row = client
        .query_one("SELECT current_setting($1)", &[&name])
        .await
        .map_err(|err| {
            format!(
                "cannot read setting `{name}`: {}",
                crate::db::describe(&err)
            )
        })?;
    Ok(row.get(0))
}

async fn check_wal_level(client: &Client) -> Finding {
    let name = "wal_level = logical";
    match setting(client, "wal_level").await {
        Ok(level) if level == "logical" => Finding::ok(name),
        Ok(level) => Finding::failed(
            name,
            format!("wal_level is `{level}`; set wal_level = logical in postgresql.conf and restart PostgreSQL"),
        ),
        Err(problem) => Finding::failed(name, problem),
    }
}

async fn check_sender_limits(client: &Client) -> Finding {
    let name = "max_replication_slots and max_wal_senders";
    for setting_name in ["max_replication_slots", "max_wal_senders"] {
        match setting(client, setting_name).await {
            Ok(value) if value.parse::<i64>().unwrap_or(0) > 0 => {}
            Ok(value) => {
                return Finding::failed(
                    name,
                    format!("{setting_name} is `{value}`; set it to at least 1 (10 is the default) and restart PostgreSQL"),
                )
            }
            Err(problem) => return Finding::failed(name, problem),
        }
    }
    Finding::ok(name)
}

/// Checks the role's right to replicate. The REPLICATION attribute is not
/// inherited, but managed services grant it through membership in a role of
/// their own.
async fn check_replication_role(client: &Client) -> Finding {
    let name = "role may replicate";
    let sql = "SELECT current_user::text,
                      r.rolreplication OR r.rolsuper
                      OR EXISTS (SELECT 1 FROM pg_roles m
                                 WHERE m.rolname IN ('rds_replication', 'cloudsqlsuperuser', 'azure_pg_admin', 'alloydbsuperuser')
                                   AND pg_has_role(current_user, m.oid, 'member'))
               FROM pg_roles r WHERE r.rolname = current_user";
    match client.query_one(sql, &[]).await {
        Ok(row) if row.get::<_, bool>(1) => Finding::ok(name),
        Ok(row) => {
            let role: String = row.get(0);
            Finding::failed(
                name,
                format!(
                    "role `{role}` lacks REPLICATION; run ALTER ROLE {} REPLICATION",
                    quote_ident(&role)
                ),
            )
        }
        Err(err) => Finding::failed(name, crate::db::describe(&err)),
    }
}

async fn check_replication_connection(config: &Config) -> Finding {
    let name = "replication connection (pg_hba.conf)";
    let postgres = match config.source_postgres() {
        Ok(postgres) => postgres,
        Err(err) => return Finding::failed(name, err.to_string()),
    };
    match ReplicationClient::connect(&postgres).await {
        Ok(mut client) => match client.identify_system().await {
            Ok(_) => Finding::ok(name),
            Err(err) => Finding::failed(name, format!("IDENTIFY_SYSTEM failed: {err}")),
        },
        Err(err) => Finding::failed(
            name,
            format!("{err}; add a `host replication <role> <address> scram-sha-256` line to pg_hba.conf and reload"),
        ),
    }
}

async fn check_publication(client: &Client, config: &Config) -> Vec<Finding> {
    let publication = &config.source.publication;
    let name = format!("publication `{publication}`");
    let rows = match client
        .query("SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1", &[publication])
        .await
    {
        Ok(rows) => rows,
        Err(err) => return vec![Finding::failed(name, crate::db::describe(&err))],
    };
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[publication],
        )
        .await
        .map(|row| row.is_some())
        .unwrap_or(false);
    if !exists {
        return vec![Finding::failed(name, "does not exist; run `walhook setup`")];
    }
    let covered: Vec<QualifiedName> = rows
        .iter()
        .map(|row| QualifiedName {
            schema: row.get(0),
            name: row.get(1),
        })
        .collect();
    let mut findings = vec![Finding::ok(name)];
    for table in published_tables(config) {
        let name = format!("publication `{publication}` covers `{table}`");
        if covered.contains(&table) {
            findings.push(Finding::ok(name));
        } else {
            let fix = format!(
                "missing; run `walhook setup` or ALTER PUBLICATION {} ADD TABLE {}",
                quote_ident(publication),
                table.quoted()
            );
            findings.push(Finding::failed(name, fix));
        }
    }
    findings
}

/// Returns every mapped table with the columns its rules read, and whether
/// its rules need the old row of an UPDATE.
fn mapped_columns(config: &Config) -> Vec<(QualifiedName, Vec<String>, bool)> {
    let tables = &config.tables;
    let jobs = &tables.jobs;
    let mut job_columns = vec![
        jobs.id.clone(),
        jobs.account.clone(),
        jobs.company.clone(),
        jobs.stage.clone(),
        jobs.stage_changed_at.clone(),
    ];
    job_columns.extend(
        jobs.alt_id
            .iter()
            .chain(&jobs.program)
            .chain(&jobs.first_modeled)
            .cloned(),
    );
    job_columns.extend(jobs.address.iter().cloned());
    let mut mapped = vec![(QualifiedName::parse(&jobs.table), job_columns, true)];
    if let Some(chats) = &tables.chats {
        let mut columns = vec![
            chats.uuid.clone(),
            chats.job_id.clone(),
            chats.account_id.clone(),
            chats.message.clone(),
            chats.file_name.clone(),
            chats.file_uuid.clone(),
            chats.file_url.clone(),
            chats.created_at.clone(),
            chats.updated_at.clone(),
            chats.deleted_at.clone(),
        ];
        columns.extend(chats.system.iter().cloned());
        mapped.push((QualifiedName::parse(&chats.table), columns, true));
    }
    if let Some(hes) = &tables.hes_scores {
        let columns = vec![
            hes.job_id.clone(),
            hes.label_number.clone(),
            hes.hes_type.clone(),
            hes.base_score.clone(),
            hes.assessment_date.clone(),
        ];
        mapped.push((QualifiedName::parse(&hes.table), columns, true));
    }
    if let Some(tickets) = &tables.tickets {
        let columns = vec![
            tickets.id.clone(),
            tickets.job_id.clone(),
            tickets.template_id.clone(),
            tickets.status.clone(),
            tickets.changed_by.clone(),
            tickets.changed_at.clone(),
        ];
        mapped.push((QualifiedName::parse(&tickets.table), columns, true));
    }
    let subs = &config.subscriptions;
    let columns = vec![
        subs.id.clone(),
        subs.company.clone(),
        subs.program.clone(),
        subs.url.clone(),
        subs.secret.clone(),
        subs.events.clone(),
        subs.enabled.clone(),
    ];
    mapped.push((QualifiedName::parse(&subs.table), columns, false));
    mapped
}

async fn check_tables(client: &Client, config: &Config) -> Vec<Finding> {
    let mut findings = Vec::new();
    for (table, columns, needs_old_row) in mapped_columns(config) {
        findings.push(check_table(client, &table, &columns, needs_old_row).await);
    }
    findings
}

async fn check_table(
    client: &Client,
    table: &QualifiedName,
    columns: &[String],
    needs_old_row: bool,
) -> Finding {
    let name = format!("table `{table}` and its mapped columns");
    let sql = "SELECT c.relreplident::text,
                      ARRAY(SELECT a.attname::text FROM pg_attribute a
                            WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = $1 AND c.relname = $2";
    let row = match client.query_opt(sql, &[&table.schema, &table.name]).await {
        Ok(Some(row)) => row,
        Ok(None) => {
            return Finding::failed(name, "table not found; fix its `table` key in config.toml")
        }
        Err(err) => return Finding::failed(name, crate::db::describe(&err)),
    };
    let identity: String = row.get(0);
    let existing: Vec<String> = row.get(1);
    let missing: Vec<&String> = columns
        .iter()
        .filter(|column| !existing.contains(column))
        .collect();
    if !missing.is_empty() {
        let list: Vec<String> = missing.iter().map(|column| format!("`{column}`")).collect();
        return Finding::failed(
            name,
            format!(
                "column {} not found; fix the mapping in config.toml",
                list.join(", ")
            ),
        );
    }
    if needs_old_row && identity != "f" {
        return Finding::failed(
            name,
            format!("replica identity is not FULL, so UPDATEs lack the old row; run ALTER TABLE {} REPLICA IDENTITY FULL", table.quoted()),
        );
    }
    if needs_old_row {
        if let Some(problem) = check_partitions(client, table).await {
            return Finding::failed(name, problem);
        }
    }
    Finding::ok(name)
}

/// Returns the problem when a partition of a partitioned table lacks
/// REPLICA IDENTITY FULL. The WAL of a row change is written by its
/// partition, so the partition's own setting decides whether the old row is
/// logged, whatever the parent's setting.
async fn check_partitions(client: &Client, table: &QualifiedName) -> Option<String> {
    let sql = "SELECT c.oid::regclass::text
               FROM pg_partition_tree(format('%I.%I', $1::text, $2::text)::regclass) t
               JOIN pg_class c ON c.oid = t.relid
               WHERE t.level > 0 AND c.relkind = 'r' AND c.relreplident <> 'f'
               ORDER BY 1";
    let rows = match client.query(sql, &[&table.schema, &table.name]).await {
        Ok(rows) => rows,
        Err(err) => return Some(format!("cannot list the partitions: {err}")),
    };
    let partitions: Vec<String> = rows.iter().map(|row| row.get(0)).collect();
    let first = partitions.first()?;
    let list: Vec<String> = partitions.iter().map(|name| format!("`{name}`")).collect();
    Some(format!(
        "partition {} lacks REPLICA IDENTITY FULL, so UPDATEs of its rows lack the old row; run ALTER TABLE {first} REPLICA IDENTITY FULL on each",
        list.join(", ")
    ))
}

async fn check_slot(client: &Client, config: &Config) -> Finding {
    let slot = &config.source.slot;
    let name = format!("replication slot `{slot}`");
    let sql = "SELECT plugin::text, wal_status FROM pg_replication_slots WHERE slot_name = $1";
    match client.query_opt(sql, &[slot]).await {
        Ok(None) => Finding::failed(name, "does not exist; run `walhook setup`"),
        Ok(Some(row)) => {
            let plugin: Option<String> = row.get(0);
            let wal_status: Option<String> = row.get(1);
            if plugin.as_deref() != Some("pgoutput") {
                Finding::failed(
                    name,
                    format!(
                        "uses plugin `{}`, not `pgoutput`; drop it and run `walhook setup`",
                        plugin.unwrap_or_default()
                    ),
                )
            } else if wal_status.as_deref() == Some("lost") {
                Finding::failed(name, "was invalidated (wal_status = lost), so changes are missing; drop it and run `walhook setup`, then redeliver from the application if needed")
            } else {
                Finding::ok(name)
            }
        }
        Err(err) => Finding::failed(name, crate::db::describe(&err)),
    }
}

async fn check_queue(config: &Config) -> Finding {
    let schema = &config.queue.schema;
    let name = format!("queue schema `{schema}`");
    let postgres = match config.queue_postgres() {
        Ok(postgres) => postgres,
        Err(err) => return Finding::failed(name, err.to_string()),
    };
    let client = match crate::db::connect(&postgres, "queue").await {
        Ok(client) => client,
        Err(err) => {
            return Finding::failed(
                name,
                format!(
                    "cannot connect to the queue database: {}",
                    crate::db::describe(&err)
                ),
            )
        }
    };
    // The claim relies on `pending_jobs`, the triggers that fill it and the
    // index it walks, which `walhook setup` adds to a queue created earlier.
    let sql = "SELECT (SELECT count(*) FROM pg_tables WHERE schemaname = $1
                       AND tablename IN ('progress', 'deliveries', 'attempts',
                                         'disabled_subscriptions', 'pending_jobs')),
                      (SELECT count(*) FROM pg_trigger t
                       JOIN pg_class c ON c.oid = t.tgrelid
                       JOIN pg_namespace n ON n.oid = c.relnamespace
                       WHERE n.nspname = $1 AND c.relname = 'deliveries'
                         AND t.tgname IN ('deliveries_add_pending_jobs',
                                          'deliveries_move_pending_jobs_on_update',
                                          'deliveries_move_pending_jobs_on_delete',
                                          'deliveries_clear_pending_jobs')),
                      (SELECT count(*) FROM pg_indexes
                       WHERE schemaname = $1 AND indexname = 'deliveries_pending_by_id')";
    match client.query_one(sql, &[schema]).await {
        Ok(row) if row.get::<_, i64>(0) < 5 => {
            Finding::failed(name, "missing or incomplete; run `walhook setup`")
        }
        Ok(row) if row.get::<_, i64>(1) < 4 || row.get::<_, i64>(2) < 1 => Finding::failed(
            name,
            "was created by an older walhook and lacks the pending_jobs triggers or index; run `walhook setup`",
        ),
        Ok(_) => Finding::ok(name),
        Err(err) => Finding::failed(name, crate::db::describe(&err)),
    }
}

//! `walhook setup`: creates the queue schema, the publication and the slot,
//! skipping what exists.

use std::path::Path;

use anyhow::Context;
use tokio_postgres::Client;

use crate::config::{Config, QualifiedName};
use crate::queue;

/// Creates what is missing, or prints the SQL when `print` is set.
pub async fn run(path: &Path, print: bool) -> anyhow::Result<()> {
    let config = super::load_config(path)?;
    if print {
        print_sql(&config);
        return Ok(());
    }
    crate::ops::logging::init(&config.log.filter);

    let queue_client = connect(&config.queue_postgres()?, "queue").await?;
    queue_client
        .batch_execute(&queue::schema_sql(&config.queue.schema))
        .await
        .with_context(|| format!("cannot create queue schema `{}`", config.queue.schema))?;
    println!("queue schema `{}` is ready", config.queue.schema);

    let source = connect(&config.source_postgres()?, "application").await?;
    ensure_publication(&source, &config).await?;
    ensure_slot(&source, &config).await?;
    Ok(())
}

/// Returns the tables that the publication must cover.
pub fn published_tables(config: &Config) -> Vec<QualifiedName> {
    let tables = &config.tables;
    let mut names = vec![QualifiedName::parse(&tables.jobs.table)];
    names.extend(
        tables
            .chats
            .as_ref()
            .map(|t| QualifiedName::parse(&t.table)),
    );
    names.extend(
        tables
            .hes_scores
            .as_ref()
            .map(|t| QualifiedName::parse(&t.table)),
    );
    names.extend(
        tables
            .tickets
            .as_ref()
            .map(|t| QualifiedName::parse(&t.table)),
    );
    names.push(QualifiedName::parse(&config.subscriptions.table));
    names
}

async fn ensure_publication(client: &Client, config: &Config) -> anyhow::Result<()> {
    let publication = &config.source.publication;
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[publication],
        )
        .await?
        .is_some();
    let tables = published_tables(config);
    if !exists {
        let sql = create_publication_sql(publication, &tables);
        client
            .batch_execute(&sql)
            .await
            .with_context(|| format!("cannot run `{sql}`"))?;
        println!("publication `{publication}` created");
        return Ok(());
    }
    let rows = client
        .query(
            "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1",
            &[publication],
        )
        .await?;
    let covered: Vec<QualifiedName> = rows
        .iter()
        .map(|row| QualifiedName {
            schema: row.get(0),
            name: row.get(1),
        })
        .collect();
    for table in tables.iter().filter(|table| !covered.contains(table)) {
        let sql = format!(
            "ALTER PUBLICATION {} ADD TABLE {}",
            crate::config::quote_ident(publication),
            table.quoted()
        );
        client
            .batch_execute(&sql)
            .await
            .with_context(|| format!("cannot run `{sql}`"))?;
        println!("table `{table}` added to publication `{publication}`");
    }
    println!("publication `{publication}` is ready");
    Ok(())
}

async fn ensure_slot(client: &Client, config: &Config) -> anyhow::Result<()> {
    let slot = &config.source.slot;
    let row = client
        .query_opt(
            "SELECT plugin FROM pg_replication_slots WHERE slot_name = $1",
            &[slot],
        )
        .await?;
    match row.map(|row| row.get::<_, Option<String>>(0)) {
        Some(Some(plugin)) if plugin == "pgoutput" => println!("replication slot `{slot}` is ready"),
        Some(plugin) => anyhow::bail!(
            "replication slot `{slot}` exists with plugin `{}`, not `pgoutput`; drop it or set source.slot to another name",
            plugin.unwrap_or_default()
        ),
        None => {
            client
                .execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", &[slot])
                .await
                .with_context(|| format!("cannot create replication slot `{slot}`"))?;
            println!("replication slot `{slot}` created");
        }
    }
    Ok(())
}

fn create_publication_sql(publication: &str, tables: &[QualifiedName]) -> String {
    let list: Vec<String> = tables.iter().map(QualifiedName::quoted).collect();
    format!(
        "CREATE PUBLICATION {} FOR TABLE {}",
        crate::config::quote_ident(publication),
        list.join(", ")
    )
}

fn print_sql(config: &Config) {
    println!("-- queue schema (idempotent), run as a role that may create schemas");
    println!("{}", queue::schema_sql(&config.queue.schema));
    println!("-- publication over the mapped tables; if it exists, ALTER PUBLICATION … ADD TABLE the missing ones");
    println!(
        "{};",
        create_publication_sql(&config.source.publication, &published_tables(config))
    );
    println!();
    println!("-- logical replication slot");
    println!(
        "SELECT pg_create_logical_replication_slot('{}', 'pgoutput');",
        config.source.slot.replace('\'', "''")
    );
}

async fn connect(
    config: &crate::config::PostgresTarget,
    which: &'static str,
) -> anyhow::Result<Client> {
    crate::db::connect(config, which)
        .await
        .with_context(|| format!("cannot connect to the {which} database"))
}

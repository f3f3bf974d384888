//! The demo's example data: subscriptions, and application writes that raise
//! every webhook event once or more.
//!
//! Each write is its own transaction, as the application would commit it.
//! Company 101 and company 102 each subscribe to every event and program 7
//! to a few, so JOB_TRANSFERRED_TO_OTHER_COMPANY reaches the old and the new
//! company. The ids are those of the seed rows in `sql/schema.sql`.

use anyhow::Context;
use tokio_postgres::Client;

use crate::payload::EventKind;

/// The example contractor company that creates the jobs.
pub const FIRST_COMPANY: i64 = 101;
/// The company that a job moves to.
pub const SECOND_COMPANY: i64 = 102;
/// The example incentive program.
pub const PROGRAM: i64 = 7;

/// Returns the grants and the publication that a database administrator
/// creates in `database` for the role `walhook`, as in `sql/setup.sql`.
///
/// The publication is created here because CREATE PUBLICATION ... FOR TABLE
/// requires owning the tables, which the role `walhook` does not.
pub fn admin_setup_sql(database: &str) -> String {
    format!(
        "GRANT USAGE ON SCHEMA public TO walhook;
         GRANT SELECT ON public.jobs, public.chats, public.hes_scores, public.tickets,
             public.webhook_subscriptions, public.accounts TO walhook;
         GRANT CREATE ON DATABASE {} TO walhook;
         CREATE PUBLICATION walhook FOR TABLE
             public.jobs, public.chats, public.hes_scores, public.tickets,
             public.webhook_subscriptions;",
        crate::config::quote_ident(database)
    )
}

/// Ids of the subscriptions that [`insert_subscriptions`] creates.
#[derive(Clone, Copy, Debug)]
pub struct SubscriptionIds {
    pub first_company: i64,
    pub second_company: i64,
    pub program: i64,
}

/// Inserts one subscription per example company (all events) and one for
/// the program (three events), each on its own path of `base_url`, all
/// signed with `secret`.
pub async fn insert_subscriptions(
    client: &Client,
    base_url: &str,
    secret: &str,
) -> anyhow::Result<SubscriptionIds> {
    let company_sql = "INSERT INTO webhook_subscriptions (company_id, url, secret) \
                       VALUES ($1, $2, $3) RETURNING id";
    let program_sql = "INSERT INTO webhook_subscriptions (program_id, url, secret, events) \
                       VALUES ($1, $2, $3, $4) RETURNING id";
    let first_url = format!("{base_url}/company-{FIRST_COMPANY}");
    let second_url = format!("{base_url}/company-{SECOND_COMPANY}");
    let program_url = format!("{base_url}/program-{PROGRAM}");
    let program_events: Vec<&str> = [
        EventKind::StageChanged,
        EventKind::HesScoreObtained,
        EventKind::TicketStatusChanged,
    ]
    .iter()
    .map(|kind| kind.as_str())
    .collect();

    let first = client
        .query_one(company_sql, &[&FIRST_COMPANY, &first_url, &secret])
        .await
        .context("cannot insert the subscription of company 101")?;
    let second = client
        .query_one(company_sql, &[&SECOND_COMPANY, &second_url, &secret])
        .await
        .context("cannot insert the subscription of company 102")?;
    let program = client
        .query_one(
            program_sql,
            &[&PROGRAM, &program_url, &secret, &program_events],
        )
        .await
        .context("cannot insert the subscription of program 7")?;
    Ok(SubscriptionIds {
        first_company: first.get(0),
        second_company: second.get(0),
        program: program.get(0),
    })
}

/// Makes the application writes that raise every event, and returns the
/// ids of the two jobs created.
///
/// `ping_subscription` is the subscription that the PING message names.
pub async fn make_example_writes(
    client: &mut Client,
    ping_subscription: i64,
) -> anyhow::Result<[i64; 2]> {
    let jobs = create_jobs(client).await?;
    let job = jobs[0];
    let steps: [(&str, &str); 6] = [
        ("STAGE_CHANGED", "UPDATE jobs SET stage_id = 2, stage_changed_at = now(), updated_at = now() WHERE id = $1"),
        ("JOB_FIRST_TIME_MODELED", "UPDATE jobs SET first_modeled_at = now(), updated_at = now() WHERE id = $1"),
        ("ADDRESS_CHANGED", "UPDATE jobs SET address_1 = '1849 Juniper Ave', address_2 = 'Unit B', updated_at = now() WHERE id = $1"),
        ("JOB_TRANSFERRED", "UPDATE jobs SET account_id = 126, updated_at = now() WHERE id = $1"),
        ("CHAT_POSTED", "INSERT INTO chats (job_id, account_id, message, created_at) VALUES ($1, 126, 'Blower door test booked for Tuesday 9am. Homeowner will leave the side gate open.', now())"),
        ("HES_SCORE_OBTAINED", "INSERT INTO hes_scores (job_id, label_number, assessment_type, base_score, package_score, assessment_date) VALUES ($1, 318224, 'initial', 4, 7, current_date)"),
    ];
    for (event, sql) in steps {
        client
            .execute(sql, &[&job])
            .await
            .with_context(|| format!("the write for {event} failed"))?;
    }

    post_file(client, job).await?;
    change_ticket_status(client, job).await?;
    client
        .execute(
            "UPDATE jobs SET company_id = $2, account_id = 210, updated_at = now() WHERE id = $1",
            &[&job, &SECOND_COMPANY],
        )
        .await
        .context("the write for JOB_TRANSFERRED_TO_OTHER_COMPANY failed")?;
    emit_ping(client, ping_subscription, &jobs).await?;
    Ok(jobs)
}

/// Inserts two jobs in one transaction, with the system post that the
/// application adds to each new job's activity feed.
async fn create_jobs(client: &mut Client) -> anyhow::Result<[i64; 2]> {
    let insert_job = "INSERT INTO jobs (alt_id, account_id, company_id, program_id, \
                      first_name, last_name, email, address_1, city, state, zip) \
                      VALUES ($1, 125, $2, $3, $4, $5, $6, $7, $8, 'CO', $9) RETURNING id";
    let system_post = "INSERT INTO chats (job_id, message, is_system) \
                       VALUES ($1, 'Job created', true)";
    let transaction = client
        .transaction()
        .await
        .context("cannot begin the transaction that creates jobs")?;
    let mut ids = [0i64; 2];
    let homes = [
        (
            "BP-2026-0142",
            "Maria",
            "Lindqvist",
            "maria.l@example.net",
            "2417 Alpine Dr",
            "Boulder",
            "80304",
        ),
        (
            "BP-2026-0143",
            "Tom",
            "Barrera",
            "tbarrera@example.org",
            "88 Cottonwood Ln",
            "Longmont",
            "80501",
        ),
    ];
    for (slot, (alt_id, first, last, email, street, city, zip)) in ids.iter_mut().zip(homes) {
        let row = transaction
            .query_one(
                insert_job,
                &[
                    &alt_id,
                    &FIRST_COMPANY,
                    &PROGRAM,
                    &first,
                    &last,
                    &email,
                    &street,
                    &city,
                    &zip,
                ],
            )
            .await
            .context("the write for NEW_JOB_CREATED failed")?;
        *slot = row.get(0);
        transaction
            .execute(system_post, &[&*slot])
            .await
            .context("cannot insert the system post of a new job")?;
    }
    transaction
        .commit()
        .await
        .context("cannot commit the new jobs")?;
    Ok(ids)
}

async fn post_file(client: &Client, job: i64) -> anyhow::Result<()> {
    let sql = "INSERT INTO chats (job_id, account_id, file_name, file_uuid, file_url, created_at) \
               SELECT $1, 125, 'attic-insulation.jpg', id, \
                      'https://files.example.com/uploads/' || id || '/attic-insulation.jpg', now() \
               FROM (SELECT gen_random_uuid() AS id) AS upload";
    client
        .execute(sql, &[&job])
        .await
        .context("the write for CHAT_POSTED (file) failed")?;
    Ok(())
}

/// Creates a ticket in `Draft`, then submits it for review, which raises
/// TICKET_STATUS_CHANGED.
async fn change_ticket_status(client: &Client, job: i64) -> anyhow::Result<()> {
    let row = client
        .query_one(
            "INSERT INTO tickets (job_id, template_id, updated_by) VALUES ($1, 41, 125) RETURNING id",
            &[&job],
        )
        .await
        .context("cannot create a ticket")?;
    let ticket: i64 = row.get(0);
    client
        .execute(
            "UPDATE tickets SET status = 'Submitted for Review', updated_by = 126, \
             updated_at = now() WHERE id = $1",
            &[&ticket],
        )
        .await
        .context("the write for TICKET_STATUS_CHANGED failed")?;
    Ok(())
}

/// Requests a PING the way the application does: a transactional logical
/// decoding message with prefix `walhook`.
async fn emit_ping(client: &Client, subscription: i64, jobs: &[i64]) -> anyhow::Result<()> {
    let message = serde_json::json!({
        "event": EventKind::Ping.as_str(),
        "subscription": subscription,
        "jobs": jobs,
    });
    client
        .execute(
            "SELECT pg_logical_emit_message(true, 'walhook', $1::text)",
            &[&message.to_string()],
        )
        .await
        .context("the write for PING failed")?;
    Ok(())
}

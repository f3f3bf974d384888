//! Rule tests on hand-built row changes of the example schema.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;

use super::*;
use crate::changes::{Relation, RowChange};
use crate::config::{JobsTable, TicketsTable};
use crate::payload::EventKind;
use crate::pgoutput::{
    Column, ColumnValue, Oid, OldTuple, RelationBody, ReplicaIdentity, TupleData,
};
use crate::routing::Owner;

const JOB_COLUMNS: [&str; 11] = [
    "id",
    "alt_id",
    "account_id",
    "company_id",
    "program_id",
    "stage_id",
    "stage_changed_at",
    "first_modeled_at",
    "address_1",
    "city",
    "notes",
];

fn jobs_table() -> JobsTable {
    JobsTable {
        table: "public.jobs".into(),
        id: "id".into(),
        alt_id: Some("alt_id".into()),
        account: "account_id".into(),
        company: "company_id".into(),
        program: Some("program_id".into()),
        stage: "stage_id".into(),
        stage_changed_at: "stage_changed_at".into(),
        first_modeled: Some("first_modeled_at".into()),
        address: vec!["address_1".into(), "city".into()],
    }
}

fn relation(name: &str, columns: &[&str]) -> Arc<Relation> {
    Arc::new(Relation::from_body(RelationBody {
        rel_id: Oid(16384),
        namespace: "public".into(),
        name: name.into(),
        replica_identity: ReplicaIdentity::Full,
        columns: columns
            .iter()
            .map(|name| Column {
                is_key: *name == "id",
                name: (*name).into(),
                type_oid: Oid(25),
                type_modifier: -1,
            })
            .collect(),
    }))
}

/// Builds a tuple: `None` is NULL, `Some("\u{0}u")` an unchanged TOAST value.
fn tuple(values: &[Option<&str>]) -> TupleData {
    TupleData(
        values
            .iter()
            .map(|value| match value {
                None => ColumnValue::Null,
                Some("\u{0}u") => ColumnValue::UnchangedToast,
                Some(text) => ColumnValue::Text(Bytes::copy_from_slice(text.as_bytes())),
            })
            .collect(),
    )
}

fn job_row<'a>(stage: &'a str, company: &'a str, notes: &'a str) -> Vec<Option<&'a str>> {
    vec![
        Some("48604"),
        Some("234552"),
        Some("1"),
        Some(company),
        Some("9"),
        Some(stage),
        Some("2021-05-20 05:15:19+00"),
        None,
        Some("1 Main St"),
        Some("Boulder"),
        Some(notes),
    ]
}

fn job_update(old: Vec<Option<&str>>, new: Vec<Option<&str>>) -> RowChange {
    RowChange::update(
        relation("jobs", &JOB_COLUMNS),
        Some(OldTuple::Full(tuple(&old))),
        tuple(&new),
    )
}

fn kinds(events: &[Event]) -> Vec<EventKind> {
    events.iter().map(|event| event.kind).collect()
}

#[test]
fn insert_raises_new_job_created() {
    let change = RowChange::insert(
        relation("jobs", &JOB_COLUMNS),
        tuple(&job_row("1", "3", "")),
    );
    let events = jobs::events(&change, &jobs_table()).expect("rule runs");
    assert_eq!(kinds(&events), vec![EventKind::NewJobCreated]);
    assert_eq!(
        events[0].item.to_value(),
        json!({"id": 48604, "altId": "234552"})
    );
    assert_eq!(
        events[0].audience,
        Audience::Owners(vec![Owner::Company(3), Owner::Program(9)])
    );
}

#[test]
fn stage_change_carries_both_stages_and_timestamps() {
    let old = job_row("4", "3", "");
    let mut new = job_row("6", "3", "");
    new[6] = Some("2021-05-20 05:15:23.457891+00");
    let events = jobs::events(&job_update(old, new), &jobs_table()).expect("rule runs");
    assert_eq!(kinds(&events), vec![EventKind::StageChanged]);
    let expected = json!({
        "jobId": 48604,
        "previousStage": 4,
        "newStage": 6,
        "previousStageTimestamp": "2021-05-20T05:15:19.000Z",
        "newStageTimestamp": "2021-05-20T05:15:23.457Z",
    });
    assert_eq!(events[0].item.to_value(), expected);
}

#[test]
fn update_without_watched_change_sends_nothing() {
    let events = jobs::events(
        &job_update(job_row("4", "3", "a"), job_row("4", "3", "b")),
        &jobs_table(),
    )
    .expect("rule runs");
    assert!(events.is_empty(), "got {events:?}");
}

#[test]
fn unchanged_toast_is_no_change_and_keeps_old_value() {
    let old = job_row("4", "3", "long notes");
    let mut new = job_row("5", "3", "");
    new[10] = Some("\u{0}u");
    new[9] = Some("\u{0}u");
    let change = job_update(old, new);
    assert_eq!(
        change.new_value("notes").expect("old value used"),
        Some("long notes")
    );
    let events = jobs::events(&change, &jobs_table()).expect("rule runs");
    assert_eq!(
        kinds(&events),
        vec![EventKind::StageChanged],
        "a TOAST city must not be an address change"
    );
}

#[test]
fn first_modeling_fires_once() {
    let old = job_row("4", "3", "");
    let mut new = job_row("4", "3", "");
    new[7] = Some("2021-06-01 10:00:00+00");
    let events = jobs::events(&job_update(old, new.clone()), &jobs_table()).expect("rule runs");
    assert_eq!(kinds(&events), vec![EventKind::JobFirstTimeModeled]);

    let mut remodeled = new.clone();
    remodeled[7] = Some("2021-06-02 10:00:00+00");
    let events = jobs::events(&job_update(new, remodeled), &jobs_table()).expect("rule runs");
    assert!(
        events.is_empty(),
        "a second model is not the first: {events:?}"
    );
}

#[test]
fn first_modeled_boolean_false_is_not_set() {
    let mut old = job_row("4", "3", "");
    old[7] = Some("f");
    let mut new = old.clone();
    new[7] = Some("t");
    let events = jobs::events(&job_update(old, new), &jobs_table()).expect("rule runs");
    assert_eq!(kinds(&events), vec![EventKind::JobFirstTimeModeled]);
}

#[test]
fn address_and_account_changes() {
    let old = job_row("4", "3", "");
    let mut new = job_row("4", "3", "");
    new[8] = Some("2 Pine Rd");
    new[2] = Some("26");
    let events = jobs::events(&job_update(old, new), &jobs_table()).expect("rule runs");
    assert_eq!(
        kinds(&events),
        vec![EventKind::AddressChanged, EventKind::JobTransferred]
    );
    assert_eq!(
        events[1].item.to_value(),
        json!({"id": 48604, "altId": "234552", "accountIdFrom": 1, "accountIdTo": 26})
    );
}

#[test]
fn company_transfer_goes_to_both_companies() {
    let events = jobs::events(
        &job_update(job_row("4", "1", ""), job_row("4", "3464", "")),
        &jobs_table(),
    )
    .expect("rule runs");
    assert_eq!(
        kinds(&events),
        vec![EventKind::JobTransferredToOtherCompany]
    );
    let owners = vec![Owner::Company(1), Owner::Company(3464), Owner::Program(9)];
    assert_eq!(events[0].audience, Audience::Owners(owners));
    assert_eq!(events[0].item.to_value()["companyIdFrom"], json!(1));
    assert_eq!(events[0].item.to_value()["companyIdTo"], json!(3464));
}

#[test]
fn dropped_watched_column_is_an_error_not_a_change() {
    let columns = [
        "id",
        "alt_id",
        "account_id",
        "company_id",
        "program_id",
        "stage_changed_at",
    ];
    let row = [
        Some("1"),
        None,
        Some("1"),
        Some("3"),
        None,
        Some("2021-05-20 05:15:19+00"),
    ];
    let change = RowChange::update(
        relation("jobs", &columns),
        Some(OldTuple::Full(tuple(&row))),
        tuple(&row),
    );
    let err = jobs::events(&change, &jobs_table()).expect_err("stage column is gone");
    assert!(err.to_string().contains("`stage_id`"), "{err}");
}

#[test]
fn ticket_status_change() {
    let table = TicketsTable {
        table: "public.tickets".into(),
        id: "id".into(),
        job_id: "job_id".into(),
        template_id: "template_id".into(),
        status: "status".into(),
        changed_by: "updated_by".into(),
        changed_at: "updated_at".into(),
    };
    let columns = [
        "id",
        "job_id",
        "template_id",
        "status",
        "updated_by",
        "updated_at",
    ];
    let old = [
        Some("37"),
        Some("48586"),
        Some("18"),
        Some("Draft"),
        Some("125"),
        Some("2021-06-01 07:01:51+00"),
    ];
    let new = [
        Some("37"),
        Some("48586"),
        Some("18"),
        Some("Submitted for Review"),
        Some("125"),
        Some("2021-06-02 07:01:51+00"),
    ];
    let change = RowChange::update(
        relation("tickets", &columns),
        Some(OldTuple::Full(tuple(&old))),
        tuple(&new),
    );
    let job = JobInfo {
        id: 48586,
        alt_id: None,
        company: Some(3),
        program: None,
    };
    let events = tickets::events(&change, &table, &job).expect("rule runs");
    let expected = json!({
        "jobId": 48586, "ticketId": 37, "fromTemplateId": 18, "statusFrom": "Draft",
        "statusTo": "Submitted for Review", "changedByAccountId": 125, "changedAt": "2021-06-02T07:01:51.000Z",
    });
    assert_eq!(events[0].item.to_value(), expected);
}

//! Decoding of messages captured from PostgreSQL 15.18 with
//! `pg_logical_slot_peek_binary_changes(…, 'proto_version', '1', 'publication_names',
//! 'p', 'messages', 'true')`, one file per message under `testdata/`.
//! `testdata/capture.sql` holds the statements that produced them.

use bytes::Bytes;

use super::*;
use crate::replication::Lsn;

const JOBS: Oid = Oid(16391);
const CHATS: Oid = Oid(16398);
const JOB_STAGE: Oid = Oid(16385);
const COMMIT_TIME: i64 = 849_708_553_167_874;
const TOAST_LEN: usize = 10_240;

fn captured(bytes: &'static [u8]) -> Bytes {
    Bytes::from_static(bytes)
}

fn text(value: &'static str) -> ColumnValue {
    ColumnValue::Text(Bytes::from_static(value.as_bytes()))
}

fn decode_ok(data: &Bytes) -> Message {
    match decode(data) {
        Ok(message) => message,
        Err(error) => panic!("captured message failed to decode: {error}"),
    }
}

/// Checks the 10 kB TOASTed `body` value: `string_agg(md5(i::text), '')` for i in 1..=320.
fn assert_toast_body(value: &ColumnValue) {
    let body = value
        .as_str()
        .expect("body is a text value")
        .expect("body is UTF-8");
    assert_eq!(body.len(), TOAST_LEN, "body length");
    assert!(
        body.starts_with("c4ca4238a0b923820dcc509a6f75849b"),
        "body starts with md5('1')"
    );
    assert!(
        body.ends_with("320722549d1751cf3f247855f937b982"),
        "body ends with md5('320')"
    );
}

fn jobs_row_before_update() -> [ColumnValue; 7] {
    [
        text("48604"),
        text("4"),
        text("audit"),
        ColumnValue::Null,
        ColumnValue::Null, // `body`, which assert_toast_body checks
        text("2021-05-20 05:15:19+00"),
        text("t"),
    ]
}

/// Compares a `jobs` row column by column, skipping the TOASTed `body` at index 4.
fn assert_jobs_row(tuple: &TupleData, expected: &[ColumnValue; 7]) {
    assert_eq!(tuple.0.len(), 7, "jobs has 7 columns");
    for (index, (actual, expected)) in tuple.0.iter().zip(expected).enumerate() {
        if index == 4 {
            continue;
        }
        assert_eq!(actual, expected, "jobs column {index}");
    }
}

#[test]
fn begin_fields() {
    let message = decode_ok(&captured(include_bytes!("testdata/begin.bin")));

    let expected = BeginBody {
        final_lsn: Lsn::from_u64(0x0153_40E0),
        commit_time: COMMIT_TIME,
        xid: 730,
    };
    assert_eq!(message, Message::Begin(expected));
}

#[test]
fn commit_fields() {
    let message = decode_ok(&captured(include_bytes!("testdata/commit.bin")));

    let expected = CommitBody {
        flags: 0,
        commit_lsn: Lsn::from_u64(0x0153_40E0),
        end_lsn: Lsn::from_u64(0x0153_4110),
        commit_time: COMMIT_TIME,
    };
    assert_eq!(message, Message::Commit(expected));
}

#[test]
fn origin_fields() {
    let message = decode_ok(&captured(include_bytes!("testdata/origin.bin")));

    let expected = OriginBody {
        commit_lsn: Lsn::from_u64(0x1234_ABCD),
        name: "upstream".to_owned(),
    };
    assert_eq!(message, Message::Origin(expected));
}

#[test]
fn type_fields() {
    let message = decode_ok(&captured(include_bytes!("testdata/type.bin")));

    let expected = TypeBody {
        oid: JOB_STAGE,
        namespace: "public".to_owned(),
        name: "job_stage".to_owned(),
    };
    assert_eq!(message, Message::Type(expected));
}

#[test]
fn relation_with_replica_identity_full() {
    let Message::Relation(relation) =
        decode_ok(&captured(include_bytes!("testdata/relation_jobs.bin")))
    else {
        panic!("expected a Relation message");
    };

    assert_eq!(relation.rel_id, JOBS);
    assert_eq!(relation.namespace, "public");
    assert_eq!(relation.name, "jobs");
    assert_eq!(relation.replica_identity, ReplicaIdentity::Full);

    let expected = [
        ("id", 20),
        ("stage", 23),
        ("phase", JOB_STAGE.0),
        ("note", 25),
        ("body", 25),
        ("modeled_at", 1184),
        ("active", 16),
    ];
    assert_eq!(relation.columns.len(), expected.len(), "column count");
    for (column, (name, type_oid)) in relation.columns.iter().zip(expected) {
        assert_eq!(column.name, name);
        assert_eq!(column.type_oid, Oid(type_oid), "type of `{name}`");
        assert_eq!(column.type_modifier, -1, "type modifier of `{name}`");
        assert!(column.is_key, "`{name}` is key under REPLICA IDENTITY FULL");
    }
}

#[test]
fn relation_with_replica_identity_default() {
    let message = decode_ok(&captured(include_bytes!("testdata/relation_chats.bin")));

    let expected = RelationBody {
        rel_id: CHATS,
        namespace: "public".to_owned(),
        name: "chats".to_owned(),
        replica_identity: ReplicaIdentity::Default,
        columns: vec![
            Column {
                is_key: true,
                name: "id".to_owned(),
                type_oid: Oid(23),
                type_modifier: -1,
            },
            Column {
                is_key: false,
                name: "message".to_owned(),
                type_oid: Oid(25),
                type_modifier: -1,
            },
        ],
    };
    assert_eq!(message, Message::Relation(expected));
}

#[test]
fn insert_with_toasted_value() {
    let data = captured(include_bytes!("testdata/insert_jobs.bin"));
    let Message::Insert(insert) = decode_ok(&data) else {
        panic!("expected an Insert message");
    };

    assert_eq!(insert.rel_id, JOBS);
    assert_jobs_row(&insert.new, &jobs_row_before_update());
    assert_toast_body(&insert.new.0[4]);

    let ColumnValue::Text(body) = &insert.new.0[4] else {
        panic!("body is a text value");
    };
    let input = data.as_ptr_range();
    assert!(
        input.contains(&body.as_ptr()),
        "text values are slices of the input"
    );
}

#[test]
fn update_full_with_unchanged_toast() {
    let Message::Update(update) = decode_ok(&captured(include_bytes!("testdata/update_full.bin")))
    else {
        panic!("expected an Update message");
    };
    assert_eq!(update.rel_id, JOBS);

    let Some(OldTuple::Full(old)) = &update.old else {
        panic!(
            "REPLICA IDENTITY FULL sends the whole old row, got {:?}",
            update.old
        );
    };
    assert_jobs_row(old, &jobs_row_before_update());
    assert_toast_body(&old.0[4]);

    let new = [
        text("48604"),
        text("6"),
        text("audit"),
        text("moved"),
        ColumnValue::UnchangedToast,
        text("2021-05-20 05:15:19+00"),
        text("t"),
    ];
    assert_eq!(update.new.0, new, "new row with the unchanged TOASTed body");
}

#[test]
fn update_without_old_row() {
    let message = decode_ok(&captured(include_bytes!("testdata/update_without_old.bin")));

    let expected = UpdateBody {
        rel_id: CHATS,
        old: None,
        new: TupleData(vec![text("2"), text("Edited.")]),
    };
    assert_eq!(message, Message::Update(expected));
}

#[test]
fn update_of_key_sends_old_key() {
    let message = decode_ok(&captured(include_bytes!("testdata/update_key.bin")));

    let expected = UpdateBody {
        rel_id: CHATS,
        old: Some(OldTuple::Key(TupleData(vec![text("2"), ColumnValue::Null]))),
        new: TupleData(vec![text("3"), text("Edited.")]),
    };
    assert_eq!(message, Message::Update(expected));
}

#[test]
fn delete_full_row() {
    let Message::Delete(delete) = decode_ok(&captured(include_bytes!("testdata/delete_full.bin")))
    else {
        panic!("expected a Delete message");
    };
    assert_eq!(delete.rel_id, JOBS);

    let OldTuple::Full(old) = &delete.old else {
        panic!(
            "REPLICA IDENTITY FULL sends the whole old row, got {:?}",
            delete.old
        );
    };
    let expected = [
        text("48604"),
        text("6"),
        text("audit"),
        text("moved"),
        ColumnValue::Null, // `body`, which assert_toast_body checks
        text("2021-05-20 05:15:19+00"),
        text("t"),
    ];
    assert_jobs_row(old, &expected);
    assert_toast_body(&old.0[4]);
}

#[test]
fn delete_key_only() {
    let message = decode_ok(&captured(include_bytes!("testdata/delete_key.bin")));

    let expected = DeleteBody {
        rel_id: CHATS,
        old: OldTuple::Key(TupleData(vec![text("3"), ColumnValue::Null])),
    };
    assert_eq!(message, Message::Delete(expected));
}

#[test]
fn truncate_with_options() {
    let message = decode_ok(&captured(include_bytes!("testdata/truncate.bin")));

    let expected = TruncateBody {
        cascade: true,
        restart_identity: true,
        rel_ids: vec![CHATS, JOBS],
    };
    assert_eq!(message, Message::Truncate(expected));
}

#[test]
fn logical_message_transactional() {
    let message = decode_ok(&captured(include_bytes!(
        "testdata/message_transactional.bin"
    )));

    let expected = LogicalMessageBody {
        transactional: true,
        lsn: Lsn::from_u64(0x0153_40E0),
        prefix: "walhook".to_owned(),
        content: Bytes::from_static(b"{}"),
    };
    assert_eq!(message, Message::LogicalMessage(expected));
}

#[test]
fn logical_message_non_transactional() {
    let message = decode_ok(&captured(include_bytes!(
        "testdata/message_non_transactional.bin"
    )));

    let expected = LogicalMessageBody {
        transactional: false,
        lsn: Lsn::from_u64(0x0153_AF20),
        prefix: "walhook".to_owned(),
        content: Bytes::from_static(b"ping"),
    };
    assert_eq!(message, Message::LogicalMessage(expected));
}

const ALL_CAPTURED: [&[u8]; 15] = [
    include_bytes!("testdata/begin.bin"),
    include_bytes!("testdata/commit.bin"),
    include_bytes!("testdata/origin.bin"),
    include_bytes!("testdata/type.bin"),
    include_bytes!("testdata/relation_jobs.bin"),
    include_bytes!("testdata/relation_chats.bin"),
    include_bytes!("testdata/insert_jobs.bin"),
    include_bytes!("testdata/update_full.bin"),
    include_bytes!("testdata/update_without_old.bin"),
    include_bytes!("testdata/update_key.bin"),
    include_bytes!("testdata/delete_full.bin"),
    include_bytes!("testdata/delete_key.bin"),
    include_bytes!("testdata/truncate.bin"),
    include_bytes!("testdata/message_transactional.bin"),
    include_bytes!("testdata/message_non_transactional.bin"),
];

#[test]
fn every_prefix_is_truncated() {
    for bytes in ALL_CAPTURED {
        for len in 0..bytes.len() {
            let prefix = Bytes::copy_from_slice(&bytes[..len]);

            let result = decode(&prefix);

            assert!(
                matches!(
                    result,
                    Err(DecodeError::Truncated { .. } | DecodeError::MissingNul { .. })
                ),
                "message `{}` cut to {len} bytes: {result:?}",
                char::from(bytes[0])
            );
        }
    }
}

#[test]
fn every_extra_byte_is_rejected() {
    for bytes in ALL_CAPTURED {
        let mut longer = bytes.to_vec();
        longer.push(0);

        let result = decode(&Bytes::from(longer));

        let expected = DecodeError::TrailingBytes {
            tag: char::from(bytes[0]),
            count: 1,
        };
        assert_eq!(
            result,
            Err(expected),
            "message `{}` plus one byte",
            char::from(bytes[0])
        );
    }
}

#[test]
fn empty_input_is_truncated() {
    let result = decode(&Bytes::new());

    let expected = DecodeError::Truncated {
        field: "tag",
        offset: 0,
        needed: 1,
        remaining: 0,
    };
    assert_eq!(result, Err(expected));
}

#[test]
fn stream_start_tag_is_unknown() {
    // Stream Start of protocol version 2: tag `S`, xid 730, first segment.
    let data = Bytes::from_static(&[b'S', 0, 0, 0x02, 0xDA, 1]);

    let error = decode(&data).expect_err("protocol version 1 has no `S`");

    assert_eq!(error, DecodeError::UnknownTag { tag: b'S' });
    assert!(
        error.to_string().contains("`S` (0x53)"),
        "the message names the tag: {error}"
    );
}

#[test]
fn binary_value_is_rejected() {
    let mut bytes = include_bytes!("testdata/update_without_old.bin").to_vec();
    let second_value = bytes.len() - "Edited.".len() - 5;
    assert_eq!(bytes[second_value], b't', "kind byte of the second value");
    bytes[second_value] = b'b';

    let result = decode(&Bytes::from(bytes));

    assert_eq!(result, Err(DecodeError::BinaryValue { column: 1 }));
}

#[test]
fn unknown_column_value_kind_is_rejected() {
    let data = Bytes::from_static(&[b'I', 0, 0, 0x40, 0x0E, b'N', 0, 1, b'x']);

    let result = decode(&data);

    let expected = DecodeError::UnexpectedByte {
        field: "column value kind",
        value: b'x',
        expected: "`n`, `u` or `t`",
    };
    assert_eq!(result, Err(expected));
}

#[test]
fn insert_without_new_tuple_is_rejected() {
    let data = Bytes::from_static(&[b'I', 0, 0, 0x40, 0x0E, b'O', 0, 0]);

    let result = decode(&data);

    assert!(
        matches!(
            result,
            Err(DecodeError::UnexpectedByte {
                field: "new tuple kind",
                ..
            })
        ),
        "unexpected result: {result:?}"
    );
}

#[test]
fn unknown_replica_identity_is_rejected() {
    let mut bytes = include_bytes!("testdata/relation_chats.bin").to_vec();
    let identity = 1 + 4 + "public\0chats\0".len();
    assert_eq!(bytes[identity], b'd', "replica identity byte");
    bytes[identity] = b'x';

    let result = decode(&Bytes::from(bytes));

    assert!(
        matches!(
            result,
            Err(DecodeError::UnexpectedByte {
                field: "replica identity",
                ..
            })
        ),
        "unexpected result: {result:?}"
    );
}

#[test]
fn invalid_utf8_names_the_field() {
    let data = Bytes::from_static(b"O\0\0\0\0\x12\x34\xAB\xCDup\xFFstream\0");

    let error = decode(&data).expect_err("invalid UTF-8 in the origin name");

    assert!(
        matches!(
            error,
            DecodeError::InvalidUtf8 {
                field: "origin name",
                ..
            }
        ),
        "unexpected error: {error:?}"
    );
    assert!(
        error.to_string().contains("`origin name`"),
        "message: {error}"
    );
}

#[test]
fn negative_content_length_is_rejected() {
    let data = Bytes::from_static(b"M\x01\0\0\0\0\x01\x53\x40\xE0walhook\0\xFF\xFF\xFF\xFE");

    let result = decode(&data);

    let expected = DecodeError::NegativeLength {
        field: "message content length",
        value: -2,
    };
    assert_eq!(result, Err(expected));
}

#[test]
fn column_value_as_str() {
    assert_eq!(text("moved").as_str(), Some(Ok("moved")));
    assert_eq!(ColumnValue::Null.as_str(), None);
    assert_eq!(ColumnValue::UnchangedToast.as_str(), None);

    let invalid = ColumnValue::Text(Bytes::from_static(b"\xFF"));
    assert!(
        matches!(invalid.as_str(), Some(Err(_))),
        "invalid UTF-8 is an error"
    );
}

-- Statements that produced the captured pgoutput messages in this directory.
--
-- Run against a throwaway PostgreSQL 15 cluster with wal_level = logical, then
-- read the messages, one bytea per row, with:
--
--   SELECT encode(data, 'hex')
--   FROM pg_logical_slot_peek_binary_changes('s', NULL, NULL,
--       'proto_version', '1', 'publication_names', 'p', 'messages', 'true');
--
-- Each .bin file contains one message, decoded from that hex.

CREATE TYPE job_stage AS ENUM ('lead', 'audit', 'retrofit');
CREATE TABLE jobs (
    id bigint PRIMARY KEY,
    stage int NOT NULL,
    phase job_stage,
    note text,
    body text,
    modeled_at timestamptz,
    active boolean
);
-- EXTERNAL stores the 10 kB body out of line and uncompressed, so an UPDATE that
-- leaves it alone sends it as an unchanged TOAST value ('u').
ALTER TABLE jobs ALTER COLUMN body SET STORAGE EXTERNAL;
ALTER TABLE jobs REPLICA IDENTITY FULL;
CREATE TABLE chats (id int PRIMARY KEY, message text);
CREATE PUBLICATION p FOR TABLE jobs, chats;
SELECT pg_create_logical_replication_slot('s', 'pgoutput');

SET TimeZone = 'UTC';

-- begin.bin, type.bin, relation_jobs.bin, insert_jobs.bin,
-- message_transactional.bin, commit.bin
BEGIN;
INSERT INTO jobs VALUES (48604, 4, 'audit', NULL,
    (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 320) AS i),
    '2021-05-20 05:15:19+00', true);
SELECT pg_logical_emit_message(true, 'walhook', '{}');
COMMIT;

-- update_full.bin
UPDATE jobs SET stage = 6, note = 'moved' WHERE id = 48604;
-- delete_full.bin
DELETE FROM jobs WHERE id = 48604;
-- relation_chats.bin
INSERT INTO chats VALUES (1, 'Chat.');
-- truncate.bin
TRUNCATE chats, jobs RESTART IDENTITY CASCADE;
-- message_non_transactional.bin
SELECT pg_logical_emit_message(false, 'walhook', 'ping');

-- origin.bin
SELECT pg_replication_origin_create('upstream');
SELECT pg_replication_origin_session_setup('upstream');
BEGIN;
SELECT pg_replication_origin_xact_setup('0/1234ABCD', '2021-05-20 05:15:23.457123+00');
INSERT INTO chats VALUES (2, 'From upstream.');
COMMIT;
SELECT pg_replication_origin_session_reset();

-- update_without_old.bin
UPDATE chats SET message = 'Edited.' WHERE id = 2;
-- update_key.bin
UPDATE chats SET id = 3 WHERE id = 2;
-- delete_key.bin
DELETE FROM chats WHERE id = 3;

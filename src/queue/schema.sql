-- The durable queue of walhook. `{schema}` is replaced by the quoted
-- `queue.schema` of config.toml. Every statement is idempotent.

CREATE SCHEMA IF NOT EXISTS {schema};

-- Replication progress: the last source transaction whose deliveries are stored.
-- `commit_lsn` is the LSN of its commit record and `end_lsn` the end of that
-- record, which is what walhook reports to the server as flushed.
CREATE TABLE IF NOT EXISTS {schema}.progress (
    slot        text PRIMARY KEY,
    commit_lsn  pg_lsn NOT NULL,
    end_lsn     pg_lsn NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per webhook to send: one event kind, one source transaction, one
-- subscription, at most `delivery.max_batch` items.
CREATE TABLE IF NOT EXISTS {schema}.deliveries (
    id               bigserial PRIMARY KEY,
    webhook_id       text NOT NULL UNIQUE,
    commit_lsn       pg_lsn NOT NULL,
    event_index      integer NOT NULL,
    subscription     text NOT NULL,
    url              text NOT NULL,
    event            text NOT NULL,
    job_ids          bigint[] NOT NULL DEFAULT '{}',
    body             text NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    last_status      integer,
    last_error       text
);

-- The claim walks pending rows in id order and skips those not due from the
-- index alone, without reading their heap tuples.
CREATE INDEX IF NOT EXISTS deliveries_pending_by_id
    ON {schema}.deliveries (id, next_attempt_at) WHERE status = 'pending';
-- Earlier claims read these. Every claim adds an entry to each index on
-- `next_attempt_at`, so the unused ones are dropped.
DROP INDEX IF EXISTS {schema}.deliveries_pending_by_subscription;
DROP INDEX IF EXISTS {schema}.deliveries_pending_due;

-- One row per job id of every pending delivery. A claim finds whether an
-- older pending delivery of the same subscription names a job with one
-- primary key probe per job id. The triggers below keep it in step with
-- `deliveries.status` whatever statement changes a delivery, so the enqueue,
-- record and redelivery statements need not maintain it. It churns with
-- every delivery, so autovacuum visits it early.
CREATE TABLE IF NOT EXISTS {schema}.pending_jobs (
    subscription  text NOT NULL,
    job_id        bigint NOT NULL,
    delivery_id   bigint NOT NULL,
    PRIMARY KEY (subscription, job_id, delivery_id)
) WITH (autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.02);

-- Adds the pairs of the inserted pending rows, once per INSERT statement.
-- NULL job ids are skipped, because the claim never holds a row back on them.
CREATE OR REPLACE FUNCTION {schema}.add_pending_jobs() RETURNS trigger
LANGUAGE plpgsql AS $add$
BEGIN
    INSERT INTO {schema}.pending_jobs (subscription, job_id, delivery_id)
    SELECT n.subscription, j.job_id, n.id
    FROM new_rows n CROSS JOIN LATERAL unnest(n.job_ids) AS j(job_id)
    WHERE n.status = 'pending' AND j.job_id IS NOT NULL
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$add$;

-- Moves the pairs of one updated or deleted row. The row triggers that call
-- it skip unchanged rows in their WHEN clause, so a claim, which changes none
-- of these columns, calls no function.
CREATE OR REPLACE FUNCTION {schema}.move_pending_jobs() RETURNS trigger
LANGUAGE plpgsql AS $move$
BEGIN
    IF OLD.status = 'pending' THEN
        DELETE FROM {schema}.pending_jobs
        WHERE subscription = OLD.subscription AND job_id = ANY (OLD.job_ids)
          AND delivery_id = OLD.id;
    END IF;
    IF TG_OP = 'UPDATE' AND NEW.status = 'pending' THEN
        INSERT INTO {schema}.pending_jobs (subscription, job_id, delivery_id)
        SELECT NEW.subscription, j.job_id, NEW.id
        FROM unnest(NEW.job_ids) AS j(job_id)
        WHERE j.job_id IS NOT NULL
        ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END
$move$;

CREATE OR REPLACE FUNCTION {schema}.clear_pending_jobs() RETURNS trigger
LANGUAGE plpgsql AS $clear$
BEGIN
    TRUNCATE {schema}.pending_jobs;
    RETURN NULL;
END
$clear$;

CREATE OR REPLACE TRIGGER deliveries_add_pending_jobs
    AFTER INSERT ON {schema}.deliveries REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.add_pending_jobs();
CREATE OR REPLACE TRIGGER deliveries_move_pending_jobs_on_update
    AFTER UPDATE OF status, subscription, job_ids ON {schema}.deliveries
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          OR OLD.subscription IS DISTINCT FROM NEW.subscription
          OR OLD.job_ids IS DISTINCT FROM NEW.job_ids)
    EXECUTE FUNCTION {schema}.move_pending_jobs();
CREATE OR REPLACE TRIGGER deliveries_move_pending_jobs_on_delete
    AFTER DELETE ON {schema}.deliveries
    FOR EACH ROW WHEN (OLD.status = 'pending')
    EXECUTE FUNCTION {schema}.move_pending_jobs();
CREATE OR REPLACE TRIGGER deliveries_clear_pending_jobs
    AFTER TRUNCATE ON {schema}.deliveries
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.clear_pending_jobs();

-- Brings a queue created before `pending_jobs` existed, or changed while the
-- triggers were missing, in line with the pending deliveries. This reads
-- every pending delivery, so `walhook setup` takes longer on a deep queue.
DELETE FROM {schema}.pending_jobs p
WHERE NOT EXISTS (
    SELECT 1 FROM {schema}.deliveries d
    WHERE d.id = p.delivery_id AND d.status = 'pending'
      AND d.subscription = p.subscription AND p.job_id = ANY (d.job_ids));
INSERT INTO {schema}.pending_jobs (subscription, job_id, delivery_id)
SELECT d.subscription, j.job_id, d.id
FROM {schema}.deliveries d CROSS JOIN LATERAL unnest(d.job_ids) AS j(job_id)
WHERE d.status = 'pending' AND j.job_id IS NOT NULL
ON CONFLICT DO NOTHING;

-- Every HTTP attempt of a delivery, with a bounded prefix of the response body.
CREATE TABLE IF NOT EXISTS {schema}.attempts (
    delivery_id    bigint NOT NULL REFERENCES {schema}.deliveries (id) ON DELETE CASCADE,
    attempt        integer NOT NULL,
    started_at     timestamptz NOT NULL,
    duration_ms    integer NOT NULL,
    status         integer,
    response_body  text,
    error          text,
    PRIMARY KEY (delivery_id, attempt)
);

-- Source transactions that the operator chose to skip with `walhook skip`,
-- by the LSN of their commit record.
CREATE TABLE IF NOT EXISTS {schema}.skipped_transactions (
    slot        text NOT NULL,
    commit_lsn  pg_lsn NOT NULL,
    reason      text NOT NULL DEFAULT '',
    skipped_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (slot, commit_lsn)
);

-- Subscriptions that a receiver turned off with 410 Gone, until re-enabled.
CREATE TABLE IF NOT EXISTS {schema}.disabled_subscriptions (
    subscription  text PRIMARY KEY,
    reason        text NOT NULL,
    disabled_at   timestamptz NOT NULL DEFAULT now()
);

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

CREATE INDEX IF NOT EXISTS deliveries_pending_by_subscription
    ON {schema}.deliveries (subscription, id) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_pending_due
    ON {schema}.deliveries (next_attempt_at) WHERE status = 'pending';

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

-- Subscriptions that a receiver turned off with 410 Gone, until re-enabled.
CREATE TABLE IF NOT EXISTS {schema}.disabled_subscriptions (
    subscription  text PRIMARY KEY,
    reason        text NOT NULL,
    disabled_at   timestamptz NOT NULL DEFAULT now()
);

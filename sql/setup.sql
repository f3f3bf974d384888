-- Statements that a database administrator runs once so that walhook can
-- follow the application database `app`. `walhook setup --config FILE` creates the
-- publication, the slot and the queue schema itself when the role may;
-- `walhook setup --print` shows its statements instead.
--
-- Server settings first. In postgresql.conf (a restart is needed):
--
--     wal_level = logical
--     max_replication_slots = 10     # at least one for walhook
--     max_wal_senders = 10           # at least one for walhook
--
-- In pg_hba.conf, one line for the replication connection and one for
-- ordinary queries (the queue, the subscriptions, account names):
--
--     host  replication  walhook  10.0.0.0/24  scram-sha-256
--     host  app          walhook  10.0.0.0/24  scram-sha-256
--
-- Then, connected to `app` as a superuser:

-- The role walhook logs in as. REPLICATION lets it stream the WAL and own
-- the slot. Replace the password, or set one with \password walhook.
CREATE ROLE walhook WITH LOGIN REPLICATION PASSWORD 'change-me';

-- Read access to the watched tables, the subscriptions table and the account
-- names that CHAT_POSTED sends.
GRANT USAGE ON SCHEMA public TO walhook;
GRANT SELECT ON public.jobs, public.chats, public.hes_scores, public.tickets,
    public.webhook_subscriptions, public.accounts TO walhook;

-- Every UPDATE of a watched table must carry the old row, so that walhook
-- can tell what changed. The subscriptions table needs only its key.
ALTER TABLE public.jobs REPLICA IDENTITY FULL;
ALTER TABLE public.chats REPLICA IDENTITY FULL;
ALTER TABLE public.hes_scores REPLICA IDENTITY FULL;
ALTER TABLE public.tickets REPLICA IDENTITY FULL;

-- The durable queue lives in its own schema. Either let walhook create it ...
GRANT CREATE ON DATABASE app TO walhook;
-- ... or create it here and give it to walhook:
-- CREATE SCHEMA walhook AUTHORIZATION walhook;

-- The publication names the tables whose changes reach walhook. Creating a
-- publication FOR TABLE needs ownership of the tables, so the administrator
-- runs it. The subscriptions table is included so that walhook follows
-- subscription changes live.
CREATE PUBLICATION walhook FOR TABLE
    public.jobs, public.chats, public.hes_scores, public.tickets,
    public.webhook_subscriptions;

-- The slot keeps the WAL that walhook has not confirmed yet. It retains WAL
-- on the server for as long as walhook is stopped, so drop it
-- (SELECT pg_drop_replication_slot('walhook')) when walhook is removed.
SELECT pg_create_logical_replication_slot('walhook', 'pgoutput');

#!/usr/bin/env bash
# Benchmarks walhook on a throwaway PostgreSQL cluster: catch-up against
# pg_recvlogical, delivery rate, commit-to-receipt latency and peak memory.
#
# usage: bench/run.sh [--quick] [--profile] [--skip-delivery | --delivery-only]
#   --quick          about 5,000 changes and short phases, no targets (for CI)
#   --profile        also run a quick-sized catch-up under valgrind's callgrind
#                    and print the top functions
#   --skip-delivery  skip the delivery and latency phases, so only catch-up
#                    and memory (and the profile, if asked) run
#   --delivery-only  run only the delivery and latency phases. The queue is
#                    filled by SQL with the deliveries that the catch-up would
#                    store (same count, subscriptions, job ids and body sizes),
#                    instead of by a timed catch-up
#
# Environment: PG_BIN (server binaries, default the newest
# /usr/lib/postgresql/*/bin), BENCH_REPEAT (catch-up repetitions, default 3,
# 1 with --quick), BENCH_KEEP=1 (keep the temporary directory).
# Run as root (the server then runs as the `postgres` user) or as a user who
# may run the server binaries. It needs psql, pg_recvlogical, pgbench,
# python3, /usr/bin/time and cargo, and only talks to 127.0.0.1.
set -euo pipefail

MODE=full
PROFILE=false
DELIVERY_PHASES=true
DELIVERY_ONLY=false
for arg in "$@"; do
    case "$arg" in
        --quick) MODE=quick ;;
        --profile) PROFILE=true ;;
        --skip-delivery) DELIVERY_PHASES=false ;;
        --delivery-only) DELIVERY_ONLY=true ;;
        *) echo "bench/run.sh: unknown option \`$arg\`; use --quick, --profile, --skip-delivery or --delivery-only" >&2; exit 2 ;;
    esac
done
if [ "$DELIVERY_PHASES" = false ] && [ "$DELIVERY_ONLY" = true ]; then
    echo "bench/run.sh: --skip-delivery and --delivery-only exclude each other" >&2
    exit 2
fi
if [ "$PROFILE" = true ] && [ "$DELIVERY_ONLY" = true ]; then
    echo "bench/run.sh: --profile profiles the catch-up, which --delivery-only skips" >&2
    exit 2
fi

# Workload sizes. Catch-up changes = INSERT_TXS * 100 + 2 * SINGLE_TXS.
COMPANIES=64
if [ "$MODE" = full ]; then
    INSERT_TXS=1000          # 100,000 job inserts, 100 per transaction
    SINGLE_TXS=100000        # 100,000 stage updates + 100,000 chat inserts
    REPEAT=${BENCH_REPEAT:-3}
    RECEIVER_LOAD_SECONDS=5
    DELIVERY_SECONDS=30
    LATENCY_SECONDS=30
    BIG_TX_ROWS=1000000
    CATCH_UP_TIMEOUT=1800
else
    INSERT_TXS=20
    SINGLE_TXS=1500
    REPEAT=${BENCH_REPEAT:-1}
    RECEIVER_LOAD_SECONDS=1
    DELIVERY_SECONDS=5
    LATENCY_SECONDS=3
    BIG_TX_ROWS=20000
    CATCH_UP_TIMEOUT=120
fi
LATENCY_RATE=200
CHANGES=$((INSERT_TXS * 100 + 2 * SINGLE_TXS))
DELIVERIES=$((INSERT_TXS + 2 * SINGLE_TXS))

REPO=$(cd "$(dirname "$0")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
WALHOOK=$TARGET_DIR/release/walhook
RECEIVER=$TARGET_DIR/release/examples/bench-receiver
PG_BIN=${PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}

fail() {
    echo "bench/run.sh: $*" >&2
    exit 1
}

step() {
    printf '\n==> %s (load %s)\n' "$1" "$(load_average)" >&2
}

load_average() {
    cut -d' ' -f1-3 /proc/loadavg
}

now() {
    date +%s.%N
}

# Prints $1 - $2 with millisecond precision.
seconds_between() {
    python3 -c "import sys; print(f'{float(sys.argv[1]) - float(sys.argv[2]):.3f}')" "$1" "$2"
}

# Records one result line and prints it.
result() {
    printf '%-44s %s\n' "$1" "$2" | tee -a "$WORK/results.txt"
}

# --- setup -----------------------------------------------------------------

[ -x "$PG_BIN/initdb" ] || fail "no PostgreSQL server binaries in \`$PG_BIN\`: install postgresql or set PG_BIN"
for tool in python3 /usr/bin/time cargo; do
    command -v "$tool" >/dev/null || fail "\`$tool\` not found: install it"
done
if [ "$PROFILE" = true ]; then
    # Under callgrind walhook runs about 50 times slower.
    [ "$MODE" = quick ] || fail "--profile needs --quick: callgrind is too slow for the full backlog"
    command -v valgrind >/dev/null || fail "--profile needs valgrind: apt-get install valgrind"
fi

step "building walhook and bench-receiver (cargo build --release)"
(cd "$REPO" && cargo build --release --quiet --bin walhook --example bench-receiver)

WORK=$(mktemp -d /tmp/walhook-bench-XXXXXX)
chmod 755 "$WORK"
PG_DATA=$WORK/pg
WALHOOK_PID=
RECEIVER_PID=

cleanup() {
    [ -n "$WALHOOK_PID" ] && kill -KILL "$WALHOOK_PID" 2>/dev/null
    [ -n "$RECEIVER_PID" ] && kill "$RECEIVER_PID" 2>/dev/null
    if [ -f "$PG_DATA/postmaster.pid" ]; then
        as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -m immediate stop >/dev/null 2>&1 || true
    fi
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        echo "kept $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# PostgreSQL rejects running as root, so root runs the server as `postgres`.
as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

PG_PORT=$(free_port)
step "starting PostgreSQL ($("$PG_BIN/postgres" --version)) on 127.0.0.1:$PG_PORT"
mkdir "$PG_DATA"
[ "$(id -u)" -eq 0 ] && chown postgres: "$PG_DATA"
as_postgres "$PG_BIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 >"$WORK/initdb.log" 2>&1 ||
    fail "initdb failed, see $WORK/initdb.log (run with BENCH_KEEP=1 to keep it)"
# fsync off: the cluster is thrown away. Autovacuum stays on as in
# production, because the queue's claim query depends on fresh statistics.
cat >>"$PG_DATA/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_DATA'
wal_level = logical
max_wal_senders = 20
max_replication_slots = 20
fsync = off
full_page_writes = off
shared_buffers = 256MB
max_wal_size = 8GB
EOF
as_postgres "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_DATA/server.log" -w start >/dev/null ||
    fail "the server did not start, see $PG_DATA/server.log"

psql_db() {
    local db=$1
    shift
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$db" "$@"
}

query() {
    psql_db app -At -c "$1"
}

psql_db postgres -c "CREATE DATABASE app"
psql_db app -f "$REPO/sql/schema.sql" >/dev/null

RECEIVER_PORT_FILE=$WORK/receiver.port
"$RECEIVER" serve "$RECEIVER_PORT_FILE" &
RECEIVER_PID=$!
for _ in $(seq 50); do [ -s "$RECEIVER_PORT_FILE" ] && break; sleep 0.1; done
[ -s "$RECEIVER_PORT_FILE" ] || fail "bench-receiver did not start"
RECEIVER_URL=http://127.0.0.1:$(cat "$RECEIVER_PORT_FILE")

# The role, grants and publication of sql/setup.sql, with trust auth. One
# company subscription, to all events, per company: walhook sends one webhook
# at a time per subscription, so 64 subscriptions allow 64 in flight.
psql_db app >/dev/null <<EOF
CREATE ROLE walhook WITH LOGIN REPLICATION;
GRANT USAGE ON SCHEMA public TO walhook;
GRANT SELECT ON public.jobs, public.chats, public.hes_scores, public.tickets,
    public.webhook_subscriptions, public.accounts TO walhook;
GRANT CREATE ON DATABASE app TO walhook;
CREATE PUBLICATION walhook FOR TABLE
    public.jobs, public.chats, public.hes_scores, public.tickets,
    public.webhook_subscriptions;
INSERT INTO companies (id, name)
    SELECT 1000 + c, 'Bench Company ' || c FROM generate_series(0, $COMPANIES - 1) c;
INSERT INTO webhook_subscriptions (company_id, url, secret)
    SELECT 1000 + c, '$RECEIVER_URL/hook/' || c, 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw'
    FROM generate_series(0, $COMPANIES - 1) c;
EOF

# Writes the config of repetition $1 (slot and queue schema walhook_$1) to
# stdout, from the repository's config.toml. The 64 subscriptions stand for
# 64 receivers but share the receiver's host:port, which walhook counts as
# one endpoint, so per_endpoint_concurrency is raised to 64 to match.
write_config() {
    local url="postgres://walhook@127.0.0.1:$PG_PORT/app?sslmode=disable"
    sed -e "s|^url = \"postgres://walhook@127.0.0.1:5432/app?sslmode=disable\"|url = \"$url\"\nstatus_interval = \"1s\"|" \
        -e "s|^slot = \"walhook\"|slot = \"walhook_$1\"|" \
        -e "s|^schema = \"walhook\"|schema = \"walhook_$1\"|" \
        -e "s|^allow_private_targets = false|allow_private_targets = true|" \
        -e "s|^per_endpoint_concurrency = 8|per_endpoint_concurrency = 64|" \
        -e "s|^listen = .*|listen = \"127.0.0.1:0\"|" \
        -e "s|^filter = \"info\"|filter = \"warn\"|" \
        "$REPO/config.toml"
}

# With --delivery-only, the jobs exist before the slot does, so walhook never
# decodes their inserts. They get the ids and companies of the workload below.
if [ "$DELIVERY_ONLY" = true ]; then
    REPEAT=1
    query "INSERT INTO jobs (alt_id, company_id, first_name, last_name, address_1, city, state, zip)
           SELECT 'B-' || i, 1000 + ((i - 1) / 100 + 1) % $COMPANIES, 'Pat', 'Lee', i || ' Main St',
                  'Denver', 'CO', '80202'
           FROM generate_series(1, $INSERT_TXS * 100) i" >/dev/null
fi

# Creates, per repetition, walhook's slot and queue schema (walhook setup)
# and a pg_recvlogical slot, with no write in between, so both slots start
# before the same transactions.
RUNS=$REPEAT
[ "$PROFILE" = true ] && RUNS=$((REPEAT + 1))
for run in $(seq "$RUNS"); do
    write_config "$run" >"$WORK/walhook_$run.toml"
    for key in "walhook_$run" "127.0.0.1:$PG_PORT" 'allow_private_targets = true' 'status_interval' \
        'per_endpoint_concurrency = 64'; do
        grep -q "$key" "$WORK/walhook_$run.toml" || fail "config.toml changed: cannot set \`$key\` in the bench config"
    done
    "$WALHOOK" setup --config "$WORK/walhook_$run.toml" >"$WORK/setup_$run.log" 2>&1 ||
        fail "walhook setup failed, see $WORK/setup_$run.log"
    query "SELECT pg_create_logical_replication_slot('recvlogical_$run', 'pgoutput')" >/dev/null
done
query "SELECT slot_name, confirmed_flush_lsn FROM pg_replication_slots ORDER BY slot_name" >"$WORK/slots.txt"

# Fills the queue of repetition 1 with the deliveries that a catch-up of the
# workload below stores: one NEW_JOB_CREATED of 100 jobs per insert
# transaction, then alternating STAGE_CHANGED and CHAT_POSTED of one job, for
# the subscription of the job's company. Bodies have the size of the real
# ones; the receiver does not parse them in the delivery phase.
fill_queue() {
    psql_db app >/dev/null <<EOF
INSERT INTO walhook_1.deliveries (webhook_id, commit_lsn, event_index, subscription, url, event, job_ids, body)
SELECT 'msg_bench_new_' || t, '0/1', 0, 'sub_' || s.id, s.url, 'NEW_JOB_CREATED',
       ARRAY(SELECT (t - 1) * 100 + i FROM generate_series(1, 100) i)::bigint[],
       '{"event":"NEW_JOB_CREATED","jobs":[' || repeat('{"id":100000,"altId":"B-1000-100"},', 99)
           || '{"id":100000,"altId":"B-1000-100"}]}'
FROM generate_series(1, $INSERT_TXS) t
JOIN webhook_subscriptions s ON s.company_id = 1000 + t % $COMPANIES
ORDER BY t;
INSERT INTO walhook_1.deliveries (webhook_id, commit_lsn, event_index, subscription, url, event, job_ids, body)
SELECT 'msg_bench_' || v.kind || '_' || i, '0/1', 0, 'sub_' || s.id, s.url, v.kind, ARRAY[v.job],
       '{"event":"' || v.kind || '","jobs":[{"jobId":' || v.job || ',"previousStage":4,"newStage":6,'
           || '"previousStageTimestamp":"2021-05-20T05:15:19.000Z","newStageTimestamp":"2021-05-20T05:15:23.457Z"}]}'
FROM generate_series(1, $SINGLE_TXS) i,
     LATERAL (VALUES (1, 'STAGE_CHANGED', 1 + (i::bigint * 7919) % ($INSERT_TXS * 100)),
                     (2, 'CHAT_POSTED', 1 + (i::bigint * 104729) % ($INSERT_TXS * 100))) AS v(position, kind, job)
JOIN webhook_subscriptions s ON s.company_id = 1000 + ((v.job - 1) / 100 + 1) % $COMPANIES
ORDER BY i, v.position;
EOF
}

if [ "$DELIVERY_ONLY" = false ]; then
# --- workload ----------------------------------------------------------------

step "writing $CHANGES row changes in $((INSERT_TXS + 2 * SINGLE_TXS)) transactions"
started=$(now)
psql_db app >/dev/null <<EOF
-- Job inserts, 100 per transaction, each transaction for one company.
DO \$\$ BEGIN
    FOR t IN 1..$INSERT_TXS LOOP
        INSERT INTO jobs (alt_id, company_id, first_name, last_name, address_1, city, state, zip)
        SELECT 'B-' || t || '-' || i, 1000 + t % $COMPANIES, 'Pat', 'Lee', i || ' Main St',
               'Denver', 'CO', '80202'
        FROM generate_series(1, 100) i;
        COMMIT;
    END LOOP;
END \$\$;
-- Alternating single-row transactions: a stage update, then a chat post.
DO \$\$ DECLARE
    max_id bigint;
BEGIN
    SELECT max(id) INTO max_id FROM jobs;
    FOR i IN 1..$SINGLE_TXS LOOP
        UPDATE jobs SET stage_id = stage_id % 10 + 1, stage_changed_at = clock_timestamp()
        WHERE id = 1 + (i::bigint * 7919) % max_id;
        COMMIT;
        INSERT INTO chats (job_id, account_id, message)
        VALUES (1 + (i::bigint * 104729) % max_id, 125, 'Blower door test scheduled for Tuesday');
        COMMIT;
    END LOOP;
END \$\$;
EOF
END_LSN=$(query "SELECT pg_current_wal_lsn()")
result "workload write time (s)" "$(seconds_between "$(now)" "$started")"
result "backlog WAL (MB)" "$(query "SELECT round(pg_wal_lsn_diff('$END_LSN', confirmed_flush_lsn) / 1048576.0, 1) FROM pg_replication_slots WHERE slot_name = 'recvlogical_1'")"

fi

# --- walhook process helpers ------------------------------------------------

# Starts `walhook run` with the config of repetition $1; extra arguments go
# before it (a wrapper such as valgrind).
start_walhook() {
    local run=$1
    shift
    "$@" "$WALHOOK" run --config "$WORK/walhook_$run.toml" 2>>"$WORK/walhook_$run.log" &
    WALHOOK_PID=$!
}

# Stops walhook with SIGTERM, which drains in-flight deliveries. After
# STOP_TIMEOUT seconds it records the overrun and kills walhook.
STOP_TIMEOUT=60
stop_walhook() {
    local started killed=false
    started=$(date +%s)
    kill -TERM "$WALHOOK_PID"
    while kill -0 "$WALHOOK_PID" 2>/dev/null; do
        if [ $(($(date +%s) - started)) -ge "$STOP_TIMEOUT" ]; then
            result "walhook still running ${STOP_TIMEOUT}s after SIGTERM" "killed"
            kill -KILL "$WALHOOK_PID"
            killed=true
            break
        fi
        sleep 0.2
    done
    if ! wait "$WALHOOK_PID" && [ "$killed" = false ]; then
        fail "walhook exited with an error, see $WORK/walhook_*.log"
    fi
    WALHOOK_PID=
}

# CPU time (user + system) of a process so far, in seconds.
cpu_seconds() {
    awk -v ticks="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / ticks }' "/proc/$1/stat"
}

# Prints one line per server process of the role walhook: CPU time so far,
# backend type and the start of its last query. These are the walsender, the
# outbox and delivery connections to the queue and the lookup connection.
walhook_backends_cpu() {
    query "SELECT pid, backend_type, left(regexp_replace(query, '\s+', ' ', 'g'), 40)
           FROM pg_stat_activity WHERE usename = 'walhook' ORDER BY pid" |
        while IFS='|' read -r pid type last_query; do
            printf '%s s  %s  %s\n' "$(cpu_seconds "$pid" 2>/dev/null || echo '?')" "$type" "$last_query"
        done
}

# Peak resident set size of a process so far, in MB.
peak_rss_mb() {
    awk '/^VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"
}

# Waits until walhook of repetition $1 stored or confirmed everything up to
# $2, polling every 0.2 s, for at most $3 seconds.
wait_caught_up() {
    local run=$1 lsn=$2 timeout=$3 deadline
    deadline=$(($(date +%s) + timeout))
    local sql="SELECT coalesce((SELECT end_lsn >= '$lsn' FROM walhook_$run.progress WHERE slot = 'walhook_$run'), false)
               OR (SELECT confirmed_flush_lsn >= '$lsn' FROM pg_replication_slots WHERE slot_name = 'walhook_$run')"
    until [ "$(query "$sql")" = t ]; do
        kill -0 "$WALHOOK_PID" 2>/dev/null || fail "walhook exited during catch-up, see $WORK/walhook_$run.log"
        [ "$(date +%s)" -lt "$deadline" ] || fail "walhook did not reach $lsn within ${timeout}s, see $WORK/walhook_$run.log"
        sleep 0.2
    done
}

# Waits until no delivery of repetition $1 is pending, for at most $2 seconds;
# returns 1 on timeout.
wait_delivered() {
    local run=$1 deadline=$(($(date +%s) + $2))
    until [ "$(query "SELECT count(*) FROM walhook_$run.deliveries WHERE status = 'pending'")" = 0 ]; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.5
    done
}

receiver_stat() {
    curl -sf "$RECEIVER_URL/stats" | python3 -c "import json, sys; v = json.load(sys.stdin)['$1']; print('-' if v is None else (f'{v:.1f}' if isinstance(v, float) else v))"
}

if [ "$DELIVERY_ONLY" = false ]; then
# --- 1. catch-up ----------------------------------------------------------------

for run in $(seq "$REPEAT"); do
    step "catch-up $run/$REPEAT: pg_recvlogical to $END_LSN"
    /usr/bin/time -f '%e %M' -o "$WORK/recvlogical_$run.time" \
        "$PG_BIN/pg_recvlogical" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d app \
        --slot "recvlogical_$run" --start --no-loop -o proto_version=1 -o publication_names=walhook \
        --endpos="$END_LSN" -f /dev/null
    read -r recv_seconds recv_rss_kb <"$WORK/recvlogical_$run.time"
    result "catch-up $run: pg_recvlogical (s)" "$recv_seconds (load $(load_average))"

    step "catch-up $run/$REPEAT: walhook to $END_LSN"
    curl -sf -X POST "$RECEIVER_URL/reset"
    started=$(now)
    start_walhook "$run"
    wait_caught_up "$run" "$END_LSN" "$CATCH_UP_TIMEOUT"
    walhook_seconds=$(seconds_between "$(now)" "$started")
    cpu=$(cpu_seconds "$WALHOOK_PID")
    rss=$(peak_rss_mb "$WALHOOK_PID")
    walhook_backends_cpu >"$WORK/backends_$run.txt"
    queued=$(query "SELECT count(*) FROM walhook_$run.deliveries")
    [ "$queued" = "$DELIVERIES" ] || fail "walhook queued $queued deliveries, expected $DELIVERIES"
    result "catch-up $run: walhook (s)" "$walhook_seconds (load $(load_average))"
    result "catch-up $run: ratio walhook / pg_recvlogical" "$(python3 -c "print(f'{$walhook_seconds / $recv_seconds:.1f}')")"
    result "catch-up $run: walhook CPU time (s)" "$cpu"
    result "catch-up $run: walhook peak RSS (MB)" "$rss"
    while read -r line; do
        result "catch-up $run: server process CPU" "$line"
    done <"$WORK/backends_$run.txt"
    result "catch-up $run: delivered during catch-up" "$(receiver_stat requests) of $DELIVERIES"
    stop_walhook
done

fi

if [ "$DELIVERY_ONLY" = true ]; then
    step "filling the queue with $DELIVERIES deliveries (--delivery-only)"
    fill_queue
    queued=$(query "SELECT count(*) FROM walhook_1.deliveries")
    [ "$queued" = "$DELIVERIES" ] || fail "the queue holds $queued deliveries, expected $DELIVERIES"
fi

# --- 2. delivery ------------------------------------------------------------------

# Measures the receiver's ceiling, then sends the queued deliveries of run 1
# again.
delivery_phase() {
    step "delivery: receiver ceiling, 64 connections for ${RECEIVER_LOAD_SECONDS}s"
    result "receiver ceiling (requests/s)" "$("$RECEIVER" load "$RECEIVER_URL/hook/ceiling" "$RECEIVER_LOAD_SECONDS" 64) (load $(load_average))"

    step "delivery: the $DELIVERIES queued deliveries of run 1 again, for at most ${DELIVERY_SECONDS}s"
    psql_db app >/dev/null <<EOF
UPDATE walhook_1.deliveries
SET status = 'pending', attempts = 0, next_attempt_at = now(), delivered_at = NULL,
    last_status = NULL, last_error = NULL;
TRUNCATE walhook_1.attempts;
VACUUM ANALYZE walhook_1.deliveries, walhook_1.attempts;
EOF
    curl -sf -X POST "$RECEIVER_URL/reset"
    start_walhook 1
    wait_delivered 1 "$DELIVERY_SECONDS" || true
    stop_walhook
    sent=$(receiver_stat requests)
    window_ms=$(($(receiver_stat last_unix_ms) - $(receiver_stat first_unix_ms)))
    result "delivery: webhooks received" "$sent of $DELIVERIES"
    result "delivery: webhooks/s" "$(python3 -c "print(round($sent / max($window_ms, 1) * 1000))") (load $(load_average))"
}

# --- 3. latency ---------------------------------------------------------------------

# Measures commit-to-receipt latency of single stage updates at a fixed rate.
latency_phase() {
    step "latency: $LATENCY_RATE transactions/s for ${LATENCY_SECONDS}s"
    query "UPDATE walhook_1.deliveries SET status = 'delivered' WHERE status = 'pending'" >/dev/null
    query "VACUUM ANALYZE walhook_1.deliveries" >/dev/null
    cat >"$WORK/latency.sql" <<'EOF'
\set id random(1, :max_id)
UPDATE jobs SET stage_id = stage_id % 10 + 1, stage_changed_at = clock_timestamp() WHERE id = :id;
EOF
    start_walhook 1
    sleep 2
    curl -sf -X POST "$RECEIVER_URL/reset"
    "$PG_BIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U postgres -n -c 4 -j 2 -R "$LATENCY_RATE" \
        -T "$LATENCY_SECONDS" -D max_id="$((INSERT_TXS * 100))" -f "$WORK/latency.sql" app \
        >"$WORK/pgbench.log" 2>&1 || fail "pgbench failed, see $WORK/pgbench.log"
    wait_delivered 1 30 || fail "latency: deliveries still pending 30 s after the load"
    stop_walhook
    result "latency: transactions (pgbench)" "$(awk '/number of transactions actually processed/ { print $6 }' "$WORK/pgbench.log")"
    result "latency: webhooks received" "$(receiver_stat latency_samples)"
    result "latency: p50 / p99 / max (ms)" "$(receiver_stat latency_p50_ms) / $(receiver_stat latency_p99_ms) / $(receiver_stat latency_max_ms) (load $(load_average))"
}

if [ "$DELIVERY_PHASES" = true ]; then
    delivery_phase
    latency_phase
else
    # The memory phase then starts from an empty queue, as after the latency
    # phase.
    query "UPDATE walhook_1.deliveries SET status = 'delivered' WHERE status = 'pending'" >/dev/null
    query "VACUUM ANALYZE walhook_1.deliveries" >/dev/null
fi

if [ "$DELIVERY_ONLY" = false ]; then
# --- 4. memory in one large transaction ----------------------------------------------

step "memory: one transaction of $BIG_TX_ROWS job inserts"
query "INSERT INTO jobs (alt_id, company_id, first_name, last_name, address_1, city, state, zip)
       SELECT 'L-' || i, 1000 + i % $COMPANIES, 'Pat', 'Lee', i || ' Main St', 'Denver', 'CO', '80202'
       FROM generate_series(1, $BIG_TX_ROWS) i" >/dev/null
BIG_END_LSN=$(query "SELECT pg_current_wal_lsn()")
started=$(now)
start_walhook 1
wait_caught_up 1 "$BIG_END_LSN" "$CATCH_UP_TIMEOUT"
result "large transaction: walhook time to store (s)" "$(seconds_between "$(now)" "$started") (load $(load_average))"
result "large transaction: walhook peak RSS (MB)" "$(peak_rss_mb "$WALHOOK_PID")"
stop_walhook

fi

# --- profile ---------------------------------------------------------------------------

if [ "$PROFILE" = true ]; then
    step "profile: catch-up under callgrind (slow)"
    start_walhook "$RUNS" valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out"
    wait_caught_up "$RUNS" "$END_LSN" 7200
    stop_walhook
    callgrind_annotate --inclusive=no "$WORK/callgrind.out" >"$WORK/callgrind-self.txt"
    callgrind_annotate --inclusive=yes "$WORK/callgrind.out" >"$WORK/callgrind-inclusive.txt"
    sed -n '1,60p' "$WORK/callgrind-self.txt"
    echo "callgrind output: $WORK/callgrind.out (set BENCH_KEEP=1 to keep it)" >&2
fi

printf '\n==> results (%s mode, %s changes, load %s)\n' "$MODE" "$CHANGES" "$(load_average)"
cat "$WORK/results.txt"

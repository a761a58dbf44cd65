#!/usr/bin/env bash
# How many rows/s PostgreSQL stores with each index set of `logs`, and which of the
# seed's indexes the api's queries use. Starts a throwaway PostgreSQL (fsync on) in a
# temporary directory on a free port, and always stops it. For each index set, 4 clients
# (the worker's 4 consumers) insert 500 seed-shaped rows per transaction for
# SECONDS seconds with pgbench; the sets alternate round by round and the table shows
# the median of ROUNDS rounds.
#   cli/scripts/index-set.sh                  # 3 rounds of 20 s
#   ROUNDS=5 SECONDS_PER_RUN=30 cli/scripts/index-set.sh
set -euo pipefail

rounds=${ROUNDS:-3}
seconds=${SECONDS_PER_RUN:-20}
source "$(dirname "${BASH_SOURCE[0]}")/scratch-postgres.sh"
scratch_postgres -c max_wal_size=4GB

# The index sets. `seed`: the table before partitioning (the seed's table and indexes,
# plus the unique message_id that made stores idempotent). `partitioned`: today's
# partition, keyed by (created_at, id), with the device query's index. Then today's
# with a GIN index on log_data, and with a BRIN index on created_at.
"${psql[@]}" <<'SQL'
create table seed (
    id bigserial primary key, device_id varchar(50) not null, log_level varchar(20) not null,
    message text, log_data jsonb, created_at timestamptz default now(),
    indexed_at timestamptz default now(), message_id text collate "C");
create unique index on seed (message_id);
create index seed_device_created on seed (device_id, created_at desc);
create index seed_log_level on seed (log_level);
create index seed_created_at on seed (created_at desc);
create index seed_log_data_gin on seed using gin (log_data);

create function partitioned_table(name text, extra text) returns void language plpgsql as $$
begin
    execute format('create table %I (
        id bigint not null, tenant text collate "C" not null default %L,
        device_id varchar(50) not null, log_level varchar(20) not null, message text,
        log_data jsonb, created_at timestamptz not null, indexed_at timestamptz default now(),
        primary key (created_at, id)) partition by range (created_at)', name, 'default');
    execute format('create index on %I (tenant, device_id, created_at desc)', name);
    execute format('create table %I partition of %I for values from (%L) to (%L)',
        name || '_today', name, date_trunc('day', now()) - interval '1 day',
        date_trunc('day', now()) + interval '2 days');
    if extra <> '' then execute format(extra, name || '_today'); end if;
end $$;
select partitioned_table('partitioned', '');
select partitioned_table('partitioned_gin', 'create index on %I using gin (log_data)');
select partitioned_table('partitioned_brin', 'create index on %I using brin (created_at)');
create sequence ids;
SQL

columns="device_id, log_level, message, log_data"
values="'device-' || (random() * 99)::int, (array['DEBUG','INFO','WARNING','ERROR'])[1 + (g % 4)],
    'sensor reading ' || md5(g::text), jsonb_build_object('run', 'bench', 'seq', g, 'temp', random() * 40, 'ok', g % 2 = 0)"
cat >"$dir/seed.sql" <<SQL
insert into seed (message_id, $columns)
select 'm' || nextval('ids'), $values from generate_series(1, 500) g
on conflict (message_id) do nothing;
SQL
for table in partitioned partitioned_gin partitioned_brin; do
    cat >"$dir/$table.sql" <<SQL
insert into $table (id, created_at, $columns)
select nextval('ids'), now(), $values from generate_series(1, 500) g
on conflict do nothing;
SQL
done
chmod -R a+r "$dir"

declare -A rates
sets=(seed partitioned partitioned_gin partitioned_brin)
for round in $(seq 1 "$rounds"); do
    for set in "${sets[@]}"; do
        "${psql[@]}" -c "checkpoint"
        tps=$("${run[@]}" "$bin/pgbench" -h "$dir" -p "$port" -U "$user" -n -c 4 -j 2 \
            -T "$seconds" -f "$dir/$set.sql" postgres 2>/dev/null |
            sed -n 's/^tps = \([0-9.]*\).*/\1/p')
        rows=$(awk -v t="$tps" 'BEGIN { printf "%d", t * 500 }')
        rates[$set]+="$rows "
        echo "round $round: $set $rows rows/s" >&2
    done
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
printf '\n| index set | rows/s (median of %s × %s s) | runs |\n|---|---:|---|\n' "$rounds" "$seconds"
for set in "${sets[@]}"; do
    printf '| %s | %s | %s|\n' "$set" "$(median <<<"${rates[$set]}")" "${rates[$set]}"
done

# Which of the seed's indexes the api's device query plans use, on the seed table as
# filled above (EXPLAIN: idx_scan would also count the planner's own probes).
"${psql[@]}" -c "analyze seed"
printf '\n| device query | seed index used |\n|---|---|\n'
while IFS='|' read -r name query; do
    used=$("${psql[@]}" -c "explain (costs off) $query" | grep -o 'seed_[a-z_]*' | sort -u | tr '\n' ' ')
    printf '| %s | %s|\n' "$name" "${used:-none (sequential scan) }"
done <<'QUERIES'
newest page|select id from seed where device_id = 'device-7' order by created_at desc, id desc limit 101
levels and time|select id from seed where device_id = 'device-7' and log_level = any('{ERROR,WARNING}') and created_at >= now() - interval '1 hour' and created_at < now() order by created_at desc, id desc limit 101
next page (cursor)|select id from seed where device_id = 'device-7' and created_at <= now() and (created_at, id) < (now(), 1000) order by created_at desc, id desc limit 101
log_data containment (no api query)|select id from seed where log_data @> '{"seq": 7}' limit 101
QUERIES

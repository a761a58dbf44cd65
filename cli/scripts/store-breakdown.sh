#!/usr/bin/env bash
# Where PostgreSQL's time goes when it stores a log: each part of the insert measured
# alone, inside one backend (no client, no other process), on a throwaway durable
# PostgreSQL in a temporary directory that is always stopped. 200,000 seed-shaped logs
# (100 devices, 5 levels, a 50-byte message, a 4-field log_data) go in in batches of
# 500, each part added to the one before; the table prints µs of the backend per row,
# WAL bytes per row and bytes on disk per row.
#   cli/scripts/store-breakdown.sh
# The worker's whole path, with concurrency, the client and PostgreSQL's background
# processes, is `logpipeline bench store`.
set -euo pipefail

source "$(dirname "${BASH_SOURCE[0]}")/scratch-postgres.sh"
scratch_postgres

"${psql[@]}" <<'SQL'
-- The logs, and the same cut into batches of 500 as the worker's arrays.
create table staging as
select (g::bigint << 22) as id, (1700000000000 + g)::text || '-0.' || (g % 5) as message_id,
       'default'::text as tenant, 'device-' || lpad((g % 100)::text, 3, '0') as device_id,
       (array['DEBUG','INFO','WARNING','ERROR','CRITICAL'])[1 + g % 5] as log_level,
       'log ' || g || ' ' || repeat('x', 40) as message,
       json_build_object('run', 'store', 'device', g % 100, 'seq', g, 'temperature', 21.5)::text as log_data,
       now() + g * interval '10 microseconds' as created_at
from generate_series(1, 200000) g;
create table batches as
select (id >> 22) / 500 as b,
       array_agg(id order by id) ids, array_agg(message_id order by id) mids,
       array_agg(tenant order by id) tenants, array_agg(device_id order by id) devs,
       array_agg(log_level order by id) lvls, array_agg(message order by id) msgs,
       array_agg(log_data order by id) datas, array_agg(created_at order by id) ats
from staging group by 1;
copy (select id, message_id, tenant, device_id, log_level, message, log_data, created_at from staging order by id)
    to '/tmp/logpipeline-store-breakdown.txt';

-- `logs` as the migrations make it, with `extra` run after (indexes); its partition
-- holds every time.
create function make_logs(extra text) returns void language plpgsql as $$
begin
    drop table if exists logs, log_counts, log_count_deltas, log_partitions cascade;
    create table logs (
        id bigint not null, device_id varchar(50) not null, log_level varchar(20) not null,
        message text, log_data jsonb, created_at timestamptz not null,
        indexed_at timestamptz default now(), message_id text collate "C",
        tenant text collate "C" not null default 'default', service_name varchar(100),
        trace_id varchar(64) collate "C", span_id varchar(64) collate "C")
        partition by range (created_at);
    create table logs_p partition of logs for values from ('2000-01-01') to ('2100-01-01');
    create table log_partitions (name text primary key, from_at timestamptz, to_at timestamptz not null);
    insert into log_partitions values ('logs_p', '2000-01-01', '2100-01-01');
    create table log_counts (tenant text, device_id varchar(50), log_level varchar(20),
        period timestamptz, stripe smallint, count bigint, last_at timestamptz,
        primary key (tenant, device_id, log_level, period, stripe));
    create table log_count_deltas (tenants text[], devices text[], levels text[],
        periods timestamptz[], counts bigint[], last_ats timestamptz[]);
    if extra <> '' then execute extra; end if;
end $$;

-- Runs `statement` once per batch, each batch its own transaction as the worker's
-- (with the batch's arrays as $1–$9), or once when it takes no parameters; records its
-- cost per row in `results`.
create table results (n serial, line text);
create procedure measure(label text, extra text, statement text) language plpgsql as $$
declare started timestamptz; took interval; wal0 pg_lsn; wal1 pg_lsn; r record; rows bigint;
begin
    perform make_logs(extra);
    commit;
    checkpoint;
    wal0 := pg_current_wal_insert_lsn();
    started := clock_timestamp();
    if statement like '%$1%' then
        for r in select * from batches order by b loop
            execute statement using r.ids, r.mids, r.tenants, r.devs, r.lvls, r.msgs, r.datas, r.ats,
                array_fill(null::text, array[cardinality(r.ids)]);
            commit;
        end loop;
    else
        execute statement;
        commit;
    end if;
    took := clock_timestamp() - started;
    wal1 := pg_current_wal_insert_lsn();
    select count(*) into rows from logs;
    insert into results (line) values (format('| %s | %s | %s | %s |', label,
        round((extract(epoch from took) * 1e6 / rows)::numeric, 2),
        round((wal1 - wal0) / rows::numeric),
        round(pg_total_relation_size('logs_p') / rows::numeric)));
    commit;
end $$;
SQL

unnest="from unnest(\$1::bigint[], \$2::text[], \$3::text[], \$4::text[], \$5::text[], \$6::text[], \$7::text[], \$8::timestamptz[], \$9::text[], \$9::text[], \$9::text[]) as b (id, message_id, tenant, device_id, log_level, message, log_data, created_at, service_name, trace_id, span_id)"
insert="insert into logs (id, message_id, tenant, device_id, log_level, message, log_data, created_at, service_name, trace_id, span_id) select id, message_id, tenant, device_id, log_level, message, log_data::jsonb, created_at, service_name, trace_id, span_id $unnest"
key="alter table logs add constraint logs_key primary key (created_at, id);"
device="create index on logs (tenant, device_id, created_at desc);"
partial="create index on logs (tenant, service_name, created_at desc) where service_name is not null; create index on logs (tenant, trace_id, created_at desc) where trace_id is not null;"
all="$key $device $partial"
counts_upsert="with inserted as ($insert on conflict do nothing returning tenant, device_id, log_level, created_at) insert into log_counts select i.tenant, i.device_id, i.log_level, coalesce(p.from_at, '-infinity'), 0, count(*), max(i.created_at) from inserted i join log_partitions p on (p.from_at is null or i.created_at >= p.from_at) and i.created_at < p.to_at group by 1, 2, 3, 4 on conflict (tenant, device_id, log_level, period, stripe) do update set count = log_counts.count + excluded.count, last_at = greatest(log_counts.last_at, excluded.last_at)"
copy="copy logs (id, message_id, tenant, device_id, log_level, message, log_data, created_at) from '/tmp/logpipeline-store-breakdown.txt'"
chmod a+r /tmp/logpipeline-store-breakdown.txt 2>/dev/null || true

printf '| part of the insert | µs per row | WAL B per row | disk B per row |\n|---|---:|---:|---:|\n'
"${psql[@]}" <<SQL
call measure('heap, log_data kept as text', 'alter table logs alter column log_data type text', replace(\$q\$$insert\$q\$, 'log_data::jsonb', 'log_data'));
call measure('heap, log_data parsed into jsonb', '', \$q\$$insert\$q\$);
call measure('+ key (created_at, id)', \$q\$$key\$q\$, \$q\$$insert\$q\$);
call measure('+ device index', \$q\$$key $device\$q\$, \$q\$$insert\$q\$);
call measure('+ service and trace partial indexes', \$q\$$all\$q\$, \$q\$$insert\$q\$);
call measure('+ on conflict do nothing', \$q\$$all\$q\$, \$q\$$insert on conflict do nothing\$q\$);
call measure('+ counters upserted in the statement (release 5)', \$q\$$all\$q\$, \$q\$$counts_upsert\$q\$);
call measure('COPY, every index (text form, server side)', \$q\$$all\$q\$, \$q\$$copy\$q\$);
select line from results order by n;
SQL
rm -f /tmp/logpipeline-store-breakdown.txt

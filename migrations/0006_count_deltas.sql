-- Counts of the logs each worker transaction stored, one row per transaction: arrays of
-- equal length, one element per tenant, device, level and partition (`periods`, as in
-- log_counts). A worker folds them into log_counts every second, so a batch costs one
-- row here rather than one counter update per device and level. Nothing reads this table
-- alone: log_count_totals is log_counts and what waits here, together.
create table if not exists log_count_deltas (
    tenants text[] not null,
    devices text[] not null,
    levels text[] not null,
    periods timestamptz[] not null,
    counts bigint[] not null,
    last_ats timestamptz[] not null
);

-- Every count, folded or not: what statistics read.
create or replace view log_count_totals as
select tenant, device_id::text as device_id, log_level::text as log_level, period, count, last_at
from log_counts
union all
select d.tenant, d.device_id, d.log_level, d.period, d.count, d.last_at
from log_count_deltas,
    unnest(tenants, devices, levels, periods, counts, last_ats)
        as d (tenant, device_id, log_level, period, count, last_at);

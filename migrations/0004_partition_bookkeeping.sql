-- The partitions of `logs` by time, each with the range of `created_at` it holds. The
-- worker creates partitions ahead of ingest and drops those past the retention, and
-- keeps this table in step in the same transactions. `from_at` is null for the partition
-- that starts at MINVALUE: the rows of a table from before partitioning.
--
-- Turning an existing `logs` table into the partitioned one runs right after this
-- migration, in Rust (core/src/storage.rs): it builds an index concurrently, which no
-- migration file can do, and keeps every row where it is.
create table if not exists log_partitions (
    name text collate "C" primary key,
    from_at timestamptz,
    to_at timestamptz not null
);

-- Counters per partition, so that dropping a partition drops its counts with it and
-- statistics stay exact. Counts from before partitioning belong to the legacy partition,
-- whose period is -infinity. Adding a column with a constant default rewrites nothing.
alter table log_counts add column if not exists period timestamptz not null default '-infinity';
alter table log_counts drop constraint if exists log_counts_pkey;
alter table log_counts add primary key (tenant, device_id, log_level, period, stripe);

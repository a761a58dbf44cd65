-- Chunks: logs moved out of `logs` once their stream entries can never be delivered
-- again, one tenant's and one device's logs in time order per chunk, columns compressed
-- by the workers (docs/storage.md is the format).

-- Chunk ids, unique across partitions.
create sequence if not exists log_chunk_ids;

-- The chunks, partitioned by the time of their first log with the bounds of `logs`'s
-- partitions, so retention drops a period's rows and chunks together.
create table if not exists log_chunks (
    id bigint not null default nextval('log_chunk_ids'),
    tenant text collate "C" not null,
    device_id varchar(50) not null,
    first_at timestamptz not null,
    first_key bigint not null,
    last_at timestamptz not null,
    last_key bigint not null,
    rows integer not null,
    levels integer[] not null,
    grams bytea not null,
    fields bytea not null,
    block bytea not null,
    constraint log_chunks_key primary key (first_at, id)
) partition by range (first_at);

-- The filters and the block are compressed or random already: PostgreSQL stores them
-- without trying to compress them again.
alter table log_chunks alter column grams set storage external;
alter table log_chunks alter column fields set storage external;
alter table log_chunks alter column block set storage external;

-- A device's newest chunks: device pages and merging.
create index if not exists log_chunks_device on log_chunks (tenant, device_id, last_at desc);
-- The chunks of a time range: fleet-wide searches.
create index if not exists log_chunks_time on log_chunks (tenant, last_at);

-- A chunk partition beside each partition of `logs` there is already, with its bounds.
do $$
declare
    partition record;
    chunks text;
begin
    for partition in select name, from_at, to_at from log_partitions loop
        chunks := 'log_chunks' || substr(partition.name, length('logs') + 1);
        execute format(
            'create table if not exists %I (like log_chunks including defaults including constraints including storage)',
            chunks);
        if not exists (select 1 from pg_inherits where inhrelid = to_regclass(chunks)) then
            execute format(
                'alter table log_chunks attach partition %I for values from (%s) to (%L)',
                chunks,
                coalesce(quote_literal(partition.from_at), 'minvalue'),
                partition.to_at);
        end if;
    end loop;
end
$$;

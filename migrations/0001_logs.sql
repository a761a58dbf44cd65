-- The seed system's `logs` table, created only where it does not exist yet, so a
-- database the seed system filled is adopted as it is.
create table if not exists logs (
    id bigserial primary key,
    device_id varchar(50) not null,
    log_level varchar(20) not null,
    message text,
    log_data jsonb,
    created_at timestamptz default now(),
    indexed_at timestamptz default now()
);

-- The stable id of each log, derived from its stream entry (see core/src/codec.rs).
-- Rows the seed system wrote have none.
alter table logs add column if not exists message_id text collate "C";

-- Inserts skip a log whose id is stored already: a re-delivered entry adds nothing.
create unique index if not exists logs_message_id_key on logs (message_id);

-- The seed's indexes: a device's logs newest first, by level, by time, and by content.
create index if not exists idx_device_created on logs (device_id, created_at desc);
create index if not exists idx_log_level on logs (log_level);
create index if not exists idx_created_at on logs (created_at desc);
create index if not exists idx_log_data_gin on logs using gin (log_data);

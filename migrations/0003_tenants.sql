-- Tenants: every log and every counter belongs to one. Rows stored before tenants
-- existed belong to `default`, the tenant of deployments without authentication. A
-- column with a constant default is added without rewriting the table (PostgreSQL 11+),
-- so this keeps every row and takes a moment whatever the table's size.
alter table logs add column if not exists tenant text collate "C" not null default 'default';

-- A device's logs newest first, within its tenant (the query of GET /api/logs/{device}),
-- replacing the seed's index on the device alone. Building it reads the table once.
create index if not exists idx_tenant_device_created on logs (tenant, device_id, created_at desc);
drop index if exists idx_device_created;

-- The counters, per tenant.
alter table log_counts add column if not exists tenant text collate "C" not null default 'default';
alter table log_counts drop constraint if exists log_counts_pkey;
alter table log_counts add primary key (tenant, device_id, log_level, stripe);

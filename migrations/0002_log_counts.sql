-- Logs stored per device and level, kept by the worker in the same statement as its
-- inserts, so statistics never scan the logs table. Each (device, level) is split over
-- up to 16 stripes, one chosen per batch, so concurrent batches of the same devices do
-- not queue on one counter row; readers sum the stripes.
create table if not exists log_counts (
    device_id varchar(50) not null,
    log_level varchar(20) not null,
    stripe smallint not null,
    count bigint not null,
    last_at timestamptz,
    primary key (device_id, log_level, stripe)
);

-- Rows stored before this table existed (a seed database adopted as it is) are counted
-- once, here, in stripe 0.
insert into log_counts (device_id, log_level, stripe, count, last_at)
select device_id, log_level, 0, count(*), max(created_at)
from logs
group by device_id, log_level
on conflict do nothing;

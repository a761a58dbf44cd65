-- The service that wrote a log and the trace and span it belongs to (system B's fields
-- and OpenTelemetry's), in columns of their own; null where a log names none, as on
-- every log stored before. Nullable columns without a default are added to the
-- partitioned table and all its partitions without rewriting a row.
alter table logs add column if not exists service_name varchar(100);
alter table logs add column if not exists trace_id varchar(64) collate "C";
alter table logs add column if not exists span_id varchar(64) collate "C";

-- Their indexes, for the service and trace queries, are built right after the
-- migrations, in Rust (core/src/storage.rs): partition by partition and concurrently,
-- so writers go on, which no migration file can do.

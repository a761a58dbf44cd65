//! The partitioned `logs` table in PostgreSQL: turning an unpartitioned table into it
//! without moving a row, creating partitions ahead of ingest, and dropping those past
//! the retention without stalling writers. The arithmetic is in [`crate::partitions`].
//!
//! Every partition has two indexes: the primary key `(created_at, id)`, which makes
//! inserts idempotent (the key comes from the stream entry, see
//! [`crate::codec::log_key`]), and `(tenant, device_id, created_at desc)`, which serves
//! the device query. Two more are settings ([`SearchIndex`]): a GIN index on `log_data`
//! and a trigram GIN index on `message`, which fast text searches need and every insert
//! pays for.

use std::time::Duration;

use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::{info, warn};

use crate::partitions::{
    self, LEGACY_PARTITION, Partition, PartitionInterval, Retention, partition_name,
};

/// Advisory lock held while `logs` is turned into a partitioned table.
const CONVERT_LOCK: i64 = 0x6c70_0001;
/// Advisory lock (transaction-scoped) held while a partition is created.
const CREATE_LOCK: i64 = 0x6c70_0002;
/// Advisory lock held by the one process running upkeep: retention, compaction.
pub const UPKEEP_LOCK: i64 = 0x6c70_0003;
/// Advisory lock held by the one process compacting rows into chunks.
pub const COMPACT_LOCK: i64 = 0x6c70_0006;
/// Advisory lock (transaction-scoped) held while counts are folded, so that one worker
/// folds at a time and the others skip rather than wait.
const FOLD_LOCK: i64 = 0x6c70_0005;

/// The partitioned table: the seed's columns, the tenant and the stable ids. Its primary
/// key includes the partition key, as PostgreSQL requires of unique indexes.
const PARENT: &str = r#"
create table logs (
    id bigint not null,
    device_id varchar(50) not null,
    log_level varchar(20) not null,
    message text,
    log_data jsonb,
    created_at timestamptz not null,
    indexed_at timestamptz default now(),
    message_id text collate "C",
    tenant text collate "C" not null default 'default',
    constraint logs_key primary key (created_at, id)
) partition by range (created_at)
"#;

/// The device query's index, on the parent (and so on every partition).
const DEVICE_INDEX: &str =
    "create index logs_tenant_device_created on logs (tenant, device_id, created_at desc)";

/// How partitions are made.
#[derive(Debug, Clone, Copy)]
pub struct PartitionSettings {
    /// Time each partition covers.
    pub interval: PartitionInterval,
    /// Partitions made ahead of the current one.
    pub ahead: u32,
    /// Whether partitions have a GIN index on `log_data`.
    pub log_data_index: bool,
    /// Whether partitions have a trigram GIN index on `message`.
    pub message_index: bool,
}

impl PartitionSettings {
    /// Whether partitions have `index`.
    pub fn has(&self, index: SearchIndex) -> bool {
        match index {
            SearchIndex::LogData => self.log_data_index,
            SearchIndex::Message => self.message_index,
        }
    }
}

/// An index of every partition that a setting turns on or off: each serves searches
/// and costs every insert (docs/search.md has both figures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchIndex {
    /// GIN on `log_data`, for `@>`: the `data.<path>=value` filters.
    LogData,
    /// GIN with `pg_trgm`'s trigrams on `message`, for `ILIKE '%…%'`: the `q` filter.
    Message,
}

impl SearchIndex {
    /// Every such index.
    pub const ALL: [SearchIndex; 2] = [SearchIndex::LogData, SearchIndex::Message];

    /// The column it indexes.
    fn column(self) -> &'static str {
        match self {
            SearchIndex::LogData => "log_data",
            SearchIndex::Message => "message",
        }
    }

    /// The statement that makes it on `partition`.
    fn ddl(self, partition: &str) -> String {
        match self {
            SearchIndex::LogData => format!(
                "create index if not exists {partition}_log_data on {partition} using gin (log_data)"
            ),
            SearchIndex::Message => format!(
                "create index if not exists {partition}_message_trgm on {partition} \
                 using gin (message gin_trgm_ops)"
            ),
        }
    }

    /// Makes the extension the index needs, if any. `pg_trgm` is a trusted extension
    /// of PostgreSQL's contrib, which a database owner may create.
    async fn ensure_extension(self, db: impl sqlx::PgExecutor<'_>) -> Result<(), sqlx::Error> {
        if self != SearchIndex::Message {
            return Ok(());
        }
        match sqlx::query("create extension if not exists pg_trgm")
            .execute(db)
            .await
        {
            // Two processes creating it at once: the other one did.
            Err(sqlx::Error::Database(error))
                if matches!(error.code().as_deref(), Some("23505" | "42710")) =>
            {
                Ok(())
            }
            other => other.map(drop),
        }
    }
}

impl Default for PartitionSettings {
    fn default() -> Self {
        Self {
            interval: PartitionInterval::DAY,
            ahead: 2,
            log_data_index: false,
            message_index: false,
        }
    }
}

/// The partitions, oldest first.
pub async fn partitions(db: impl sqlx::PgExecutor<'_>) -> Result<Vec<Partition>, sqlx::Error> {
    let rows = sqlx::query("select name, from_at, to_at from log_partitions order by to_at")
        .fetch_all(db)
        .await?;
    rows.iter()
        .map(|row| {
            let name: String = row.try_get("name")?;
            if !is_partition_name(&name) {
                return Err(sqlx::Error::Protocol(format!(
                    "log_partitions lists {name:?}, which is not a partition name"
                )));
            }
            Ok(Partition {
                name,
                from: row.try_get("from_at")?,
                to: row.try_get("to_at")?,
            })
        })
        .collect()
}

/// Makes sure a partition holds each of `times`, creating the missing ones. Concurrent
/// callers wait for each other; a partition is attached to `logs` already made, which
/// takes a lock that lets inserts and queries go on.
pub async fn ensure_partitions(
    pool: &PgPool,
    times: &[OffsetDateTime],
    settings: PartitionSettings,
) -> Result<Vec<Partition>, sqlx::Error> {
    let known = partitions(pool).await?;
    if times
        .iter()
        .all(|at| known.iter().any(|partition| partition.contains(*at)))
    {
        return Ok(known);
    }
    let mut transaction = pool.begin().await?;
    sqlx::query("select pg_advisory_xact_lock($1)")
        .bind(CREATE_LOCK)
        .execute(&mut *transaction)
        .await?;
    let mut existing = partitions(&mut *transaction).await?;
    let has_chunks: bool = sqlx::query_scalar("select to_regclass('log_chunks') is not null")
        .fetch_one(&mut *transaction)
        .await?;
    for &at in times {
        let Some(range) = partitions::range_for(at, settings.interval, &existing) else {
            continue;
        };
        let name = partition_name(range.from);
        let (from, to) = (literal(range.from), literal(range.to));
        let chunks = chunk_partition(&name);
        let mut statements = vec![
            format!("create table {name} (like logs including defaults including constraints)"),
            format!("alter table logs attach partition {name} for values from ({from}) to ({to})"),
        ];
        // Before the migration that makes `log_chunks` has run (a database of an earlier
        // release being upgraded), its partitions come with it.
        if has_chunks {
            statements.extend([
                format!(
                    "create table {chunks} (like log_chunks including defaults including constraints including storage)"
                ),
                format!(
                    "alter table log_chunks attach partition {chunks} for values from ({from}) to ({to})"
                ),
            ]);
        }
        for statement in &statements {
            sqlx::query(ddl(statement.clone()))
                .execute(&mut *transaction)
                .await?;
        }
        for index in SearchIndex::ALL.into_iter().filter(|&i| settings.has(i)) {
            index.ensure_extension(&mut *transaction).await?;
            sqlx::query(ddl(index.ddl(&name)))
                .execute(&mut *transaction)
                .await?;
        }
        sqlx::query("insert into log_partitions (name, from_at, to_at) values ($1, $2, $3)")
            .bind(&name)
            .bind(range.from)
            .bind(range.to)
            .execute(&mut *transaction)
            .await?;
        info!(partition = %name, from = %range.from, to = %range.to, "partition created");
        existing.push(Partition {
            name,
            from: Some(range.from),
            to: range.to,
        });
    }
    transaction.commit().await?;
    existing.sort_by_key(|partition| partition.to);
    Ok(existing)
}

/// Gives every partition of `logs` its partition of `log_chunks`, where it has none yet
/// (one made by a worker of a version before chunks, during an upgrade).
pub async fn ensure_chunk_partitions(connection: &mut PgConnection) -> Result<(), sqlx::Error> {
    let missing: Vec<(String, Option<OffsetDateTime>, OffsetDateTime)> = sqlx::query_as(
        "select name, from_at, to_at from log_partitions p \
         where not exists (select 1 from pg_inherits i \
             where i.inhparent = 'log_chunks'::regclass \
             and i.inhrelid = to_regclass('log_chunks' || substr(p.name, 5)))",
    )
    .fetch_all(&mut *connection)
    .await?;
    for (name, from, to) in missing {
        if !is_partition_name(&name) {
            continue;
        }
        let chunks = chunk_partition(&name);
        let from = from.map_or_else(|| "minvalue".to_owned(), literal);
        let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
        sqlx::query("select pg_advisory_xact_lock($1)")
            .bind(CREATE_LOCK)
            .execute(&mut *transaction)
            .await?;
        let attached: bool = sqlx::query_scalar(
            "select exists (select 1 from pg_inherits \
             where inhparent = 'log_chunks'::regclass and inhrelid = to_regclass($1))",
        )
        .bind(&chunks)
        .fetch_one(&mut *transaction)
        .await?;
        if attached {
            continue;
        }
        for statement in [
            format!(
                "create table if not exists {chunks} \
                 (like log_chunks including defaults including constraints including storage)"
            ),
            format!(
                "alter table log_chunks attach partition {chunks} for values from ({from}) to ({})",
                literal(to)
            ),
        ] {
            sqlx::query(ddl(statement))
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        info!(partition = %chunks, "chunk partition created");
    }
    Ok(())
}

/// The partition of `log_chunks` beside partition `name` of `logs`, with its bounds:
/// `log_chunks_p20261207_00` beside `logs_p20261207_00`, `log_chunks_legacy` beside
/// `logs_legacy`.
pub fn chunk_partition(name: &str) -> String {
    format!("log_chunks{}", name.strip_prefix("logs").unwrap_or(name))
}

/// A statement naming partitions and indexes, which cannot be bind parameters: every
/// name comes from [`partition_name`], from `log_partitions` (checked by [`partitions`]),
/// or from the catalog quoted by [`quote_ident`]; every time from [`literal`].
pub fn ddl(statement: String) -> AssertSqlSafe<String> {
    AssertSqlSafe(statement)
}

/// `name` as a quoted SQL identifier.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Whether `name` is one [`partition_name`] makes, or the legacy partition's.
fn is_partition_name(name: &str) -> bool {
    name == LEGACY_PARTITION
        || name.strip_prefix("logs_p").is_some_and(|stamp| {
            stamp.len() == 11
                && stamp.bytes().enumerate().all(|(i, b)| {
                    if i == 8 {
                        b == b'_'
                    } else {
                        b.is_ascii_digit()
                    }
                })
        })
}

/// A time as an SQL literal (generated here, never from input).
fn literal(at: OffsetDateTime) -> String {
    format!("'{}'", at.format(&Rfc3339).unwrap_or_default())
}

/// Drops the partitions `retention` has expired, with their counters: each is first
/// detached concurrently, which lets inserts and queries on `logs` go on, then dropped.
/// An interrupted drop is finished by the next call. Returns the partitions dropped.
pub async fn drop_expired(
    connection: &mut PgConnection,
    retention: Retention,
    grace: Duration,
    now: OffsetDateTime,
) -> Result<Vec<String>, sqlx::Error> {
    let all = partitions(&mut *connection).await?;
    let mut dropped = Vec::new();
    for partition in partitions::expired(&all, retention, grace, now) {
        let name = &partition.name;
        let chunks = chunk_partition(name);
        for (parent, child) in [("logs", name.as_str()), ("log_chunks", chunks.as_str())] {
            detach_concurrently(&mut *connection, parent, child).await?;
        }
        // Every count of the partition, folded first, goes with it.
        while fold_counts(&mut *connection).await? == FoldOutcome::Busy {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
        sqlx::query("delete from log_counts where period = coalesce($1, '-infinity'::timestamptz)")
            .bind(partition.from)
            .execute(&mut *transaction)
            .await?;
        sqlx::query("delete from log_partitions where name = $1")
            .bind(name)
            .execute(&mut *transaction)
            .await?;
        for table in [name, &chunks] {
            sqlx::query(ddl(format!("drop table if exists {table}")))
                .execute(&mut *transaction)
                .await?;
        }
        transaction.commit().await?;
        info!(partition = %name, to = %partition.to, "partition past the retention dropped");
        dropped.push(name.clone());
    }
    Ok(dropped)
}

/// Detaches partition `child` of `parent` without stopping inserts and queries on
/// `parent`, or finishes a detach an interrupted call began; nothing when it is not a
/// partition of `parent` (any more).
async fn detach_concurrently(
    connection: &mut PgConnection,
    parent: &str,
    child: &str,
) -> Result<(), sqlx::Error> {
    let pending: Option<bool> = sqlx::query_scalar(
        "select i.inhdetachpending from pg_inherits i \
         where i.inhparent = to_regclass($1) and i.inhrelid = to_regclass($2)",
    )
    .bind(parent)
    .bind(child)
    .fetch_optional(&mut *connection)
    .await?;
    let how = match pending {
        Some(false) => "concurrently",
        Some(true) => "finalize",
        None => return Ok(()),
    };
    sqlx::query(ddl(format!(
        "alter table {parent} detach partition {child} {how}"
    )))
    .execute(connection)
    .await
    .map(drop)
}

/// What [`fold_counts`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoldOutcome {
    /// Folded the counts of this many transactions.
    Folded(u64),
    /// Another process is folding.
    Busy,
}

/// Folds the counts waiting in `log_count_deltas` into `log_counts`, in one statement:
/// the rows it takes are deleted and their sums added, atomically, so every count is in
/// exactly one of the two at any time and `log_count_totals` never changes by a fold.
/// Rows added meanwhile wait for the next fold. One process folds at a time; the others
/// are told [`FoldOutcome::Busy`].
pub async fn fold_counts(db: impl sqlx::PgExecutor<'_>) -> Result<FoldOutcome, sqlx::Error> {
    let (locked, folded): (bool, i64) = sqlx::query_as(
        "with locked as (
            select pg_try_advisory_xact_lock($1) as locked
        ), taken as (
            delete from log_count_deltas where (select locked from locked)
            returning tenants, devices, levels, periods, counts, last_ats
        ), counts as (
            select d.*
            from taken,
                unnest(tenants, devices, levels, periods, counts, last_ats)
                    as d (tenant, device_id, log_level, period, count, last_at)
        ), added as (
            insert into log_counts (tenant, device_id, log_level, period, stripe, count, last_at)
            select tenant, device_id, log_level, period, 0, sum(count), max(last_at)
            from counts
            group by tenant, device_id, log_level, period
            order by tenant, device_id, log_level, period
            on conflict (tenant, device_id, log_level, period, stripe) do update
                set count = log_counts.count + excluded.count,
                    last_at = greatest(log_counts.last_at, excluded.last_at)
        )
        select (select locked from locked), (select count(*) from taken)",
    )
    .bind(FOLD_LOCK)
    .fetch_one(db)
    .await?;
    Ok(if locked {
        FoldOutcome::Folded(folded.unsigned_abs())
    } else {
        FoldOutcome::Busy
    })
}

/// Folds the counter stripes of partitions that ended before `before` into stripe 0: the
/// stripes spread concurrent writers of a period, which a finished period no longer has,
/// and statistics sum fewer rows. The sums do not change.
pub async fn compact_counts(
    db: impl sqlx::PgExecutor<'_>,
    before: OffsetDateTime,
) -> Result<u64, sqlx::Error> {
    let folded = sqlx::query(
        "with ended as (
            select coalesce(from_at, '-infinity'::timestamptz) as period
            from log_partitions where to_at <= $1
        ), folded as (
            delete from log_counts c using ended e
            where c.period = e.period and c.stripe <> 0
            returning c.tenant, c.device_id, c.log_level, c.period, c.count, c.last_at
        )
        insert into log_counts (tenant, device_id, log_level, period, stripe, count, last_at)
        select tenant, device_id, log_level, period, 0, sum(count), max(last_at)
        from folded
        group by tenant, device_id, log_level, period
        on conflict (tenant, device_id, log_level, period, stripe) do update
            set count = log_counts.count + excluded.count,
                last_at = greatest(log_counts.last_at, excluded.last_at)",
    )
    .bind(before)
    .execute(db)
    .await?;
    Ok(folded.rows_affected())
}

/// Gives every partition each [`SearchIndex`] its setting turns on, and takes away
/// those it turns off; concurrently, so writers go on. An index is known by its method
/// and column, so the legacy partition's seed index on `log_data` counts as its own.
pub async fn reconcile_search_indexes(
    connection: &mut PgConnection,
    settings: PartitionSettings,
) -> Result<(), sqlx::Error> {
    for index in SearchIndex::ALL {
        let enabled = settings.has(index);
        if enabled {
            index.ensure_extension(&mut *connection).await?;
        }
        for partition in partitions(&mut *connection).await? {
            let name = &partition.name;
            let existing: Vec<(String, bool)> = sqlx::query_as(
                "select i.relname::text, x.indisvalid from pg_index x \
                 join pg_class i on i.oid = x.indexrelid \
                 join pg_am a on a.oid = i.relam \
                 join pg_attribute c on c.attrelid = x.indrelid and c.attnum = x.indkey[0] \
                 where x.indrelid = to_regclass($1) and a.amname = 'gin' and c.attname = $2",
            )
            .bind(name)
            .bind(index.column())
            .fetch_all(&mut *connection)
            .await?;
            // A concurrent build that failed leaves an invalid index, which serves
            // nothing: it goes, and is built again.
            for (existing, _) in existing.iter().filter(|(_, valid)| !enabled || !valid) {
                sqlx::query(ddl(format!(
                    "drop index concurrently if exists {}",
                    quote_ident(existing)
                )))
                .execute(&mut *connection)
                .await?;
                info!(partition = %name, index = %existing, "GIN index dropped");
            }
            if enabled && !existing.iter().any(|(_, valid)| *valid) {
                let create = index
                    .ddl(name)
                    .replace("create index", "create index concurrently");
                sqlx::query(ddl(create)).execute(&mut *connection).await?;
                info!(partition = %name, column = index.column(), "GIN index created");
            }
        }
    }
    Ok(())
}

/// Turns an unpartitioned `logs` table (today's before this version, or a seed
/// database's) into the partitioned one, keeping every row where it is: the table
/// becomes the partition `logs_legacy`, holding all times before a bound at least an hour
/// ahead, and new partitions follow it. Nothing is rewritten; the one index it lacks is
/// built concurrently and the bound is checked by a constraint validated while writes go
/// on, so `logs` is locked only for the moment of the swap. Safe to interrupt and to run
/// from several processes at once. An empty table is simply replaced.
pub async fn partition_legacy(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut connection = pool.acquire().await?;
    sqlx::query("select pg_advisory_lock($1)")
        .bind(CONVERT_LOCK)
        .execute(&mut *connection)
        .await?;
    let result = convert(&mut connection).await;
    let unlocked = sqlx::query("select pg_advisory_unlock($1)")
        .bind(CONVERT_LOCK)
        .execute(&mut *connection)
        .await;
    result?;
    unlocked.map(|_| ())
}

async fn convert(connection: &mut PgConnection) -> Result<(), sqlx::Error> {
    let kind: Option<i8> = sqlx::query_scalar(
        "select relkind::\"char\" from pg_class where oid = to_regclass('logs')",
    )
    .fetch_optional(&mut *connection)
    .await?
    .flatten();
    if kind != Some(b'r' as i8) {
        return Ok(());
    }
    if replace_if_empty(connection).await? {
        info!("logs is a partitioned table now");
        return Ok(());
    }
    warn!("partitioning logs: its rows stay where they are, in partition {LEGACY_PARTITION}");
    let statements = [
        // Rows the seed stored without a time (its column allowed null) get the time they
        // were indexed at, which the seed set to the same default. The seed's index on
        // created_at finds them.
        "update logs set created_at = coalesce(indexed_at, now()) where created_at is null",
        // The bound, chosen once: the first UTC midnight at least an hour from now and
        // after every stored log.
        "insert into log_partitions (name, from_at, to_at)
         select 'logs_legacy', null, greatest(
             date_trunc('day', (now() + interval '1 hour') at time zone 'UTC') + interval '1 day',
             date_trunc('day', max(created_at) at time zone 'UTC') + interval '1 day'
         ) at time zone 'UTC'
         from logs
         on conflict (name) do nothing",
    ];
    for statement in statements {
        sqlx::query(statement).execute(&mut *connection).await?;
    }
    let bound: OffsetDateTime =
        sqlx::query_scalar("select to_at from log_partitions where name = 'logs_legacy'")
            .fetch_one(&mut *connection)
            .await?;
    let bound = literal(bound);
    let constraint_exists: bool = sqlx::query_scalar(
        "select exists (select 1 from pg_constraint \
         where conrelid = 'logs'::regclass and conname = 'logs_legacy_bound')",
    )
    .fetch_one(&mut *connection)
    .await?;
    if !constraint_exists {
        sqlx::query(ddl(format!(
            "alter table logs add constraint logs_legacy_bound \
             check (created_at is not null and created_at < {bound}) not valid"
        )))
        .execute(&mut *connection)
        .await?;
    }
    // Validating reads the table but lets writes go on (SHARE UPDATE EXCLUSIVE); with it
    // PostgreSQL skips the scans of SET NOT NULL and ATTACH PARTITION.
    sqlx::query("alter table logs validate constraint logs_legacy_bound")
        .execute(&mut *connection)
        .await?;
    // The primary key's index, built concurrently; an invalid one left by an
    // interrupted build is dropped first.
    let valid: Option<bool> = sqlx::query_scalar(
        "select indisvalid from pg_index where indexrelid = to_regclass('logs_legacy_key')",
    )
    .fetch_optional(&mut *connection)
    .await?;
    if valid == Some(false) {
        sqlx::query("drop index concurrently logs_legacy_key")
            .execute(&mut *connection)
            .await?;
    }
    sqlx::query(
        "create unique index concurrently if not exists logs_legacy_key on logs (created_at, id)",
    )
    .execute(&mut *connection)
    .await?;
    let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
    for statement in [
        "lock table logs in access exclusive mode",
        "alter table logs alter column created_at set not null",
    ] {
        sqlx::query(statement).execute(&mut *transaction).await?;
    }
    // A table has one primary key: the old one, on id alone, gives way to the new index,
    // which becomes the primary key the parent's attaches to.
    let old_key: Option<String> = sqlx::query_scalar(
        "select conname::text from pg_constraint where conrelid = 'logs'::regclass and contype = 'p'",
    )
    .fetch_optional(&mut *transaction)
    .await?;
    if old_key.as_deref() != Some("logs_legacy_key") {
        if let Some(old_key) = old_key {
            sqlx::query(ddl(format!(
                "alter table logs drop constraint {}",
                quote_ident(&old_key)
            )))
            .execute(&mut *transaction)
            .await?;
        }
        sqlx::query(
            "alter table logs add constraint logs_legacy_key primary key using index logs_legacy_key",
        )
        .execute(&mut *transaction)
        .await?;
    }
    for statement in [
        "alter table logs rename to logs_legacy",
        PARENT,
        DEVICE_INDEX,
    ] {
        sqlx::query(statement).execute(&mut *transaction).await?;
    }
    sqlx::query(ddl(format!(
        "alter table logs attach partition logs_legacy for values from (minvalue) to ({bound})"
    )))
    .execute(&mut *transaction)
    .await?;
    transaction.commit().await?;
    // The seed's indexes that no query of the api uses: they only slow the inserts that
    // still land in the legacy partition. Its unique index on message_id stays: it keeps
    // an entry stored before the upgrade and delivered again after it from being stored
    // twice.
    for statement in [
        "alter table logs_legacy drop constraint if exists logs_legacy_bound",
        "drop index concurrently if exists idx_log_level",
        "drop index concurrently if exists idx_created_at",
    ] {
        sqlx::query(statement).execute(&mut *connection).await?;
    }
    info!(bound = %bound, "logs is a partitioned table now; its earlier rows are in {LEGACY_PARTITION}");
    Ok(())
}

/// Replaces `logs` with the partitioned table when it holds no row, as on a fresh install.
async fn replace_if_empty(connection: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
    sqlx::query("lock table logs in access exclusive mode")
        .execute(&mut *transaction)
        .await?;
    let empty: bool = sqlx::query_scalar("select not exists (select 1 from logs)")
        .fetch_one(&mut *transaction)
        .await?;
    if !empty {
        return Ok(false);
    }
    for statement in ["drop table logs", PARENT, DEVICE_INDEX] {
        sqlx::query(statement).execute(&mut *transaction).await?;
    }
    transaction.commit().await?;
    Ok(true)
}

//! Compaction: rows of `logs` whose stream entries can never be delivered again, and
//! older than the hot window, move into chunks, one transaction per unit of work; small
//! chunks are merged; a period whose rows are all gone gives its table's space back
//! (docs/storage.md).
//!
//! Every step is safe to interrupt and to repeat. Rows move by `DELETE … RETURNING` and
//! the chunks they make are inserted in the same transaction, so a compactor killed at any
//! point leaves each log either a row or in a chunk, and two compactors never take the
//! same row. A merge deletes the chunks it read in the transaction that inserts the merged
//! ones, and gives up if another compactor took one of them first.

mod run;

use std::collections::BTreeMap;
use std::time::Duration;

use logpipeline_core::chunk::block::Block;
use logpipeline_core::chunk::{Chunk, ChunkError, ChunkRow, chunks_of};
use logpipeline_core::codec::unix_micros;
use logpipeline_core::partitions::Partition;
use logpipeline_core::storage::{self, chunk_partition, ddl};
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};
use time::OffsetDateTime;
use tracing::{debug, info};

pub use run::{Source, admin, locked, run};

/// Most rows moved in one transaction.
const UNIT_ROWS: i64 = 100_000;
/// Chunks of the same size tier merged at once.
const MERGE_FAN_IN: usize = 4;
/// Looks, 100 ms apart, for a vacuum of a table to truncate to end.
const VACUUM_WAITS: usize = 300;
/// How long after the hot window a period's small chunks are all merged, whatever their
/// tiers: late logs are rare by then.
const CLOSE_AFTER: Duration = Duration::from_secs(3600);

/// Whether a row's stream entry is below the watermark `$W` (milliseconds): its
/// `message_id` starts with the entry id's milliseconds, or it has none (a seed database's
/// rows, which no stream will deliver).
const ACKED: &str = "(message_id is null or message_id !~ '^[0-9]{1,18}-[0-9]' \
     or split_part(message_id, '-', 1)::bigint < $W)";

/// The columns a moved row is returned with.
const RETURNING: &str = "returning tenant, device_id::text, id, message_id, log_level::text, \
     message, log_data::text, created_at, service_name::text, trace_id, span_id";

/// How compaction cuts chunks.
#[derive(Debug, Clone, Copy)]
pub struct CompactSettings {
    /// Rows younger than this stay rows.
    pub hot_window: Duration,
    /// Most logs per chunk.
    pub chunk_rows: usize,
}

/// What a compaction did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Rows moved into chunks.
    pub rows: u64,
    /// Chunks written for them.
    pub chunks: u64,
    /// Small chunks merged, and the chunks that replaced them.
    pub merged: u64,
    /// Chunks written by merging.
    pub merged_into: u64,
    /// Tables of ended periods given back their space.
    pub truncated: u64,
}

impl std::ops::AddAssign for Report {
    fn add_assign(&mut self, other: Self) {
        self.rows += other.rows;
        self.chunks += other.chunks;
        self.merged += other.merged;
        self.merged_into += other.merged_into;
        self.truncated += other.truncated;
    }
}

/// Why a compaction failed.
#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    /// PostgreSQL failed or refused.
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),
    /// A chunk could not be made or read.
    #[error(transparent)]
    Chunk(#[from] ChunkError),
    /// Redis failed or refused (reading the watermark).
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The settings are wrong, or the work cannot be done now.
    #[error("{0}")]
    Refused(String),
}

impl From<logpipeline_core::config::ConfigError> for CompactError {
    fn from(error: logpipeline_core::config::ConfigError) -> Self {
        Self::Refused(error.to_string())
    }
}

/// Moves the rows that may move, from every partition, oldest first: those received
/// before `cut` whose entries are below `watermark_ms`. Then merges small chunks by tier,
/// and all of them in periods that ended before `close`, and truncates the tables of
/// periods that ended before `cut` whose rows are all gone.
pub async fn compact(
    connection: &mut PgConnection,
    settings: CompactSettings,
    watermark_ms: i64,
    cut: OffsetDateTime,
    close: OffsetDateTime,
) -> Result<Report, CompactError> {
    storage::ensure_chunk_partitions(&mut *connection).await?;
    let mut report = Report::default();
    for partition in storage::partitions(&mut *connection).await? {
        if partition.from.is_some_and(|from| from >= cut) {
            break;
        }
        let ended = partition.to <= cut;
        match ended {
            true => match move_ended_partition(connection, &partition, settings, watermark_ms)
                .await?
            {
                Some(moved) => report += moved,
                None => {
                    report +=
                        move_partition(connection, &partition, settings, watermark_ms, cut).await?;
                }
            },
            false => {
                report +=
                    move_partition(connection, &partition, settings, watermark_ms, cut).await?;
            }
        }
        report += merge_partition(connection, &partition, settings, partition.to <= close).await?;
        if partition.to <= cut {
            report.truncated += u64::from(truncate_if_empty(connection, &partition).await?);
        }
    }
    if report.rows > 0 || report.merged > 0 {
        info!(
            rows = report.rows,
            chunks = report.chunks,
            merged = report.merged,
            merged_into = report.merged_into,
            "compacted"
        );
    }
    Ok(report)
}

/// Moves every row of `partition`, a period that ended before the hot window, in one
/// transaction that ends by truncating its table: no row is deleted one by one, no dead
/// row is left for a vacuum, and the table's space comes back at once. The table is held
/// against writes meanwhile (an ended period gets none but a late log, which waits);
/// reads go on, and wait a moment at most for the truncation, or the rows are deleted
/// instead. None, and nothing done, when one of its rows may not move yet (its entry is
/// not acknowledged) or a writer holds the table: its rows then move a unit at a time.
async fn move_ended_partition(
    connection: &mut PgConnection,
    partition: &Partition,
    settings: CompactSettings,
    watermark_ms: i64,
) -> Result<Option<Report>, CompactError> {
    let name = &partition.name;
    let any: bool = sqlx::query_scalar(ddl(format!("select exists (select 1 from {name})")))
        .fetch_one(&mut *connection)
        .await?;
    if !any {
        return Ok(Some(Report::default()));
    }
    let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
    // An autovacuum of the table gives way to the lock after `deadlock_timeout` (1 s).
    sqlx::query("set local lock_timeout = '5s'")
        .execute(&mut *transaction)
        .await?;
    match sqlx::query(ddl(format!("lock table {name} in exclusive mode")))
        .execute(&mut *transaction)
        .await
    {
        Ok(_) => {}
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("55P03") => {
            return Ok(None);
        }
        Err(error) => return Err(error.into()),
    }
    let unacknowledged: bool = sqlx::query_scalar(ddl(format!(
        "select exists (select 1 from {name} where not {})",
        ACKED.replace("$W", "$1")
    )))
    .bind(watermark_ms)
    .fetch_one(&mut *transaction)
    .await?;
    if unacknowledged {
        return Ok(None);
    }
    let mut report = Report::default();
    for unit in units(&mut transaction, name, None).await? {
        let mut after: Option<(OffsetDateTime, i64)> = None;
        loop {
            let rows = select_unit(&mut transaction, name, &unit, settings, after).await?;
            let count = rows.len() as u64;
            after = rows.last().map(|(_, _, row)| (at(row.created_at), row.id));
            let mut by_device: BTreeMap<(String, String), Vec<ChunkRow>> = BTreeMap::new();
            for (tenant, device, row) in rows {
                by_device.entry((tenant, device)).or_default().push(row);
            }
            for ((tenant, device), rows) in by_device {
                let chunks = chunks_of(rows, settings.chunk_rows)?;
                report.chunks += chunks.len() as u64;
                insert_chunks(&mut transaction, &tenant, &device, &chunks).await?;
            }
            report.rows += count;
            if !matches!(unit, Unit::Slice(..)) || count < slice_rows(settings) as u64 {
                break;
            }
        }
    }
    // Readers wait behind the truncation's lock: a moment at most, or the rows go by a
    // delete, which lets them be.
    sqlx::query("savepoint truncation")
        .execute(&mut *transaction)
        .await?;
    sqlx::query("set local lock_timeout = '200ms'")
        .execute(&mut *transaction)
        .await?;
    match sqlx::query(ddl(format!("truncate {name}")))
        .execute(&mut *transaction)
        .await
    {
        Ok(_) => report.truncated = 1,
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("55P03") => {
            sqlx::query("rollback to savepoint truncation")
                .execute(&mut *transaction)
                .await?;
            sqlx::query(ddl(format!("delete from {name}")))
                .execute(&mut *transaction)
                .await?;
        }
        Err(error) => return Err(error.into()),
    }
    transaction.commit().await?;
    info!(partition = %name, rows = report.rows, chunks = report.chunks, "an ended period moved into chunks whole");
    Ok(Some(report))
}

/// The units of work of `partition`: its devices with rows to move (those received before
/// `cut` whose entries are below the watermark, when given), grouped about [`UNIT_ROWS`]
/// rows a unit, and a device with more alone, in slices.
async fn units(
    connection: &mut PgConnection,
    partition: &str,
    movable: Option<(OffsetDateTime, i64)>,
) -> Result<Vec<Unit>, sqlx::Error> {
    let counts: Vec<(String, String, i64)> = match movable {
        Some((cut, watermark_ms)) => {
            sqlx::query_as(ddl(format!(
                "select tenant, device_id::text, count(*) from {partition} \
                 where created_at < $1 and {} group by 1, 2 order by 1, 2",
                ACKED.replace("$W", "$2")
            )))
            .bind(cut)
            .bind(watermark_ms)
            .fetch_all(&mut *connection)
            .await?
        }
        None => {
            sqlx::query_as(ddl(format!(
                "select tenant, device_id::text, count(*) from {partition} \
                 group by 1, 2 order by 1, 2"
            )))
            .fetch_all(&mut *connection)
            .await?
        }
    };
    let mut units = Vec::new();
    let mut batch: Vec<(String, String)> = Vec::new();
    let mut batched = 0;
    for (tenant, device, count) in counts {
        if count > UNIT_ROWS {
            units.push(Unit::Slice(tenant, device));
            continue;
        }
        if batched + count > UNIT_ROWS && !batch.is_empty() {
            units.push(Unit::Devices(std::mem::take(&mut batch)));
            batched = 0;
        }
        batched += count;
        batch.push((tenant, device));
    }
    if !batch.is_empty() {
        units.push(Unit::Devices(batch));
    }
    Ok(units)
}

/// The rows of `unit` of `partition`, every one (a slice: the next after `after`), with
/// their tenants and devices.
async fn select_unit(
    connection: &mut PgConnection,
    partition: &str,
    unit: &Unit,
    settings: CompactSettings,
    after: Option<(OffsetDateTime, i64)>,
) -> Result<Vec<(String, String, ChunkRow)>, sqlx::Error> {
    let columns = RETURNING.trim_start_matches("returning ");
    let rows = match unit {
        Unit::Devices(devices) => {
            let (tenants, names): (Vec<&str>, Vec<&str>) = devices
                .iter()
                .map(|(tenant, device)| (tenant.as_str(), device.as_str()))
                .unzip();
            sqlx::query(ddl(format!(
                "select {columns} from {partition} \
                 where (tenant, device_id) in (select * from unnest($1::text[], $2::text[]))"
            )))
            .bind(tenants)
            .bind(names)
            .fetch_all(&mut *connection)
            .await?
        }
        Unit::Slice(tenant, device) => {
            let mut select = QueryBuilder::<Postgres>::new(format!(
                "select {columns} from {partition} where tenant = "
            ));
            select
                .push_bind(tenant)
                .push(" and device_id = ")
                .push_bind(device);
            if let Some((at, id)) = after {
                select
                    .push(" and (created_at, id) > (")
                    .push_bind(at)
                    .push(", ")
                    .push_bind(id)
                    .push(")");
            }
            select
                .push(" order by created_at, id limit ")
                .push_bind(slice_rows(settings));
            select.build().fetch_all(&mut *connection).await?
        }
    };
    rows.iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, chunk_row(row)?)))
        .collect()
}

/// A unit of work: devices whose rows go together, or one device's rows in slices.
enum Unit {
    Devices(Vec<(String, String)>),
    Slice(String, String),
}

/// Moves the rows of `partition` that may move.
async fn move_partition(
    connection: &mut PgConnection,
    partition: &Partition,
    settings: CompactSettings,
    watermark_ms: i64,
    cut: OffsetDateTime,
) -> Result<Report, CompactError> {
    let name = &partition.name;
    let units = units(&mut *connection, name, Some((cut, watermark_ms))).await?;
    let mut report = Report::default();
    for unit in units {
        loop {
            let moved = move_unit(connection, name, &unit, settings, watermark_ms, cut).await?;
            report += moved;
            // A slice of one device goes on until the device has nothing left to move.
            if !matches!(unit, Unit::Slice(..)) || moved.rows < slice_rows(settings) as u64 {
                break;
            }
        }
    }
    Ok(report)
}

/// Rows of one device moved per transaction: whole chunks, about [`UNIT_ROWS`].
fn slice_rows(settings: CompactSettings) -> i64 {
    let chunk = settings.chunk_rows.max(1) as i64;
    (UNIT_ROWS / chunk).max(1) * chunk
}

/// Moves one unit's rows into chunks, in one transaction.
async fn move_unit(
    connection: &mut PgConnection,
    partition: &str,
    unit: &Unit,
    settings: CompactSettings,
    watermark_ms: i64,
    cut: OffsetDateTime,
) -> Result<Report, CompactError> {
    let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
    let rows = match unit {
        Unit::Devices(devices) => {
            let (tenants, names): (Vec<&str>, Vec<&str>) = devices
                .iter()
                .map(|(tenant, device)| (tenant.as_str(), device.as_str()))
                .unzip();
            sqlx::query(ddl(format!(
                "delete from {partition} \
                 where (tenant, device_id) in (select * from unnest($1::text[], $2::text[])) \
                 and created_at < $3 and {} {RETURNING}",
                ACKED.replace("$W", "$4")
            )))
            .bind(tenants)
            .bind(names)
            .bind(cut)
            .bind(watermark_ms)
            .fetch_all(&mut *transaction)
            .await?
        }
        Unit::Slice(tenant, device) => {
            sqlx::query(ddl(format!(
                "delete from {partition} where (created_at, id) in ( \
                     select created_at, id from {partition} \
                     where tenant = $1 and device_id = $2 and created_at < $3 and {} \
                     order by created_at, id limit $5) {RETURNING}",
                ACKED.replace("$W", "$4")
            )))
            .bind(tenant)
            .bind(device)
            .bind(cut)
            .bind(watermark_ms)
            .bind(slice_rows(settings))
            .fetch_all(&mut *transaction)
            .await?
        }
    };
    let moved = rows.len() as u64;
    let mut by_device: BTreeMap<(String, String), Vec<ChunkRow>> = BTreeMap::new();
    for row in rows {
        let tenant: String = row.try_get(0)?;
        let device: String = row.try_get(1)?;
        by_device
            .entry((tenant, device))
            .or_default()
            .push(chunk_row(&row)?);
    }
    let mut written = 0;
    for ((tenant, device), rows) in by_device {
        let chunks = chunks_of(rows, settings.chunk_rows)?;
        written += chunks.len() as u64;
        insert_chunks(&mut transaction, &tenant, &device, &chunks).await?;
    }
    transaction.commit().await?;
    debug!(
        partition,
        rows = moved,
        chunks = written,
        "rows moved into chunks"
    );
    Ok(Report {
        rows: moved,
        chunks: written,
        ..Report::default()
    })
}

/// A row returned by [`RETURNING`], as a chunk holds it.
fn chunk_row(row: &sqlx::postgres::PgRow) -> Result<ChunkRow, sqlx::Error> {
    let created_at: OffsetDateTime = row.try_get(7)?;
    Ok(ChunkRow {
        id: row.try_get(2)?,
        message_id: row.try_get(3)?,
        log_level: row.try_get(4)?,
        message: row.try_get(5)?,
        log_data: row.try_get(6)?,
        created_at: unix_micros(created_at),
        service_name: row.try_get(8)?,
        trace_id: row.try_get(9)?,
        span_id: row.try_get(10)?,
    })
}

/// `µs` since the epoch as a time.
fn at(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Inserts `chunks` of `tenant`'s `device` in `connection`'s transaction.
async fn insert_chunks(
    connection: &mut PgConnection,
    tenant: &str,
    device: &str,
    chunks: &[Chunk],
) -> Result<(), sqlx::Error> {
    if chunks.is_empty() {
        return Ok(());
    }
    let mut insert = QueryBuilder::<Postgres>::new(
        "insert into log_chunks (tenant, device_id, first_at, first_key, last_at, last_key, \
         rows, levels, grams, fields, block) ",
    );
    insert.push_values(chunks, |mut values, chunk| {
        values
            .push_bind(tenant)
            .push_bind(device)
            .push_bind(at(chunk.first.0))
            .push_bind(chunk.first.1)
            .push_bind(at(chunk.last.0))
            .push_bind(chunk.last.1)
            .push_bind(chunk.rows)
            .push_bind(chunk.levels.to_vec())
            .push_bind(&chunk.grams)
            .push_bind(&chunk.fields)
            .push_bind(&chunk.block);
    });
    insert.build().execute(connection).await.map(drop)
}

/// A chunk's size tier: chunks of a tier are merged together, so that a log is rewritten
/// about once per tier it climbs (log₄ of the chunk size).
fn tier(rows: i32) -> u32 {
    (rows.max(1) as u32).ilog(MERGE_FAN_IN as u32)
}

/// Which of a device's small chunks (their rows, in time order) to merge: with `all`,
/// every one; otherwise, for each tier holding [`MERGE_FAN_IN`] of them, those.
fn merge_groups(rows: &[i32], all: bool) -> Vec<Vec<usize>> {
    if all {
        return if rows.len() > 1 {
            vec![(0..rows.len()).collect()]
        } else {
            Vec::new()
        };
    }
    let mut by_tier: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (index, &count) in rows.iter().enumerate() {
        by_tier.entry(tier(count)).or_default().push(index);
    }
    by_tier
        .into_values()
        .flat_map(|indexes| {
            indexes
                .chunks_exact(MERGE_FAN_IN)
                .map(<[usize]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A device's small chunks in a period, in time order.
#[derive(sqlx::FromRow)]
struct SmallChunks {
    tenant: String,
    device: String,
    firsts: Vec<OffsetDateTime>,
    ids: Vec<i64>,
    rows: Vec<i32>,
}

/// Merges the small chunks of `partition`'s period (all of them when `close`).
async fn merge_partition(
    connection: &mut PgConnection,
    partition: &Partition,
    settings: CompactSettings,
    close: bool,
) -> Result<Report, CompactError> {
    let chunks = chunk_partition(&partition.name);
    let small: Vec<SmallChunks> = sqlx::query_as(ddl(format!(
        "select tenant, device_id::text as device, \
                    array_agg(first_at order by first_at, id) as firsts, \
                    array_agg(id order by first_at, id) as ids, \
                    array_agg(rows order by first_at, id) as rows \
             from {chunks} where rows < $1 group by 1, 2 having count(*) > 1"
    )))
    .bind(i32::try_from(settings.chunk_rows).unwrap_or(i32::MAX))
    .fetch_all(&mut *connection)
    .await?;
    let mut report = Report::default();
    for device in small {
        for group in merge_groups(&device.rows, close) {
            let keys: Vec<(OffsetDateTime, i64)> = group
                .iter()
                .map(|&index| (device.firsts[index], device.ids[index]))
                .collect();
            report += merge(
                connection,
                &chunks,
                &device.tenant,
                &device.device,
                &keys,
                settings,
            )
            .await?;
        }
    }
    Ok(report)
}

/// Merges the chunks `keys` (`(first_at, id)`) of `tenant`'s `device` in table `chunks`
/// into chunks of up to `chunk_rows`, in one transaction; nothing when another compactor
/// took one of them first.
async fn merge(
    connection: &mut PgConnection,
    chunks: &str,
    tenant: &str,
    device: &str,
    keys: &[(OffsetDateTime, i64)],
    settings: CompactSettings,
) -> Result<Report, CompactError> {
    let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
    let (firsts, ids): (Vec<OffsetDateTime>, Vec<i64>) = keys.iter().copied().unzip();
    let blocks: Vec<Vec<u8>> = sqlx::query_scalar(ddl(format!(
        "delete from {chunks} where (first_at, id) in \
             (select * from unnest($1::timestamptz[], $2::bigint[])) \
         and tenant = $3 and device_id = $4 returning block"
    )))
    .bind(firsts)
    .bind(ids)
    .bind(tenant)
    .bind(device)
    .fetch_all(&mut *transaction)
    .await?;
    if blocks.len() != keys.len() {
        transaction.rollback().await?;
        return Ok(Report::default());
    }
    let mut rows = Vec::new();
    for block in &blocks {
        rows.extend(Block::parse(block)?.rows_all()?);
    }
    let merged = chunks_of(rows, settings.chunk_rows)?;
    insert_chunks(&mut transaction, tenant, device, &merged).await?;
    transaction.commit().await?;
    Ok(Report {
        merged: keys.len() as u64,
        merged_into: merged.len() as u64,
        ..Report::default()
    })
}

/// Truncates the table of `partition`'s rows when it holds none but still takes space
/// (the rows it had are in chunks), giving the heap and its indexes back. It waits a
/// moment at most for the table's lock, and leaves it for another pass otherwise.
async fn truncate_if_empty(
    connection: &mut PgConnection,
    partition: &Partition,
) -> Result<bool, sqlx::Error> {
    let name = &partition.name;
    let pages: i64 = sqlx::query_scalar("select pg_relation_size(to_regclass($1))")
        .bind(name)
        .fetch_one(&mut *connection)
        .await?;
    if pages == 0 {
        return Ok(false);
    }
    // A vacuum of the table (autovacuum cleaning the rows compaction deleted) would hold
    // off the lock for longer than a moment: let it finish first.
    for _ in 0..VACUUM_WAITS {
        let vacuumed: bool = sqlx::query_scalar(
            "select exists (select 1 from pg_stat_progress_vacuum where relid = to_regclass($1))",
        )
        .bind(name)
        .fetch_one(&mut *connection)
        .await?;
        if !vacuumed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut transaction = sqlx::Connection::begin(&mut *connection).await?;
    sqlx::query("set local lock_timeout = '200ms'")
        .execute(&mut *transaction)
        .await?;
    let locked = sqlx::query(ddl(format!("lock table {name} in access exclusive mode")))
        .execute(&mut *transaction)
        .await;
    match locked {
        Ok(_) => {}
        // Someone reads or writes it: another pass will.
        Err(sqlx::Error::Database(error)) if error.code().as_deref() == Some("55P03") => {
            return Ok(false);
        }
        Err(error) => return Err(error),
    }
    let empty: bool = sqlx::query_scalar(ddl(format!("select not exists (select 1 from {name})")))
        .fetch_one(&mut *transaction)
        .await?;
    if !empty {
        return Ok(false);
    }
    sqlx::query(ddl(format!("truncate {name}")))
        .execute(&mut *transaction)
        .await?;
    transaction.commit().await?;
    info!(partition = %name, "every row of the period is in chunks: its table's space is given back");
    Ok(true)
}

/// When a compaction at `now` may move rows to: the hot window before it.
pub fn cut(now: OffsetDateTime, hot_window: Duration) -> OffsetDateTime {
    now - hot_window
}

/// Before when a period's small chunks are all merged, at `now`.
pub fn close(now: OffsetDateTime, hot_window: Duration) -> OffsetDateTime {
    now - hot_window - CLOSE_AFTER
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_of_a_tier_merge_four_at_a_time() {
        // Tiers: 1–3 → 0, 4–15 → 1, 16–63 → 2, 64–255 → 3.
        assert_eq!(tier(1), 0);
        assert_eq!(tier(4), 1);
        assert_eq!(tier(255), 3);
        let rows = [5, 5, 70, 6, 7, 1, 2, 9];
        assert_eq!(merge_groups(&rows, false), [vec![0, 1, 3, 4]]);
        assert_eq!(merge_groups(&[3, 3, 3], false), Vec::<Vec<usize>>::new());
        assert_eq!(merge_groups(&[3, 3, 3], true), [vec![0, 1, 2]]);
        assert_eq!(merge_groups(&[3], true), Vec::<Vec<usize>>::new());
    }

    #[test]
    fn a_slice_is_whole_chunks() {
        let settings = CompactSettings {
            hot_window: Duration::ZERO,
            chunk_rows: 3000,
        };
        assert_eq!(slice_rows(settings), 99_000);
    }
}

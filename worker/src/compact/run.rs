//! Running compaction: the workers' loop, one worker at a time under an advisory lock, and
//! `logpipeline-worker admin compact`.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use logpipeline_core::codec::unix_micros;
use logpipeline_core::connection::{Redis, RedisTarget};
use logpipeline_core::db;
use logpipeline_core::storage::COMPACT_LOCK;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{CompactError, CompactSettings, Report, close, compact, cut};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::watermark::{self, Readings, SETTLE};

/// Runs [`compact`] on a connection of `store` holding the compaction lock; None when
/// another process holds it.
pub async fn locked(
    store: &Store,
    settings: CompactSettings,
    watermark_ms: i64,
    cut: OffsetDateTime,
    close: OffsetDateTime,
) -> Result<Option<Report>, CompactError> {
    let mut connection = store.pool().acquire().await?;
    let locked: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
        .bind(COMPACT_LOCK)
        .fetch_one(&mut *connection)
        .await?;
    if !locked {
        return Ok(None);
    }
    let report = compact(&mut connection, settings, watermark_ms, cut, close).await;
    let unlocked = sqlx::query("select pg_advisory_unlock($1)")
        .bind(COMPACT_LOCK)
        .execute(&mut *connection)
        .await;
    if report.is_err() || unlocked.is_err() {
        // A connection whose transaction or lock is in doubt is not handed back.
        connection.detach();
    }
    let report = report?;
    unlocked?;
    Ok(Some(report))
}

/// Where compaction reads the watermark: the worker group's streams on Redis.
pub struct Source {
    /// A connection to Redis.
    pub redis: Redis,
    /// Every shard's stream, those of a larger shard count used before included.
    pub keys: Vec<String>,
    /// The worker group.
    pub group: String,
}

/// Compacts every `every` until `shutdown`: reads the watermark from `source` each time,
/// and compacts with the smaller of the last two readings (see [`Readings`]).
pub async fn run(
    store: Store,
    settings: CompactSettings,
    mut source: Source,
    metrics: Metrics,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut readings = Readings::default();
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match watermark::read(&mut source.redis, &source.keys, &source.group).await {
            Ok(value) => readings.add(Instant::now(), value),
            Err(error) => {
                readings.clear();
                metrics.redis_errors.inc();
                debug!(%error, "cannot read the watermark; compaction waits");
                continue;
            }
        }
        let Some(watermark_ms) = readings.settled() else {
            continue;
        };
        let now = OffsetDateTime::now_utc();
        let age = (unix_micros(now) / 1000).saturating_sub(watermark_ms) as f64 / 1000.0;
        metrics.watermark_age.set(age.max(0.0));
        let started = Instant::now();
        let (cut, close) = (
            cut(now, settings.hot_window),
            close(now, settings.hot_window),
        );
        match locked(&store, settings, watermark_ms, cut, close).await {
            Ok(Some(report)) => {
                metrics
                    .compaction_duration
                    .observe(started.elapsed().as_secs_f64());
                metrics.compacted_rows.inc_by(report.rows);
                metrics
                    .chunks_written
                    .inc_by(report.chunks + report.merged_into);
                metrics.chunks_merged.inc_by(report.merged);
            }
            Ok(None) => debug!("another worker compacts"),
            Err(error) => {
                metrics.compaction_errors.inc();
                warn!(%error, "compaction failed; it runs again next time");
            }
        }
    }
}

/// `logpipeline-worker admin compact`: reads the watermark twice, [`SETTLE`] apart, moves
/// every row it allows that is older than `older_than` (the hot window when None), merges
/// every small chunk, and says what it did, with the sizes of `logs` and `log_chunks`
/// before and after.
pub async fn admin(config: &Config, older_than: Option<Duration>) -> Result<String, CompactError> {
    let store = Store::new(db::lazy_pool(&config.database)?, config.store_settings());
    let settings = config.compact_settings();
    let mut redis = RedisTarget::from_args(&config.redis)
        .map_err(|error| CompactError::Refused(error.to_string()))?
        .connect(Duration::from_secs(10))
        .await?;
    let shards = config.stream.shards(redis.is_cluster());
    let keys: Vec<String> = shards
        .keys()
        .iter()
        .cloned()
        .chain(shards.retired())
        .collect();
    let group = &config.stream.group;
    let first = watermark::read(&mut redis, &keys, group).await?;
    tokio::time::sleep(SETTLE).await;
    let watermark_ms = first.min(watermark::read(&mut redis, &keys, group).await?);
    let before = Sizes::of(&store).await?;
    let now = OffsetDateTime::now_utc();
    let older_than = older_than.unwrap_or(settings.hot_window);
    // Every period's small chunks are merged, the current one's too.
    let close = now + Duration::from_secs(100 * 365 * 86_400);
    let report = locked(&store, settings, watermark_ms, now - older_than, close)
        .await?
        .ok_or(CompactError::Refused(
            "another worker is compacting now; run this again in a moment".into(),
        ))?;
    let after = Sizes::of(&store).await?;
    let mut printed = format!(
        "moved {} rows into {} chunks; merged {} small chunks into {}; gave back the space of {} tables of rows\n",
        report.rows, report.chunks, report.merged, report.merged_into, report.truncated
    );
    let watermark_age = (unix_micros(now) / 1000).saturating_sub(watermark_ms);
    let _ = writeln!(
        printed,
        "rows of stream entries newer than {:.1} s ago stay rows (not acknowledged yet)",
        watermark_age as f64 / 1000.0
    );
    for (name, was, is, logs) in [
        (
            "logs (rows)",
            before.rows_bytes,
            after.rows_bytes,
            after.rows,
        ),
        (
            "log_chunks",
            before.chunk_bytes,
            after.chunk_bytes,
            after.chunked,
        ),
    ] {
        let per_log = if logs > 0 {
            format!(", {:.1} bytes a log", is as f64 / logs as f64)
        } else {
            String::new()
        };
        let _ = writeln!(
            printed,
            "{name:<12} {} → {} ({logs} logs{per_log})",
            megabytes(was),
            megabytes(is)
        );
    }
    Ok(printed)
}

/// The disk taken by rows and by chunks, heap, TOAST and indexes counted, and the logs in
/// each.
struct Sizes {
    rows_bytes: i64,
    rows: i64,
    chunk_bytes: i64,
    chunked: i64,
}

impl Sizes {
    async fn of(store: &Store) -> Result<Self, sqlx::Error> {
        let (rows_bytes, rows, chunk_bytes, chunked): (i64, i64, i64, i64) = sqlx::query_as(
            "select \
                 (select coalesce(sum(pg_total_relation_size(inhrelid)), 0)::bigint \
                  from pg_inherits where inhparent = 'logs'::regclass), \
                 (select count(*) from logs), \
                 (select coalesce(sum(pg_total_relation_size(inhrelid)), 0)::bigint \
                  from pg_inherits where inhparent = 'log_chunks'::regclass), \
                 (select coalesce(sum(rows), 0)::bigint from log_chunks)",
        )
        .fetch_one(store.pool())
        .await?;
        Ok(Self {
            rows_bytes,
            rows,
            chunk_bytes,
            chunked,
        })
    }
}

fn megabytes(bytes: i64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

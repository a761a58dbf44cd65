//! Periodic upkeep of the `logs` table: partitions made ahead of ingest, partitions past
//! the retention dropped with their counts, the counter stripes of ended partitions
//! folded, and the GIN setting applied. Every worker runs the loop, and an advisory lock
//! lets one pass at a time do the dropping and rebuilding.

use std::time::Duration;

use logpipeline_core::partitions;
use logpipeline_core::storage::{self, UPKEEP_LOCK};
use sqlx::PgConnection;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::store::Store;

/// How much longer than the retention a partition is kept: a worker whose clock runs
/// behind by less never meets a partition that is gone.
const RETENTION_GRACE: Duration = Duration::from_secs(600);

/// Runs a pass every `every` until `shutdown`.
pub async fn run(store: Store, metrics: Metrics, every: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        match pass(&store, &metrics, OffsetDateTime::now_utc()).await {
            Ok(true) => {}
            Ok(false) => debug!("another worker runs the table's upkeep"),
            Err(error) => {
                metrics.storage_upkeep_errors.inc();
                warn!(%error, "upkeep of the logs table failed; it runs again next time");
            }
        }
    }
}

/// How often the counts of stored logs are folded into `log_counts`.
pub const FOLD_EVERY: Duration = Duration::from_secs(1);

/// Folds the counts of stored logs into `log_counts` every `every` until `shutdown`
/// ([`storage::fold_counts`]); one worker folds at a time, the others skip.
pub async fn fold_counts(
    store: Store,
    metrics: Metrics,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(error) = storage::fold_counts(store.pool()).await {
            metrics.storage_upkeep_errors.inc();
            debug!(%error, "folding counts failed; they are folded next time");
        }
    }
}

/// One pass at `now`: makes the partitions wanted ahead, then, unless another worker
/// holds the upkeep lock (false), drops what the retention expired, folds counters and
/// applies the search index settings.
pub async fn pass(store: &Store, metrics: &Metrics, now: OffsetDateTime) -> sqlx::Result<bool> {
    let settings = store.settings();
    let interval = settings.partitions.interval;
    let wanted = partitions::wanted(now, interval, settings.partitions.ahead);
    storage::ensure_partitions(store.pool(), &wanted, settings.partitions).await?;
    let mut connection = store.pool().acquire().await?;
    let locked: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
        .bind(UPKEEP_LOCK)
        .fetch_one(&mut *connection)
        .await?;
    if !locked {
        return Ok(false);
    }
    let result = locked_pass(&mut connection, store, metrics, now).await;
    let unlocked = sqlx::query("select pg_advisory_unlock($1)")
        .bind(UPKEEP_LOCK)
        .execute(&mut *connection)
        .await;
    result?;
    unlocked?;
    Ok(true)
}

async fn locked_pass(
    connection: &mut PgConnection,
    store: &Store,
    metrics: &Metrics,
    now: OffsetDateTime,
) -> sqlx::Result<()> {
    let settings = store.settings();
    if let Some(retention) = settings.retention {
        let dropped = storage::drop_expired(connection, retention, RETENTION_GRACE, now).await?;
        metrics.partitions_dropped.inc_by(dropped.len() as u64);
    }
    // Partitions that ended an interval ago get few late logs, if any.
    let ended = now - settings.partitions.interval.duration();
    storage::compact_counts(&mut *connection, ended).await?;
    storage::reconcile_search_indexes(connection, settings.partitions).await?;
    let count = storage::partitions(&mut *connection).await?.len();
    metrics
        .partitions
        .set(i64::try_from(count).unwrap_or(i64::MAX));
    Ok(())
}

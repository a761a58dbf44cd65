//! Periodic upkeep of the stream: trimming acknowledged entries, refreshing the stream
//! gauges, and removing consumer names left behind by workers that are gone.

use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::stream::{GroupInfo, Stream};

/// How often leftover consumer names are looked for.
const CONSUMER_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Runs upkeep of every shard in `shards` (shard `i` at index `i`) every `interval`
/// until `shutdown`. Consumers holding nothing that have not read for `consumer_expiry`
/// are removed.
pub async fn run(
    mut shards: Vec<Stream>,
    metrics: Metrics,
    interval: Duration,
    consumer_expiry: Duration,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_sweep = Instant::now() + CONSUMER_SWEEP_EVERY;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let mut total = GroupInfo::default();
        let mut oldest_age = Duration::ZERO;
        for (index, stream) in shards.iter_mut().enumerate() {
            trim(stream, &metrics).await;
            match stream.group_info().await {
                Ok(info) => {
                    let shard = index.to_string();
                    let lag = info.lag.unwrap_or(0);
                    metrics
                        .shard_length
                        .with_label_values(&[&shard])
                        .set(gauge(info.length));
                    metrics
                        .shard_lag
                        .with_label_values(&[&shard])
                        .set(gauge(lag));
                    metrics
                        .shard_pending
                        .with_label_values(&[&shard])
                        .set(gauge(info.pending));
                    total.length += info.length;
                    total.lag = Some(total.lag.unwrap_or(0) + lag);
                    total.pending += info.pending;
                    oldest_age = oldest_age.max(info.oldest_pending_age(SystemTime::now()));
                }
                Err(error) => {
                    metrics.redis_errors.inc();
                    debug!(%error, shard = index, "cannot read the group's numbers");
                }
            }
        }
        metrics.stream_length.set(gauge(total.length));
        metrics.group_lag.set(gauge(total.lag.unwrap_or(0)));
        metrics.group_pending.set(gauge(total.pending));
        metrics.oldest_pending_age.set(oldest_age.as_secs_f64());
        if Instant::now() >= next_sweep {
            next_sweep = Instant::now() + CONSUMER_SWEEP_EVERY;
            for stream in &mut shards {
                match stream.remove_idle_consumers(consumer_expiry).await {
                    Ok(0) => {}
                    Ok(removed) => {
                        info!(removed, "removed consumers left by workers that are gone");
                    }
                    Err(error) => warn!(%error, "cannot sweep idle consumers"),
                }
            }
        }
    }
}

/// Trims the acknowledged entries of `stream`.
async fn trim(stream: &mut Stream, metrics: &Metrics) {
    match stream.trim().await {
        Ok(0) => {}
        Ok(trimmed) => {
            metrics.entries_trimmed.inc_by(trimmed);
            debug!(trimmed, "trimmed acknowledged entries");
        }
        Err(error) => {
            metrics.redis_errors.inc();
            warn!(%error, "cannot trim the stream");
        }
    }
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

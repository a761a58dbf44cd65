//! Periodic upkeep of the stream: trimming acknowledged entries, refreshing the stream
//! gauges, and removing consumer names left behind by workers that are gone.

use std::time::{Duration, Instant, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;
use crate::stream::Stream;

/// How often leftover consumer names are looked for.
const CONSUMER_SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Runs upkeep every `interval` until `shutdown`. Consumers holding nothing that have
/// not read for `consumer_expiry` are removed.
pub async fn run(
    mut stream: Stream,
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
        match stream.group_info().await {
            Ok(info) => {
                metrics.stream_length.set(gauge(info.length));
                metrics.group_lag.set(gauge(info.lag.unwrap_or(0)));
                metrics.group_pending.set(gauge(info.pending));
                metrics
                    .oldest_pending_age
                    .set(info.oldest_pending_age(SystemTime::now()).as_secs_f64());
            }
            Err(error) => {
                metrics.redis_errors.inc();
                debug!(%error, "cannot read the group's numbers");
            }
        }
        if Instant::now() >= next_sweep {
            next_sweep = Instant::now() + CONSUMER_SWEEP_EVERY;
            match stream.remove_idle_consumers(consumer_expiry).await {
                Ok(0) => {}
                Ok(removed) => info!(removed, "removed consumers left by workers that are gone"),
                Err(error) => warn!(%error, "cannot sweep idle consumers"),
            }
        }
    }
}

fn gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

//! Retrying start-up steps while a dependency is down.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Retries `attempt` with exponential backoff (200 ms to 5 s, with jitter) until it
/// succeeds, returning its value, or until `shutdown`, returning None.
pub async fn until_done<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    attempt: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .without_max_times();
    let retrying = attempt
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .notify(|error, delay| warn!(%error, ?delay, "cannot {what} yet; retrying"));
    tokio::select! {
        done = retrying => done.ok(),
        () = shutdown.cancelled() => None,
    }
}

//! Runs: the tag (`log_data.run`) a test puts on each log it sends, to find its logs
//! again among the others in PostgreSQL, count them, and check each was stored once.

use std::collections::HashSet;

use anyhow::Result;
use sqlx::PgPool;

use crate::devices;

/// A run tag unique to this call: `name` and a random suffix.
pub fn run_id(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

/// A query counting the rows of run `run` by containment (`log_data @> {"run": …}`),
/// which the GIN index on `log_data` serves, also for runs of many thousand rows.
pub fn count_query(run: &str) -> String {
    format!("select count(*) from logs where log_data @> '{{\"run\": \"{run}\"}}'")
}

/// Checks that the rows of `run` are exactly the logs accepted: as many, each id once,
/// each message once. Panics on a difference; fails if PostgreSQL cannot be read.
pub async fn assert_exactly_once(pool: &PgPool, run: &str, accepted: &[String]) -> Result<()> {
    let accepted_ids: HashSet<&str> = accepted.iter().map(String::as_str).collect();
    assert_eq!(
        accepted_ids.len(),
        accepted.len(),
        "the api gave an id twice"
    );
    let stored = devices::stored(pool, run, accepted).await?;
    assert_eq!(stored.rows, accepted.len(), "rows stored vs logs accepted");
    assert_eq!(stored.duplicate_ids, 0, "duplicate message ids");
    assert_eq!(stored.duplicate_messages, 0, "a log was stored twice");
    assert_eq!(
        (stored.missing, stored.unexpected),
        (0, 0),
        "stored ids differ from accepted ids"
    );
    Ok(())
}

/// Waits up to `timeout` until `run` has as many logs stored, rows and chunks, as
/// `accepted`, then checks that each was stored once ([`assert_exactly_once`]).
pub async fn assert_stored_exactly_once(
    pool: &PgPool,
    run: &str,
    accepted: &[String],
    timeout: std::time::Duration,
) -> Result<()> {
    wait_for_run(pool, run, accepted.len(), timeout).await?;
    assert_exactly_once(pool, run, accepted).await
}

/// Waits up to `timeout` until at least `count` logs of `run` are stored, rows and
/// chunks; returns how long it waited.
pub async fn wait_for_run(
    pool: &PgPool,
    run: &str,
    count: usize,
    timeout: std::time::Duration,
) -> Result<std::time::Duration> {
    let started = std::time::Instant::now();
    crate::stack::eventually(
        &format!("{count} logs of {run} are stored"),
        timeout,
        || {
            let pool = pool.clone();
            async move { Ok(crate::stored::of_run(&pool, run).await?.len() >= count) }
        },
    )
    .await?;
    Ok(started.elapsed())
}

/// Checks that each device's logs of `run` (`log_data.device`, `log_data.seq`), in the
/// order of their keys, are in the order it sent them: its shard kept them in order, and
/// their keys derive from their entries. Panics on a log out of order.
pub async fn assert_in_device_order(pool: &PgPool, run: &str) -> Result<()> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "select (log_data->>'device')::bigint, (log_data->>'seq')::bigint from logs \
         where log_data @> jsonb_build_object('run', $1::text) order by 1, id",
    )
    .bind(run)
    .fetch_all(pool)
    .await?;
    for pair in rows.windows(2) {
        let ((device, seq), (next_device, next_seq)) = (pair[0], pair[1]);
        if device == next_device {
            assert_eq!(
                next_seq,
                seq + 1,
                "device {device}: log {next_seq} after {seq}"
            );
        }
    }
    Ok(())
}

/// The shard of a log's entry, from the log's id (`<ms>-<seq>` or `<ms>-<seq>.<i>`).
pub fn shard_of(message_id: &str) -> Option<u32> {
    logpipeline_core::stream::shard_of_id(message_id.split('.').next()?)
}

/// A pool of two connections to `url`.
pub async fn pool(url: &str) -> Result<PgPool> {
    Ok(sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(url)
        .await?)
}

//! The Redis stream as the workers' consumer group sees it, read for assertions: entries
//! pending and who holds them, the group's consumers, the dead letters.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

use crate::stack::eventually;

/// Waits until the dead-letter stream holds `count` entries; fails after `timeout`,
/// naming `what`.
pub async fn wait_for_dead_letters(
    redis: &MultiplexedConnection,
    what: &str,
    count: usize,
    timeout: Duration,
) -> Result<()> {
    eventually(what, timeout, || {
        let mut redis = redis.clone();
        async move { Ok(redis.xlen::<_, usize>("logs:stream:dead").await? == count) }
    })
    .await
}

/// Entries the worker group has delivered and not acknowledged yet.
pub async fn pending_count(redis: &mut MultiplexedConnection) -> Result<i64> {
    let summary: (i64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg("logs:stream")
        .arg("log_workers")
        .query_async(redis)
        .await?;
    Ok(summary.0)
}

/// Whether any consumer whose name starts with `prefix` holds unacknowledged entries.
pub async fn holds_pending(redis: &mut MultiplexedConnection, prefix: &str) -> Result<bool> {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg("logs:stream")
        .arg("log_workers")
        .query_async(redis)
        .await?;
    let redis::Value::Array(parts) = summary else {
        return Ok(false);
    };
    let Some(redis::Value::Array(consumers)) = parts.get(3) else {
        return Ok(false);
    };
    Ok(consumers.iter().any(|consumer| match consumer {
        redis::Value::Array(pair) => matches!(pair.first(), Some(redis::Value::BulkString(name)) if name.starts_with(prefix.as_bytes())),
        _ => false,
    }))
}

/// How many consumers the worker group has: a consumer appears with its first read.
/// 0 when Redis cannot say, as before the group exists.
pub async fn consumer_count(redis: &mut MultiplexedConnection) -> usize {
    redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg("logs:stream")
        .arg("log_workers")
        .query_async::<Vec<redis::Value>>(redis)
        .await
        .map_or(0, |consumers| consumers.len())
}

/// The dead-letter stream's entries, each as its fields.
pub async fn dead_letters(
    redis: &mut MultiplexedConnection,
) -> Result<Vec<HashMap<String, String>>> {
    let dead: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(&["logs:stream:dead", "-", "+"])
        .query_async(redis)
        .await?;
    Ok(dead.into_iter().map(|(_, fields)| fields).collect())
}

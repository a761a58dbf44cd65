//! Reads a consumer group's backlog from the pipeline's Redis.

use std::time::Duration;

use redis::AsyncCommands;
use redis::streams::StreamInfoGroupsReply;

use crate::scaling::Backlog;
use crate::{Error, Result};

/// Reads `lag` and `pending` of `group` on `stream` with `XINFO GROUPS`.
///
/// A stream that does not exist yet has no backlog. A group that does not exist yet
/// (no worker has started) has the whole stream as lag, and so does a group whose lag
/// Redis cannot compute (after entries were deleted from the middle of the stream).
pub async fn read(url: &str, stream: &str, group: &str, timeout: Duration) -> Result<Backlog> {
    tokio::time::timeout(timeout, read_unbounded(url, stream, group, timeout))
        .await
        .map_err(|_| Error::RedisTimeout(timeout))?
}

async fn read_unbounded(
    url: &str,
    stream: &str,
    group: &str,
    timeout: Duration,
) -> Result<Backlog> {
    let client = redis::Client::open(url)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let exists: bool = con.exists(stream).await?;
    if !exists {
        return Ok(Backlog { lag: 0, pending: 0 });
    }
    let groups: StreamInfoGroupsReply = con.xinfo_groups(stream).await?;
    let entry = groups.groups.into_iter().find(|g| g.name == group);
    let (lag, pending) = match entry {
        Some(g) => (g.lag, g.pending),
        None => (None, 0),
    };
    let lag = match lag {
        Some(lag) => lag,
        None => con.xlen(stream).await?,
    };
    Ok(Backlog {
        lag: u64::try_from(lag).unwrap_or(u64::MAX),
        pending: u64::try_from(pending).unwrap_or(u64::MAX),
    })
}

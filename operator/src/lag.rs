//! Reads a consumer group's backlog from the pipeline's Redis.

use std::time::Duration;

use redis::AsyncCommands;
use redis::streams::{StreamInfoConsumersReply, StreamInfoGroupsReply};

use logpipeline_core::config::RedisArgs;
use logpipeline_core::connection::{Redis, RedisTarget};

use crate::scaling::Backlog;
use crate::{Error, Result};

/// The Redis URL of a pipeline in namespace `namespace` as the operator must use it: the
/// pipeline's pods resolve a host without a dot (`redis://redis:6379`, as the sample
/// has it) to a Service of their own namespace, and so must the operator, which runs in
/// another. Such a host becomes `<host>.<namespace>.svc`; anything else is kept.
pub fn resolve_in_namespace(url: &str, namespace: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return url.to_owned();
    };
    let short = match parsed.host() {
        Some(url::Host::Domain(host)) if !host.contains('.') && host != "localhost" => {
            host.to_owned()
        }
        _ => return url.to_owned(),
    };
    match parsed.set_host(Some(&format!("{short}.{namespace}.svc"))) {
        Ok(()) => parsed.into(),
        Err(_) => url.to_owned(),
    }
}

/// Where the Redis of a pipeline in `namespace` is, from its Secret's `url`: one server,
/// or with `cluster` one or more nodes of a Redis Cluster, comma-separated; each host
/// resolved as [`resolve_in_namespace`] does.
pub fn target(url: &str, namespace: &str, cluster: bool) -> Result<RedisTarget> {
    let resolved: Vec<String> = url
        .split(',')
        .map(|node| resolve_in_namespace(node.trim(), namespace))
        .collect();
    let args = RedisArgs::of_url(resolved.join(","), cluster);
    RedisTarget::from_args(&args).map_err(|error| Error::RedisUrl(error.to_string()))
}

/// What the operator reads of a pipeline's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// The group's lag and pending entries, over every shard.
    pub backlog: Backlog,
    /// Each shard's lag, shard 0 first.
    pub shard_lag: Vec<u64>,
    /// Consumers of the group that read or claimed within the `active_within` given to
    /// [`read`].
    pub consumers_active: u64,
}

/// How recently a consumer of a pipeline whose workers block `block_ms` per read must
/// have read (or claimed) to count as active: a live worker does at least every
/// `block_ms`, and refreshes its claim at least every few seconds while it retries a
/// batch.
pub fn active_within(block_ms: i32) -> Duration {
    Duration::from_millis(u64::try_from(block_ms).unwrap_or(0)) + Duration::from_secs(10)
}

/// Reads `lag` and `pending` of `group` on each of `shards` (stream keys) with `XINFO
/// GROUPS`, and its consumers active within `active_within` with `XINFO CONSUMERS`, and
/// adds them up: the backlog of every shard is the pipeline's.
///
/// A stream that does not exist yet has no backlog. A group that does not exist yet
/// (no worker has started) has the whole stream as lag, and so does a group whose lag
/// Redis cannot compute (after entries were deleted from the middle of the stream).
pub async fn read(
    redis: &RedisTarget,
    shards: &[String],
    group: &str,
    timeout: Duration,
    active_within: Duration,
) -> Result<Reading> {
    let reading = async {
        let mut con = redis.connect(timeout).await?;
        let mut total = Reading {
            backlog: Backlog { lag: 0, pending: 0 },
            shard_lag: Vec::with_capacity(shards.len()),
            consumers_active: 0,
        };
        for stream in shards {
            let shard = read_shard(&mut con, stream, group, active_within).await?;
            total.shard_lag.push(shard.backlog.lag);
            total.backlog.lag = total.backlog.lag.saturating_add(shard.backlog.lag);
            total.backlog.pending = total.backlog.pending.saturating_add(shard.backlog.pending);
            total.consumers_active += shard.consumers_active;
        }
        Ok(total)
    };
    tokio::time::timeout(timeout, reading)
        .await
        .map_err(|_| Error::RedisTimeout(timeout))?
}

async fn read_shard(
    con: &mut Redis,
    stream: &str,
    group: &str,
    active_within: Duration,
) -> Result<Reading> {
    let exists: bool = con.exists(stream).await?;
    if !exists {
        return Ok(Reading {
            backlog: Backlog { lag: 0, pending: 0 },
            shard_lag: Vec::new(),
            consumers_active: 0,
        });
    }
    let groups: StreamInfoGroupsReply = con.xinfo_groups(stream).await?;
    let Some(entry) = groups.groups.into_iter().find(|g| g.name == group) else {
        let length: i64 = con.xlen(stream).await?;
        return Ok(Reading {
            backlog: Backlog {
                lag: u64::try_from(length).unwrap_or(u64::MAX),
                pending: 0,
            },
            shard_lag: Vec::new(),
            consumers_active: 0,
        });
    };
    let lag = match entry.lag {
        Some(lag) => lag,
        None => con.xlen(stream).await?,
    };
    let consumers: StreamInfoConsumersReply = con.xinfo_consumers(stream, group).await?;
    let active_ms = active_within.as_millis();
    let consumers_active = consumers
        .consumers
        .iter()
        .filter(|consumer| (consumer.idle as u128) < active_ms)
        .count() as u64;
    Ok(Reading {
        backlog: Backlog {
            lag: u64::try_from(lag).unwrap_or(u64::MAX),
            pending: u64::try_from(entry.pending).unwrap_or(u64::MAX),
        },
        shard_lag: Vec::new(),
        consumers_active,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_host_is_a_service_of_the_pipelines_namespace() {
        let cases = [
            ("redis://redis:6379", "redis://redis.logs.svc:6379"),
            (
                "redis://:secret@redis:6379/2",
                "redis://:secret@redis.logs.svc:6379/2",
            ),
            ("rediss://queue/0", "rediss://queue.logs.svc/0"),
            (
                "redis://redis.other.svc:6379",
                "redis://redis.other.svc:6379",
            ),
            ("redis://redis.example.com", "redis://redis.example.com"),
            ("redis://10.0.0.7:6379", "redis://10.0.0.7:6379"),
            ("redis://localhost:6379", "redis://localhost:6379"),
            ("not a url", "not a url"),
        ];
        for (url, expected) in cases {
            assert_eq!(resolve_in_namespace(url, "logs"), expected, "{url}");
        }
    }
}

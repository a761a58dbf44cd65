//! Reads a consumer group's backlog from the pipeline's Redis.

use std::time::Duration;

use redis::AsyncCommands;
use redis::streams::StreamInfoGroupsReply;

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

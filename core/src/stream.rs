//! What the api and worker both need of the stream.

use redis::aio::ConnectionLike;
use redis::{ErrorKind, RedisError, RedisResult};

/// Creates `group` on `stream` (and the stream itself) unless it exists.
///
/// The group starts at the beginning of the stream (`0`, not `$`), so logs the API
/// accepted before any worker ran are still read.
pub async fn ensure_group<C: ConnectionLike>(
    con: &mut C,
    stream: &str,
    group: &str,
) -> RedisResult<()> {
    let created: RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(con)
        .await;
    match created {
        Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Fails when Redis may evict keys without a TTL (an `allkeys-*` policy), which could
/// evict the stream and lose accepted logs. A Redis that does not allow `CONFIG` is
/// assumed to be configured well.
pub async fn check_eviction_policy<C: ConnectionLike>(con: &mut C) -> RedisResult<()> {
    let answer: RedisResult<Vec<String>> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxmemory-policy")
        .query_async(con)
        .await;
    let Ok(answer) = answer else {
        return Ok(());
    };
    match answer.get(1) {
        Some(policy) if policy.starts_with("allkeys-") => Err(RedisError::from((
            ErrorKind::Client,
            "unsafe Redis eviction policy",
            format!(
                "maxmemory-policy is {policy}, which may evict the stream and lose accepted logs; \
                 use noeviction or a volatile-* policy"
            ),
        ))),
        _ => Ok(()),
    }
}

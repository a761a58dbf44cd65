//! What the api and worker both need of the stream: its shards, its consumer group and
//! a safe Redis.
//!
//! # Shards
//!
//! One stream is one Redis key, which one core of one server holds. A deployment that
//! needs more spreads its logs over `N` streams, its shards. Shard 0 is the stream's own
//! key (`logs:stream`), so a deployment of one shard is what it always was; shard `i`
//! above 0 is `{logs:stream:shard:i}`. The braces are a hash tag: the keys that must
//! go with a shard in one script (its idempotency records, its dead letters) are named
//! `<shard>:<suffix>`, and land on its slot of a Redis Cluster.
//!
//! On a Redis Cluster, shard 0 is `{logs:stream}`: braces around the stream's name, so
//! that its companions share its slot too. (On one server it keeps its plain name, which
//! deployments from before shards have.)
//!
//! The api puts a request on the shard of its tenant and its first log's device, so
//! one device's logs stay in order on one shard. Every shard assigns its entry ids so
//! that `seq % MAX_SHARDS` is the shard's number: two shards never give the same id,
//! and the logs' keys in PostgreSQL, which derive from it, stay unique.

use redis::aio::ConnectionLike;
use redis::{ErrorKind, RedisError, RedisResult};

use crate::generations::fnv1a;

/// Most shards a stream may have. Entry ids keep a shard's number in their sequence
/// number modulo this, so it is fixed.
pub const MAX_SHARDS: u32 = 16;

/// The keys of a stream's shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shards {
    base: String,
    keys: Vec<String>,
}

impl Shards {
    /// The first `count` shards (1 to [`MAX_SHARDS`]) of stream `base`.
    pub fn new(base: &str, count: u32) -> Self {
        let count = count.clamp(1, MAX_SHARDS);
        Self {
            base: base.to_owned(),
            keys: (0..count).map(|index| shard_key(base, index)).collect(),
        }
    }

    /// The first `count` shards of stream `base` on a Redis Cluster, where shard 0 too
    /// carries a hash tag.
    pub fn on_cluster(base: &str, count: u32) -> Self {
        let mut shards = Self::new(base, count);
        shards.keys[0] = format!("{{{base}}}");
        shards
    }

    /// Their keys, shard 0 first.
    pub fn keys(&self) -> &[String] {
        &self.keys
    }

    /// How many there are.
    pub fn count(&self) -> usize {
        self.keys.len()
    }

    /// The shard of logs of `tenant` whose (first) device is `device`.
    pub fn of(&self, tenant: &str, device: &str) -> usize {
        if self.keys.len() == 1 {
            return 0;
        }
        let bytes = tenant.bytes().chain([0]).chain(device.bytes());
        (fnv1a(bytes) % self.keys.len() as u64) as usize
    }

    /// The keys of the shards beyond these, which a larger count used: the workers
    /// drain whichever of them still exist.
    pub fn retired(&self) -> Vec<String> {
        (self.keys.len() as u32..MAX_SHARDS)
            .map(|index| shard_key(&self.base, index))
            .collect()
    }
}

/// The key of shard `index` of stream `base`.
pub fn shard_key(base: &str, index: u32) -> String {
    if index == 0 {
        base.to_owned()
    } else {
        format!("{{{base}:shard:{index}}}")
    }
}

/// The shard number an entry id of a sharded stream carries (see the module's docs).
pub fn shard_of_id(id: &str) -> Option<u32> {
    let seq: u64 = id.split_once('-')?.1.parse().ok()?;
    Some((seq % u64::from(MAX_SHARDS)) as u32)
}

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

/// Whether a Redis Cluster refuses every command while any of its slots has no master
/// (`cluster-require-full-coverage yes`, Redis' default): then one master's failure stops
/// every shard for the seconds until its replica takes over. `None` when Redis does not
/// allow `CONFIG`.
pub async fn requires_full_coverage<C: ConnectionLike>(con: &mut C) -> Option<bool> {
    let answer: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("cluster-require-full-coverage")
        .query_async(con)
        .await
        .ok()?;
    answer.get(1).map(|value| value == "yes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shard_is_the_stream_itself() {
        let one = Shards::new("logs:stream", 1);
        assert_eq!(one.keys(), ["logs:stream"]);
        assert_eq!(one.of("default", "pump-1"), 0);
        assert_eq!(one.retired().len(), MAX_SHARDS as usize - 1);
        assert_eq!(one.retired()[0], "{logs:stream:shard:1}");
    }

    #[test]
    fn shards_beyond_the_first_carry_a_hash_tag() {
        let three = Shards::new("logs:stream", 3);
        assert_eq!(
            three.keys(),
            [
                "logs:stream",
                "{logs:stream:shard:1}",
                "{logs:stream:shard:2}"
            ]
        );
        assert!(!three.retired().contains(&three.keys()[2]));
        assert_eq!(three.retired()[0], "{logs:stream:shard:3}");
    }

    #[test]
    fn on_a_cluster_shard_0_carries_a_hash_tag_too() {
        let three = Shards::on_cluster("logs:stream", 3);
        assert_eq!(three.keys()[0], "{logs:stream}");
        assert_eq!(three.keys()[1], "{logs:stream:shard:1}");
    }

    #[test]
    fn a_device_stays_on_one_shard_and_devices_spread() {
        let three = Shards::new("logs:stream", 3);
        let mut per_shard = [0; 3];
        for device in 0..300 {
            let shard = three.of("default", &format!("pump-{device}"));
            assert_eq!(shard, three.of("default", &format!("pump-{device}")));
            per_shard[shard] += 1;
        }
        assert!(per_shard.iter().all(|&n| n > 60), "{per_shard:?}");
        assert_ne!(
            (0..20)
                .map(|t| three.of(&format!("t{t}"), "pump-1"))
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            1,
            "the tenant is part of the hash"
        );
    }

    #[test]
    fn an_entry_id_carries_its_shard() {
        assert_eq!(shard_of_id("1700000000000-33"), Some(1));
        assert_eq!(shard_of_id("1700000000000-16"), Some(0));
        assert_eq!(shard_of_id("nonsense"), None);
    }
}

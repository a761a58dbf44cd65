//! The query cache in Redis, never stale.
//!
//! Every device, service and trace has a generation, a counter in a Redis hash that the
//! worker bumps after each commit holding its logs and before acknowledging it
//! ([`logpipeline_core::generations`]). Cached query results are keyed by the generation
//! they were computed at, so a commit retires all of its cached results at once, while
//! repeated queries between commits are served from the cache. Retired entries simply
//! expire.
//!
//! The cache is an optimisation: when Redis fails, queries go to PostgreSQL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use logpipeline_core::connection::Redis;
use logpipeline_core::generations::{self, GenerationKeys, Kind};
use logpipeline_core::tenant::Tenant;
use serde::Serialize;
use tracing::warn;

use crate::metrics::Metrics;

/// The cache.
#[derive(Clone)]
pub struct Cache {
    redis: Redis,
    prefix: Arc<str>,
    generations: Arc<GenerationKeys>,
    metrics: Metrics,
}

impl Cache {
    /// A cache under key `prefix` through `redis`, with the generations in the hashes
    /// of `generations`.
    pub fn new(redis: Redis, prefix: &str, generations: GenerationKeys, metrics: Metrics) -> Self {
        Self {
            redis,
            prefix: prefix.into(),
            generations: Arc::new(generations),
            metrics,
        }
    }

    /// The current generation of what a query of `kind` for `name` of `tenant` reads (0
    /// before its first commit), or None when Redis fails.
    pub async fn generation(&self, tenant: &Tenant, kind: Kind, name: &str) -> Option<u64> {
        let started = Instant::now();
        let generation: redis::RedisResult<Option<u64>> = redis::cmd("HGET")
            .arg(self.generations.key(kind))
            .arg(generations::field(tenant, kind, name))
            .query_async(&mut self.redis.clone())
            .await;
        self.metrics.redis_call("HGET", started.elapsed());
        self.failed("read a generation", generation)
            .map(Option::unwrap_or_default)
    }

    /// The key of a cached result: `<prefix>:<kind>:` and the JSON of `identity`, which
    /// is unambiguous whatever characters the values hold.
    pub fn key(&self, kind: &str, identity: &impl Serialize) -> String {
        let identity = serde_json::to_string(identity).unwrap_or_default();
        format!("{}:{kind}:{identity}", self.prefix)
    }

    /// The cached value at `key`.
    pub async fn get(&self, key: &str) -> Option<Vec<u8>> {
        let started = Instant::now();
        let value: redis::RedisResult<Option<Vec<u8>>> = redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.redis.clone())
            .await;
        self.metrics.redis_call("GET", started.elapsed());
        let value = self.failed("read the cache", value).flatten();
        self.metrics.cache_lookup(value.is_some());
        value
    }

    /// Caches `value` at `key` for `ttl`.
    pub async fn put(&self, key: &str, value: &[u8], ttl: Duration) {
        let started = Instant::now();
        let stored: redis::RedisResult<()> = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("EX")
            .arg(ttl.as_secs().max(1))
            .query_async(&mut self.redis.clone())
            .await;
        self.metrics.redis_call("SET", started.elapsed());
        self.failed("write the cache", stored);
    }

    fn failed<T>(&self, doing: &str, result: redis::RedisResult<T>) -> Option<T> {
        match result {
            Ok(value) => Some(value),
            Err(error) => {
                warn!(%error, doing, "cache unavailable; using PostgreSQL");
                None
            }
        }
    }
}

//! Settings the api and worker share, as `clap` argument groups: each is a flag with an
//! environment-variable fallback, so the same binary runs from flags locally and from
//! ConfigMaps and Secrets in Kubernetes.

use clap::{Args, ValueEnum};

/// Where Redis is.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis holding the stream and the query cache. Configure it with AOF persistence and
    /// an eviction policy that spares keys without a TTL (`noeviction` or `volatile-*`):
    /// the stream must never be evicted.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
}

/// Which stream and consumer group carry the logs.
#[derive(Debug, Clone, Args)]
pub struct StreamArgs {
    /// The Redis Stream accepted logs are queued on.
    #[arg(long, env = "LOGPIPELINE_STREAM", default_value = "logs:stream")]
    pub stream: String,

    /// The consumer group the workers read the stream through.
    #[arg(long, env = "LOGPIPELINE_GROUP", default_value = "log_workers")]
    pub group: String,
}

/// The query cache in Redis.
#[derive(Debug, Clone, Args)]
pub struct CacheArgs {
    /// Prefix of the query cache's Redis keys. The api caches query results under it;
    /// the worker bumps a per-device generation under it on every commit, which retires
    /// that device's cached results.
    #[arg(long, env = "LOGPIPELINE_CACHE_PREFIX", default_value = "cache")]
    pub cache_prefix: String,
}

impl CacheArgs {
    /// The hash of per-device generations: `<prefix>:generations`.
    pub fn generations_key(&self) -> String {
        format!("{}:generations", self.cache_prefix)
    }
}

/// Where PostgreSQL is.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL database holding the `logs` table.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/logs"
    )]
    pub database_url: String,

    /// Most connections this process opens to PostgreSQL.
    #[arg(long, env = "LOGPIPELINE_DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_max_connections: u32,
}

/// How the process reports on itself.
#[derive(Debug, Clone, Args)]
pub struct TelemetryArgs {
    /// Format of the process's own logs: `text` for people, `json` for log collectors.
    /// Levels and filters come from `RUST_LOG` (default `info`).
    #[arg(long, env = "LOGPIPELINE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Format of the process's own logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

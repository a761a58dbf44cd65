//! The api's settings: flags with environment-variable fallbacks (`--help` lists them).

use std::net::SocketAddr;

use clap::Parser;
use logpipeline_core::config::{CacheArgs, DatabaseArgs, RedisArgs, StreamArgs, TelemetryArgs};

/// LogPipeline's HTTP service: accepts logs into a Redis Stream and serves them back.
#[derive(Debug, Clone, Parser)]
#[command(name = "logpipeline-api", version)]
pub struct Config {
    /// Address to serve HTTP on: ingest, queries, health, probes and metrics.
    #[arg(long, env = "LOGPIPELINE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub stream: StreamArgs,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub cache: CacheArgs,

    /// Seconds a page of logs stays cached when no commit of its device retires it.
    #[arg(long, env = "LOGPIPELINE_QUERY_CACHE_TTL_SECS", default_value_t = 300)]
    pub query_cache_ttl_secs: u64,

    /// Seconds `GET /api/stats` answers from its cache.
    #[arg(long, env = "LOGPIPELINE_STATS_CACHE_TTL_SECS", default_value_t = 60)]
    pub stats_cache_ttl_secs: u64,

    /// Most entries the stream may hold before the API refuses new logs with 503 and
    /// `Retry-After` (backpressure). An entry is one accepted request, of 1 to 1000 logs;
    /// entries leave the stream once a worker has stored and acknowledged them.
    #[arg(long, env = "LOGPIPELINE_STREAM_CAPACITY", default_value_t = 100_000)]
    pub stream_capacity: u64,

    /// Largest request body accepted, in bytes; larger bodies get 413 before they are
    /// read whole.
    #[arg(long, env = "LOGPIPELINE_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Seconds to wait for Redis to answer a command before the request fails with 503.
    #[arg(long, env = "LOGPIPELINE_REDIS_TIMEOUT_SECS", default_value_t = 5)]
    pub redis_timeout_secs: u64,

    /// Seconds in-flight requests may take to finish after SIGTERM before the process
    /// exits anyway.
    #[arg(long, env = "LOGPIPELINE_SHUTDOWN_TIMEOUT_SECS", default_value_t = 20)]
    pub shutdown_timeout_secs: u64,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

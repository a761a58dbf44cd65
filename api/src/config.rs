//! The api's settings: flags with environment-variable fallbacks (`--help` lists them).

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use ipnet::IpNet;
use logpipeline_core::config::{
    CacheArgs, DatabaseArgs, DurabilityArgs, RedisArgs, StreamArgs, TelemetryArgs,
};

/// LogPipeline's HTTP service: accepts logs into a Redis Stream and serves them back.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "logpipeline-api",
    version,
    args_conflicts_with_subcommands = true
)]
pub struct Config {
    /// A tool instead of the service.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// How clients authenticate: `keys` needs an API key on ingest, queries and stats
    /// (from `--api-keys-file` or `--api-keys`); `off` lets anyone write and read every
    /// log, as tenant `default` (a local stack only; the api warns at start-up).
    #[arg(long, env = "LOGPIPELINE_AUTH", value_enum, default_value_t = AuthMode::Keys)]
    pub auth: AuthMode,

    /// The API keys file (see docs/security.md), re-read when it changes.
    #[arg(long, env = "LOGPIPELINE_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,

    /// The API keys file's contents, inline (instead of `--api-keys-file`).
    #[arg(
        long,
        env = "LOGPIPELINE_API_KEYS",
        hide_env_values = true,
        conflicts_with = "api_keys_file"
    )]
    pub api_keys: Option<String>,

    /// Seconds between checks of the API keys file for changes.
    #[arg(long, env = "LOGPIPELINE_API_KEYS_RELOAD_SECS", default_value_t = 5)]
    pub api_keys_reload_secs: u64,

    /// Requests per second each API key may make (429 beyond); no limit when unset.
    #[arg(long, env = "LOGPIPELINE_RATE_LIMIT_PER_KEY")]
    pub rate_limit_per_key: Option<NonZeroU32>,

    /// Requests an API key may make at once above its rate; one second's worth when
    /// unset.
    #[arg(long, env = "LOGPIPELINE_RATE_LIMIT_PER_KEY_BURST")]
    pub rate_limit_per_key_burst: Option<NonZeroU32>,

    /// Requests per second each client address may make to ingest, queries and stats
    /// (429 beyond); no limit when unset.
    #[arg(long, env = "LOGPIPELINE_RATE_LIMIT_PER_ADDRESS")]
    pub rate_limit_per_address: Option<NonZeroU32>,

    /// Requests a client address may make at once above its rate; one second's worth
    /// when unset.
    #[arg(long, env = "LOGPIPELINE_RATE_LIMIT_PER_ADDRESS_BURST")]
    pub rate_limit_per_address_burst: Option<NonZeroU32>,

    /// Proxies (CIDRs, comma-separated) whose `X-Forwarded-For` gives the client
    /// address, and whose connections are not limited per address: the Ingress
    /// controller's pods.
    #[arg(long, env = "LOGPIPELINE_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<IpNet>,

    /// Seconds a client has to send a request's headers, from the connection's start or
    /// the end of its previous request; also how long an idle connection stays open.
    #[arg(long, env = "LOGPIPELINE_HEADER_READ_TIMEOUT_SECS", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub header_read_timeout_secs: u64,

    /// Most connections open at once; more are closed on arrival.
    #[arg(long, env = "LOGPIPELINE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Most connections open at once from one client address (trusted proxies aside);
    /// more are closed on arrival.
    #[arg(
        long,
        env = "LOGPIPELINE_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 1000
    )]
    pub max_connections_per_address: usize,

    /// Address to serve HTTP on: ingest, queries, health, probes and metrics.
    #[arg(long, env = "LOGPIPELINE_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// Address to serve gRPC on (HTTP/2 without TLS): `logpipeline.v1.LogService`, gRPC
    /// health checking and reflection. The seed's gRPC server used port 50051.
    #[arg(long, env = "LOGPIPELINE_GRPC_LISTEN", default_value = "0.0.0.0:50051")]
    pub grpc_listen: SocketAddr,

    /// Seconds an idempotency key is remembered: a request repeated with the same key
    /// within it is not accepted again. Each remembered key takes about 150 bytes of
    /// Redis memory.
    #[arg(long, env = "LOGPIPELINE_IDEMPOTENCY_WINDOW_SECS", default_value_t = 3600,
          value_parser = clap::value_parser!(u64).range(1..=7 * 86_400))]
    pub idempotency_window_secs: u64,

    /// Whether `POST /api/v1/logs/concurrent-test` runs: it makes the api write test
    /// logs to itself (the seed's load test), so it is off unless asked for.
    #[arg(long, env = "LOGPIPELINE_CONCURRENT_TEST", default_value_t = false)]
    pub concurrent_test: bool,

    /// Most logs one concurrent test may write (the seed's MAX_CONCURRENT_REQUESTS).
    #[arg(
        long,
        env = "LOGPIPELINE_CONCURRENT_TEST_MAX_COUNT",
        default_value_t = 10_000
    )]
    pub concurrent_test_max_count: u32,

    /// Most concurrent writers of one concurrent test (the seed's MAX_CONCURRENT_WORKERS).
    #[arg(
        long,
        env = "LOGPIPELINE_CONCURRENT_TEST_MAX_WORKERS",
        default_value_t = 50
    )]
    pub concurrent_test_max_workers: u32,

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

    /// Milliseconds a search (`GET /api/logs`, its histogram) may run in PostgreSQL, all
    /// its statements together; one that needs longer is stopped there at that time and
    /// answered 422 `search_too_broad`.
    #[arg(long, env = "LOGPIPELINE_SEARCH_TIMEOUT_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub search_timeout_ms: u64,

    /// Most searches and histograms this process runs at once, each on a connection of
    /// a PostgreSQL pool of their own of this size (beside the `LOGPIPELINE_DB_MAX_CONNECTIONS`
    /// of device pages and the rest); more are answered 429 `search_busy`.
    #[arg(long, env = "LOGPIPELINE_SEARCH_CONCURRENCY", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub search_concurrency: u32,

    /// Most searches and histograms of one tenant this process runs at once; more are
    /// answered 429 `search_busy`.
    #[arg(long, env = "LOGPIPELINE_SEARCH_CONCURRENCY_PER_TENANT", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub search_concurrency_per_tenant: u32,

    /// Megabytes of chunks' Bloom filters this process keeps in memory, so that a search
    /// tests the chunks it read before without reading their filters again
    /// (docs/storage.md).
    #[arg(long, env = "LOGPIPELINE_CHUNK_INDEX_CACHE_MB", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(0..=65_536))]
    pub chunk_index_cache_mb: u64,

    /// Most live tail subscribers (`GET /api/logs/tail`) of this process at once; more
    /// are answered 429 `tail_full`. Each costs a connection and a queue; a log is
    /// matched only against the subscribers of its tenant that can want it.
    #[arg(long, env = "LOGPIPELINE_TAIL_MAX_SUBSCRIBERS", default_value_t = 1000,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub tail_max_subscribers: usize,

    /// Seconds `GET /api/stats` answers from its cache.
    #[arg(long, env = "LOGPIPELINE_STATS_CACHE_TTL_SECS", default_value_t = 60)]
    pub stats_cache_ttl_secs: u64,

    /// Most entries the stream may hold before the API refuses new logs with 503 and
    /// `Retry-After` (backpressure). An entry is one accepted request, of 1 to 1000 logs;
    /// entries leave the stream once a worker has stored and acknowledged them.
    #[arg(long, env = "LOGPIPELINE_STREAM_CAPACITY", default_value_t = 100_000)]
    pub stream_capacity: u64,

    /// Largest request body accepted, in bytes (after gzip decoding); larger bodies get
    /// 413 before they are read whole. The default holds the largest batch the field
    /// rules allow (1,000 logs of 5,000 characters of 3 bytes, about 15 MB) with room.
    #[arg(long, env = "LOGPIPELINE_MAX_BODY_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Seconds every request body has on top of what the minimum rate allows; a body
    /// slower than that is answered 408 and its connection closed.
    #[arg(long, env = "LOGPIPELINE_BODY_GRACE_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub body_grace_secs: u64,

    /// The average rate, in bytes a second, a request body must keep after its grace.
    #[arg(long, env = "LOGPIPELINE_BODY_MIN_BYTES_PER_SEC", default_value_t = 16 * 1024,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub body_min_bytes_per_sec: u64,

    /// Most times a gzip-encoded body may grow when decoded (a decompression bomb is
    /// refused with 413 once it passes this).
    #[arg(long, env = "LOGPIPELINE_MAX_GZIP_RATIO", default_value_t = 200,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_gzip_ratio: u64,

    /// Bytes of request bodies the api holds at once, beyond each body's first 64 KiB; a
    /// body that finds no room within half a second is answered 503 with Retry-After.
    /// Default: a quarter of the container's memory limit, or 512 MiB without one.
    #[arg(long, env = "LOGPIPELINE_BODY_BYTES_IN_FLIGHT")]
    pub body_bytes_in_flight: Option<usize>,

    /// Seconds to wait for Redis to answer a command before the request fails (with 504
    /// `outcome_unknown` for ingest: the entry may have been added).
    #[arg(long, env = "LOGPIPELINE_REDIS_TIMEOUT_SECS", default_value_t = 5)]
    pub redis_timeout_secs: u64,

    #[command(flatten)]
    pub durability: DurabilityArgs,

    /// Seconds in-flight requests may take to finish after SIGTERM before the process
    /// exits anyway.
    #[arg(long, env = "LOGPIPELINE_SHUTDOWN_TIMEOUT_SECS", default_value_t = 20)]
    pub shutdown_timeout_secs: u64,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// How clients authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// API keys, per tenant.
    Keys,
    /// None: everyone is tenant `default`.
    Off,
}

/// Tools of the api binary.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// What to do with API keys.
#[derive(Debug, Clone, Subcommand)]
pub enum KeysCommand {
    /// Prints a new random key, and its entry for the keys file (which holds only its
    /// SHA-256).
    Generate {
        /// The tenant the key belongs to.
        #[arg(long)]
        tenant: String,
        /// The key's name within the tenant, such as `gateways-2026-12`.
        #[arg(long)]
        name: String,
        /// What the key allows: `write`, `read`; repeat for both.
        #[arg(long = "scope", required = true, value_parser = ["write", "read"])]
        scopes: Vec<String>,
    },
}

//! The worker's settings: flags with environment-variable fallbacks (`--help` lists them).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use logpipeline_core::chunk::DEFAULT_CHUNK_ROWS;
use logpipeline_core::config::{
    CacheArgs, DatabaseArgs, DurabilityArgs, RedisArgs, StreamArgs, TelemetryArgs,
};
use logpipeline_core::partitions::{PartitionInterval, Retention};
use logpipeline_core::storage::PartitionSettings;
use logpipeline_core::stream::{MAX_SHARDS, Shards, shard_key};

use crate::admin::{Admin, Target};
use crate::compact::CompactSettings;
use crate::store::StoreSettings;

/// LogPipeline's stream consumer: stores accepted logs in PostgreSQL exactly once.
#[derive(Debug, Clone, Parser)]
#[command(name = "logpipeline-worker", version)]
pub struct Config {
    #[command(flatten)]
    pub redis: RedisArgs,

    #[command(flatten)]
    pub stream: StreamArgs,

    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub cache: CacheArgs,

    #[command(flatten)]
    pub durability: DurabilityArgs,

    /// Most stream entries one consumer reads and stores per batch. An entry is one
    /// accepted request, of 1 to 1000 logs.
    #[arg(long, env = "LOGPIPELINE_BATCH_SIZE", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_size: u32,

    /// Milliseconds a consumer waits for new entries per read. Also bounds how long a
    /// shutdown waits for a read in progress.
    #[arg(long, env = "LOGPIPELINE_BLOCK_MS", default_value_t = 2000)]
    pub block_ms: u64,

    /// Consumers this process runs concurrently, each reading and storing its own batches.
    /// Two keep one batch committing while the next is read; more add PostgreSQL backends
    /// that compete for the cores, which costs latency (docs/performance.md).
    #[arg(long, env = "LOGPIPELINE_CONCURRENCY", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub concurrency: u32,

    /// Name of this process in the consumer group; consumer `i` is `<name>-<i>`. Must be
    /// unique among running workers (in Kubernetes: the pod name). Defaults to
    /// `<hostname>-<pid>`.
    #[arg(long, env = "LOGPIPELINE_CONSUMER_NAME")]
    pub consumer_name: Option<String>,

    /// Milliseconds an entry may stay unacknowledged on a consumer before another
    /// consumer claims it (its consumer is presumed dead).
    #[arg(long, env = "LOGPIPELINE_CLAIM_IDLE_MS", default_value_t = 30_000)]
    pub claim_idle_ms: u64,

    /// Deliveries after which an entry that still fails goes to the dead-letter stream.
    #[arg(long, env = "LOGPIPELINE_MAX_DELIVERIES", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_deliveries: u32,

    /// The stream failed entries of shard 0 go to. Defaults to `<stream>:dead`; other
    /// shards' go to `<shard>:dead`.
    #[arg(long, env = "LOGPIPELINE_DEAD_LETTER_STREAM")]
    pub dead_letter_stream: Option<String>,

    /// Milliseconds between trims of acknowledged entries from the stream, and updates
    /// of the stream gauges.
    #[arg(
        long,
        env = "LOGPIPELINE_MAINTENANCE_INTERVAL_MS",
        default_value_t = 200
    )]
    pub maintenance_interval_ms: u64,

    /// How long logs are kept, such as `30d` or `12h` (at least `1h`): partitions of
    /// `logs` whose every log was received longer ago are dropped, with their counts, and
    /// logs that old are not stored. Kept forever when unset.
    #[arg(long, env = "LOGPIPELINE_RETENTION")]
    pub retention: Option<Retention>,

    /// Time each partition of `logs` covers, whole hours from `1h` to `31d`. A change
    /// applies to partitions made from then on.
    #[arg(long, env = "LOGPIPELINE_PARTITION_INTERVAL", default_value = "1d")]
    pub partition_interval: PartitionInterval,

    /// Partitions kept ready ahead of the current one.
    #[arg(long, env = "LOGPIPELINE_PARTITIONS_AHEAD", default_value_t = 2,
          value_parser = clap::value_parser!(u32).range(1..=366))]
    pub partitions_ahead: u32,

    /// Whether partitions carry a GIN index on `log_data`, for queries inside it (no
    /// api query needs one). The worker builds or drops it concurrently on every
    /// partition when this changes.
    #[arg(long, env = "LOGPIPELINE_LOG_DATA_INDEX", default_value_t = false,
          action = clap::ArgAction::Set)]
    pub log_data_index: bool,

    /// Whether partitions carry a trigram GIN index on `message` (PostgreSQL's
    /// `pg_trgm`), which makes text searches (`q`) fast and costs every insert. The
    /// worker creates the extension and builds or drops the index concurrently on every
    /// partition when this changes.
    #[arg(long, env = "LOGPIPELINE_MESSAGE_INDEX", default_value_t = false,
          action = clap::ArgAction::Set)]
    pub message_index: bool,

    /// Seconds between upkeep passes of the table: partitions ahead, retention, counter
    /// compaction, the GIN setting. One worker runs a pass at a time.
    #[arg(long, env = "LOGPIPELINE_STORAGE_UPKEEP_SECS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub storage_upkeep_secs: u64,

    /// How long a stored log stays a row before compaction may move it into a chunk
    /// (once its stream entry can never be delivered again): `2m`, `30s`, `1h`
    /// (docs/storage.md).
    #[arg(long, env = "LOGPIPELINE_HOT_WINDOW", default_value = "2m",
          value_parser = humantime::parse_duration)]
    pub hot_window: Duration,

    /// Most logs per chunk, 64 to 65,536: larger chunks compress a little better and
    /// give searches fewer chunks to look at, smaller ones cost a device page less to
    /// open.
    #[arg(long, env = "LOGPIPELINE_CHUNK_ROWS", default_value_t = DEFAULT_CHUNK_ROWS as u32,
          value_parser = clap::value_parser!(u32).range(64..=65_536))]
    pub chunk_rows: u32,

    /// Seconds between compaction passes. One worker compacts at a time.
    #[arg(long, env = "LOGPIPELINE_COMPACT_EVERY_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(2..))]
    pub compact_every_secs: u64,

    /// Address serving `/metrics`, `/livez` and `/readyz`.
    #[arg(
        long,
        env = "LOGPIPELINE_METRICS_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    pub metrics_listen: SocketAddr,

    /// Seconds a shutdown waits for batches in progress to be stored and acknowledged.
    /// Entries still unacknowledged then stay pending and are claimed by another worker.
    #[arg(long, env = "LOGPIPELINE_SHUTDOWN_TIMEOUT_SECS", default_value_t = 20)]
    pub shutdown_timeout_secs: u64,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    /// Without a command the worker runs; `admin` operates on the stream instead.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What to do instead of running.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Operations on the stream: show it, list or replay dead letters, delete a
    /// consumer. They use the settings above (`REDIS_URL`, `LOGPIPELINE_STREAM`, …).
    Admin {
        /// The shard of the stream to work on (0 is the stream itself), up to
        /// `LOGPIPELINE_STREAM_SHARDS` - 1, or beyond it for a shard being drained.
        #[arg(long, default_value_t = 0,
              value_parser = clap::value_parser!(u32).range(0..i64::from(MAX_SHARDS)))]
        shard: u32,
        #[command(subcommand)]
        admin: Admin,
    },
}

impl Config {
    /// The keys `admin` commands work on for shard `shard`.
    pub fn admin_target(&self, shard: u32) -> Target {
        let base = &self.stream.stream;
        let stream = if shard == 0 && self.redis.redis_cluster {
            Shards::on_cluster(base, 1).keys()[0].clone()
        } else {
            shard_key(base, shard)
        };
        Target {
            dead: self.dead_letter_stream(&stream),
            stream,
            group: self.stream.group.clone(),
        }
    }

    /// The dead-letter stream of stream shard `shard_key`: `<shard>:dead`, where a script
    /// can reach both on one Redis Cluster slot; for shard 0, the one set, if any.
    pub fn dead_letter_stream(&self, shard_key: &str) -> String {
        match &self.dead_letter_stream {
            Some(dead) if shard_key == self.stream.stream => dead.clone(),
            _ => format!("{shard_key}:dead"),
        }
    }

    /// This process's name in the consumer group.
    pub fn consumer_name(&self) -> String {
        self.consumer_name.clone().unwrap_or_else(|| {
            let host = std::env::var("HOSTNAME")
                .ok()
                .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
                .map(|name| name.trim().to_owned())
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| "worker".into());
            format!("{host}-{}", std::process::id())
        })
    }

    /// How logs are kept.
    pub fn store_settings(&self) -> StoreSettings {
        StoreSettings {
            partitions: PartitionSettings {
                interval: self.partition_interval,
                ahead: self.partitions_ahead,
                log_data_index: self.log_data_index,
                message_index: self.message_index,
            },
            retention: self.retention,
        }
    }

    /// How compaction cuts chunks.
    pub fn compact_settings(&self) -> CompactSettings {
        CompactSettings {
            hot_window: self.hot_window,
            chunk_rows: self.chunk_rows as usize,
        }
    }

    /// How long an entry may stay unacknowledged before it is claimed.
    pub fn claim_idle(&self) -> Duration {
        Duration::from_millis(self.claim_idle_ms)
    }
}

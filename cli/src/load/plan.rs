//! What a load run does, checked once from the command line: where to send, how many
//! logs, how fast, and which device sends which log.
//!
//! Request `n` (counted from 0 across all connections) is sent as device `n mod devices`
//! and carries that device's sequence numbers `(n div devices) × L … + L − 1`, where `L`
//! is the logs per request. Every log of a run therefore has a distinct `(device, seq)`,
//! and [`request_of`] maps a stored log back to the request that carried it.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use hyper::Uri;
use logpipeline_core::stream::{MAX_SHARDS, Shards};

/// How to load a LogPipeline api (the load generator's command-line options).
#[derive(Debug, Clone, clap::Args)]
pub struct LoadOptions {
    /// Base URL of the api (plain HTTP), e.g. `http://127.0.0.1:8080`; with
    /// `--protocol grpc`, its gRPC endpoint, e.g. `http://127.0.0.1:50051`.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// `http`: JSON to `/api/log` and `/api/logs/batch` over HTTP/1.1. `grpc`:
    /// `BatchWriteLogs` over HTTP/2, one connection per `--connections`. `otlp`:
    /// OTLP/HTTP protobuf exports to `/v1/logs` over HTTP/1.1.
    #[arg(long, value_enum, default_value = "http")]
    pub protocol: Protocol,

    /// Simulated devices: request n is sent as device n mod devices.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub devices: u32,

    /// Concurrent HTTP/1.1 connections, each with one request in flight at a time.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub connections: u32,

    /// Logs per request: 1 posts each log to `/api/log`, more post `/api/logs/batch`.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub logs_per_request: u32,

    /// How long to send, in seconds (unless --total-logs is given).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration_secs: u64,

    /// Seconds at the start whose requests are sent and checked but whose latencies are
    /// left out (connections opening, caches filling): the percentiles describe the
    /// steady state. Part of --duration-secs.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=3600))]
    pub warmup_secs: u64,

    /// Send this many logs in all (rounded up to whole requests) instead of sending for
    /// --duration-secs.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub total_logs: Option<u64>,

    /// Open loop: send at this constant rate, in logs per second, whatever the answers;
    /// latency is measured from each request's intended send time, so a slow server is
    /// not hidden by requests the generator failed to send (coordinated omission).
    /// Without it, closed loop: each connection sends its next request as soon as the
    /// previous one is answered (maximum throughput).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,

    /// Marks every log as `log_data.run` (letters, digits, `-`, `_`, `.`; at most 40);
    /// default `load-<unix time>`.
    #[arg(long, value_parser = parse_run_id)]
    pub run: Option<String>,

    /// Length of each log's `message`, in bytes (1–5000).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub message_bytes: u32,

    /// A request not answered within this many milliseconds fails, and its connection
    /// is replaced.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub timeout_ms: u64,

    /// End-to-end mode: PostgreSQL URL of the pipeline's database, to watch persisted
    /// logs and verify every accepted log is stored exactly once (needs --redis-url).
    #[arg(long, requires = "redis_url")]
    pub database_url: Option<String>,

    /// End-to-end mode: Redis URL of the pipeline's stream, to watch the consumer
    /// group's backlog (needs --database-url).
    #[arg(long, requires = "database_url")]
    pub redis_url: Option<String>,

    /// End-to-end mode: the stream's key.
    #[arg(long, default_value = "logs:stream")]
    pub stream: String,

    /// End-to-end mode: the streams the logs are spread over (the pipeline's
    /// `LOGPIPELINE_STREAM_SHARDS`); the backlog is their sum. In open loop the
    /// connections are then split by shard, each sending only its shard's devices' logs,
    /// and latency is reported per shard too.
    #[arg(long, default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SHARDS)))]
    pub stream_shards: u32,

    /// End-to-end mode: `--redis-url` names one or more nodes of a Redis Cluster,
    /// comma-separated.
    #[arg(long)]
    pub redis_cluster: bool,

    /// End-to-end mode: the workers' consumer group.
    #[arg(long, default_value = "log_workers")]
    pub group: String,

    /// End-to-end mode: how long to wait after the load for the backlog to drain before
    /// verifying, in seconds.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub drain_timeout_secs: u64,

    /// Print no progress lines.
    #[arg(long)]
    pub quiet: bool,

    /// API key sent as `Authorization: Bearer <key>` (an api with authentication on).
    #[arg(long, env = "LOGPIPELINE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// Behave as a careful client: every request carries an `Idempotency-Key`, and one
    /// whose logs may or may not be stored (503, 504, another 5xx, a timeout, a broken
    /// connection) is sent again with the same key, after its `Retry-After` or a short
    /// backoff, until it is accepted or refused (4xx) or --retry-for-secs pass. Its
    /// latency runs from its intended send time to the last answer.
    #[arg(long)]
    pub retry: bool,

    /// With --retry: how long after its intended send time a request is still retried.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub retry_for_secs: u64,

    /// Report latencies and answers per phase of this many seconds (by each request's
    /// intended send time), as `logpipeline bench soak` does around its faults; with
    /// several --stream-shards, also by the shard each device's logs go to.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub phase_secs: Option<u64>,

    /// The tenant the logs go to (the API key's; `default` without keys), which with
    /// the device decides their shard.
    #[arg(long, default_value = "default")]
    pub tenant: String,
}

/// Where requests go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// How requests travel.
    pub protocol: Protocol,
    /// `host:port`, to connect to and to send as `Host`.
    pub authority: String,
    /// The path of the endpoint, with any base path of the URL.
    pub path: String,
    /// The `Authorization` header, when there is an API key.
    pub authorization: Option<String>,
}

/// When the run stops sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// After this long.
    After(Duration),
    /// After this many requests.
    Requests(u64),
}

/// How requests travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Protocol {
    /// LogPipeline's JSON endpoints over HTTP/1.1.
    #[default]
    Http,
    /// System B's `BatchWriteLogs` over gRPC.
    Grpc,
    /// OTLP/HTTP protobuf exports.
    Otlp,
}

impl Protocol {
    /// Its name on the command line.
    pub fn slug(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Grpc => "grpc",
            Self::Otlp => "otlp",
        }
    }
}

/// A checked [`LoadOptions`].
#[derive(Debug, Clone)]
pub struct Plan {
    /// Where requests go.
    pub target: Target,
    /// Simulated devices.
    pub devices: u64,
    /// Concurrent connections.
    pub connections: u32,
    /// Logs per request.
    pub logs_per_request: u64,
    /// When to stop sending.
    pub stop: Stop,
    /// Requests per second in open loop; `None` in closed loop.
    pub requests_per_sec: Option<f64>,
    /// The run id in every log.
    pub run: String,
    /// Length of each message.
    pub message_bytes: usize,
    /// How long a request may take.
    pub timeout: Duration,
    /// How long after the start latencies begin to count.
    pub warmup: Duration,
    /// With retries: how long after its intended send time a request is still retried.
    pub retry_for: Option<Duration>,
    /// The length of each phase latencies and answers are reported by.
    pub phase: Option<Duration>,
    /// The shard of each device's logs, when there are several.
    pub device_shards: Vec<usize>,
}

impl Plan {
    /// Checks `options`.
    pub fn new(options: &LoadOptions) -> Result<Self> {
        let logs_per_request = u64::from(options.logs_per_request);
        let run = match &options.run {
            Some(run) => parse_run_id(run).map_err(anyhow::Error::msg)?,
            None => format!(
                "load-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .context("the clock is before 1970")?
                    .as_secs()
            ),
        };
        let stop = match options.total_logs {
            Some(logs) => Stop::Requests(logs.div_ceil(logs_per_request)),
            None => Stop::After(Duration::from_secs(options.duration_secs)),
        };
        Ok(Self {
            target: Target {
                authorization: options.api_key.as_ref().map(|key| format!("Bearer {key}")),
                ..target(&options.url, logs_per_request, options.protocol)?
            },
            devices: u64::from(options.devices),
            connections: options.connections,
            logs_per_request,
            stop,
            requests_per_sec: options
                .rate
                .map(|rate| rate as f64 / logs_per_request as f64),
            run,
            message_bytes: options.message_bytes as usize,
            timeout: Duration::from_millis(options.timeout_ms),
            warmup: Duration::from_secs(options.warmup_secs),
            retry_for: options
                .retry
                .then(|| Duration::from_secs(options.retry_for_secs)),
            phase: options.phase_secs.map(Duration::from_secs),
            device_shards: if options.stream_shards > 1 {
                let shards = if options.redis_cluster {
                    Shards::on_cluster(&options.stream, options.stream_shards)
                } else {
                    Shards::new(&options.stream, options.stream_shards)
                };
                (0..options.devices)
                    .map(|device| shards.of(&options.tenant, &device_id(u64::from(device))))
                    .collect()
            } else {
                Vec::new()
            },
        })
    }

    /// Shards the plan tells apart (0 when it does not).
    pub fn shards(&self) -> usize {
        self.device_shards.iter().max().map_or(0, |&last| last + 1)
    }

    /// The device that sends request `n`, and the sequence number of its first log.
    pub fn logs_of(&self, n: u64) -> (u64, u64) {
        (n % self.devices, n / self.devices * self.logs_per_request)
    }
}

/// The request that carried log `seq` of `device`, and the log's index in it, in a run
/// of `devices` devices and `logs_per_request` logs per request (see [`Plan::logs_of`]).
pub fn request_of(device: u64, seq: u64, devices: u64, logs_per_request: u64) -> (u64, u64) {
    let round = seq / logs_per_request;
    (round * devices + device, seq % logs_per_request)
}

fn target(url: &str, logs_per_request: u64, protocol: Protocol) -> Result<Target> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("{url:?} is not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => bail!("{url:?}: only http:// is supported, not {other}://"),
        None => bail!("{url:?} has no scheme; write http://{url}"),
    }
    let host = uri.host().with_context(|| format!("{url:?} has no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let base = uri.path().trim_end_matches('/');
    let endpoint = match protocol {
        Protocol::Otlp => "/v1/logs",
        _ if logs_per_request == 1 => "/api/log",
        _ => "/api/logs/batch",
    };
    Ok(Target {
        authority: format!("{host}:{port}"),
        path: format!("{base}{endpoint}"),
        authorization: None,
        protocol,
    })
}

/// A run id goes into JSON bodies unescaped, so it is kept to safe characters.
fn parse_run_id(run: &str) -> Result<String, String> {
    let safe = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if run.is_empty() || run.len() > 40 || !run.chars().all(safe) {
        return Err(format!(
            "run id {run:?} must be 1 to 40 letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(run.to_owned())
}

/// The `device_id` of simulated device `device`.
pub fn device_id(device: u64) -> String {
    format!("device-{device:03}")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        load: LoadOptions,
    }

    /// The plan of `logpipeline load` with `args`.
    pub(crate) fn plan(args: &[&str]) -> Result<Plan> {
        let cli = Cli::try_parse_from(std::iter::once("load").chain(args.iter().copied()))?;
        Plan::new(&cli.load)
    }

    #[test]
    fn batches_go_to_the_batch_endpoint_and_single_logs_to_the_log_endpoint() {
        let batch = plan(&["--url", "http://127.0.0.1:8080/"]).unwrap();
        assert_eq!(batch.target.authority, "127.0.0.1:8080");
        assert_eq!(batch.target.path, "/api/logs/batch");
        let single = plan(&["--url", "http://localhost/base", "--logs-per-request", "1"]).unwrap();
        assert_eq!(single.target.authority, "localhost:80");
        assert_eq!(single.target.path, "/base/api/log");
        assert!(plan(&["--url", "https://127.0.0.1"]).is_err());
        assert!(plan(&["--url", "127.0.0.1:8080"]).is_err());
    }

    #[test]
    fn total_logs_round_up_to_whole_requests_and_rate_is_per_request() {
        let plan = plan(&["--total-logs", "11", "--rate", "1000"]).unwrap();
        assert_eq!(plan.stop, Stop::Requests(3));
        assert_eq!(plan.requests_per_sec, Some(200.0));
    }

    #[test]
    fn run_ids_are_limited_to_characters_json_needs_no_escape_for() {
        assert!(plan(&["--run", "bench-1.a_b"]).is_ok());
        assert!(plan(&["--run", "a\"b"]).is_err());
        assert!(plan(&["--run", ""]).is_err());
        assert!(plan(&[]).unwrap().run.starts_with("load-"));
    }

    #[test]
    fn every_log_maps_back_to_its_request() {
        let plan = plan(&["--devices", "3", "--logs-per-request", "5"]).unwrap();
        for n in 0..20 {
            let (device, first) = plan.logs_of(n);
            for index in 0..5 {
                assert_eq!(request_of(device, first + index, 3, 5), (n, index));
            }
        }
    }
}

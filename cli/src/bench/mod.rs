//! `logpipeline bench`: starts a local stack, runs the benchmark profiles against it in
//! end-to-end mode, and prints each run, where its CPU went, and a summary table beside
//! the seed system's published figures.
//!
//! Profiles: `seed` (the seed's stress test: 100 devices, 200 connections, 5 logs per
//! request, closed loop), `single` (the same with one log per request) and `sustained`
//! (open loop at a constant rate: does persistence keep up?).

mod probe;
pub mod query;
pub mod shelf;
pub mod soak;
mod stack;
pub mod store;
mod table;
mod tail;

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::load::{LoadOptions, Protocol, Report};
use logpipeline_core::stream::MAX_SHARDS;
use logpipeline_local::auth::{ApiKey, keys_file};
use logpipeline_local::services::Env;
use probe::{Diagnosis, Probe};
use stack::{BenchStack, StackSettings};
use table::Row;

/// The benchmark's command-line options.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchOptions {
    /// Profiles to run, in order (comma-separated).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "seed,single,sustained"
    )]
    pub profiles: Vec<Profile>,

    /// Runs of the seed and single profiles; the table shows the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,

    /// Seconds each seed and single run sends.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub duration_secs: u64,

    /// Open-loop rate of the sustained profile, in logs/s.
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub sustained_rate: u64,

    /// Seconds the sustained profile sends.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub sustained_secs: u64,

    /// Seconds of the sustained profile's warm-up before its measured seconds: its
    /// requests are sent and checked, their latencies left out.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub warmup_secs: u64,

    /// Runs of the sustained profile.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub sustained_runs: u32,

    /// Length of each log's message, in bytes.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub message_bytes: u32,

    /// Worker processes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub workers: u32,

    /// Consumers in each worker process (`LOGPIPELINE_CONCURRENCY`), as the worker's default.
    #[arg(long, default_value_t = 2)]
    pub worker_concurrency: u32,

    /// Most stream entries a consumer reads and stores per batch (`LOGPIPELINE_BATCH_SIZE`).
    #[arg(long, default_value_t = 100)]
    pub worker_batch_size: u32,

    /// The api's stream capacity in entries (`LOGPIPELINE_STREAM_CAPACITY`): large
    /// enough to hold a whole run, so the api does not refuse while workers catch up.
    #[arg(long, default_value_t = 10_000_000)]
    pub stream_capacity: u64,

    /// Redis `appendfsync` (`everysec`, `always` or `no`).
    #[arg(long, default_value = "everysec", value_parser = ["everysec", "always", "no"])]
    pub appendfsync: String,

    /// Give Redis a replica (its CPU is counted as `replica`); with
    /// `--api-env LOGPIPELINE_REDIS_DURABILITY=replicated` the api answers once it holds
    /// each entry.
    #[arg(long)]
    pub redis_replica: bool,

    /// When the api answers 200 and the workers may store (`LOGPIPELINE_REDIS_DURABILITY`
    /// of both): `primary`, or `replicated` (needs `--redis-replica`).
    #[arg(long, default_value = "primary", value_parser = ["primary", "replicated"])]
    pub redis_durability: String,

    /// Run on a Redis Cluster of 3 masters on this machine (each with a replica with
    /// `--redis-replica`) instead of one Redis; the CPU of each master is printed.
    #[arg(long)]
    pub redis_cluster: bool,

    /// Streams the logs are spread over (`LOGPIPELINE_STREAM_SHARDS` of the api and the
    /// workers).
    #[arg(long, default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SHARDS)))]
    pub stream_shards: u32,

    /// Give PostgreSQL a streaming standby (its CPU is counted as `standby`): `async`, or
    /// `sync` (`synchronous_standby_names = *`: each commit waits until the standby
    /// has flushed it). The api and workers get both in one multi-host URL.
    #[arg(long, value_enum, default_value = "off")]
    pub postgres_standby: PostgresStandby,

    /// How clients authenticate: `off`, or `keys` (each request carries an API key the api
    /// checks). `off,keys` alternates the two run by run on the same stack, to compare
    /// them side by side.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "off")]
    pub auth: Vec<AuthMode>,

    /// How the load generator sends: `http` (JSON), `grpc` (`BatchWriteLogs`), or
    /// `http,grpc` to alternate the two run by run, to compare them side by side.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "http")]
    pub protocols: Vec<Protocol>,

    /// More api settings, `NAME=VALUE` (repeatable).
    #[arg(long, value_parser = parse_setting)]
    pub api_env: Vec<(String, String)>,

    /// More worker settings, `NAME=VALUE` (repeatable).
    #[arg(long, value_parser = parse_setting)]
    pub worker_env: Vec<(String, String)>,

    /// Threads of the load generator's runtime.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub load_threads: u32,

    /// Seconds to wait after each run for the workers to store everything.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub drain_timeout_secs: u64,

    /// Live tail subscribers connected during each run (`GET /api/logs/tail`); the run
    /// prints how long logs took from acceptance to them.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100_000))]
    pub tail_subscribers: u32,

    /// What each tail subscriber asks for.
    #[arg(long, value_enum, default_value = "device")]
    pub tail_filter: tail::TailFilter,

    /// Write each run's report and diagnosis as JSON into this directory.
    #[arg(long)]
    pub json_dir: Option<PathBuf>,

    /// Print no progress lines during the runs.
    #[arg(long)]
    pub quiet: bool,
}

/// A benchmark profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// The seed's stress test: 100 devices, 200 connections, 5 logs per request, as
    /// fast as answered.
    Seed,
    /// The same, one log per request (`POST /api/log`).
    Single,
    /// 5 logs per request at a constant rate (open loop).
    Sustained,
}

/// Whether PostgreSQL has a standby, and whether commits wait for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PostgresStandby {
    /// No standby.
    Off,
    /// A streaming standby that commits do not wait for.
    Async,
    /// A synchronous standby: a commit returns once the standby has flushed it.
    Sync,
}

/// How the api authenticates clients during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AuthMode {
    /// No keys (`LOGPIPELINE_AUTH=off`).
    Off,
    /// Every request carries an API key with write scope (`LOGPIPELINE_AUTH=keys`).
    Keys,
}

impl AuthMode {
    fn slug(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Keys => "keys",
        }
    }
}

/// The bench's API key and the keys file that lists it.
struct BenchKeys {
    key: ApiKey,
    file: tempfile::NamedTempFile,
}

impl BenchKeys {
    fn new() -> Result<Self> {
        let key = ApiKey::new("bench", "load", &["write", "read"]);
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), keys_file(&[&key]))?;
        Ok(Self { key, file })
    }

    /// The api's settings for `mode`.
    fn api_env(&self, mode: AuthMode) -> Env {
        let mut env = Env::from([("LOGPIPELINE_AUTH".into(), mode.slug().into())]);
        if mode == AuthMode::Keys {
            env.insert(
                "LOGPIPELINE_API_KEYS_FILE".into(),
                self.file.path().display().to_string(),
            );
        }
        env
    }

    /// The key clients send in `mode`.
    fn client_key(&self, mode: AuthMode) -> Option<String> {
        (mode == AuthMode::Keys).then(|| self.key.secret.clone())
    }
}

impl Profile {
    fn name(self) -> &'static str {
        match self {
            Self::Seed => "seed (100 devices, 200 conns, 5 logs/req)",
            Self::Single => "single (100 devices, 200 conns, 1 log/req)",
            Self::Sustained => "sustained (open loop, 5 logs/req)",
        }
    }

    fn slug(self) -> &'static str {
        match self {
            Self::Seed => "seed",
            Self::Single => "single",
            Self::Sustained => "sustained",
        }
    }

    fn runs(self, bench: &BenchOptions) -> u32 {
        match self {
            Self::Seed | Self::Single => bench.runs,
            Self::Sustained => bench.sustained_runs,
        }
    }

    /// The load generator's options for run `index` of this profile on `stack`, sending
    /// `api_key`.
    fn load(
        self,
        bench: &BenchOptions,
        stack: &BenchStack,
        index: u32,
        api_key: Option<String>,
        protocol: Protocol,
    ) -> LoadOptions {
        let (logs_per_request, duration_secs, rate, warmup_secs) = match self {
            Self::Seed => (5, bench.duration_secs, None, 0),
            Self::Single => (1, bench.duration_secs, None, 0),
            Self::Sustained => (
                5,
                bench.sustained_secs + bench.warmup_secs,
                Some(bench.sustained_rate),
                bench.warmup_secs,
            ),
        };
        LoadOptions {
            url: match protocol {
                Protocol::Http | Protocol::Otlp => stack.api.url(),
                Protocol::Grpc => stack.api.grpc_url(),
            },
            protocol,
            devices: 100,
            connections: 200,
            logs_per_request,
            duration_secs,
            warmup_secs,
            total_logs: None,
            rate,
            run: Some(format!(
                "bench-{}-{}-{index}",
                self.slug(),
                std::process::id()
            )),
            message_bytes: bench.message_bytes,
            timeout_ms: 10_000,
            database_url: Some(stack.database_url.clone()),
            redis_url: Some(stack.redis.url()),
            stream: "logs:stream".into(),
            stream_shards: bench.stream_shards,
            redis_cluster: stack.redis.is_cluster(),
            group: "log_workers".into(),
            drain_timeout_secs: bench.drain_timeout_secs,
            quiet: bench.quiet,
            api_key,
            retry: false,
            retry_for_secs: 120,
            phase_secs: None,
            tenant: "default".into(),
        }
    }
}

/// One run as written to `--json-dir`.
#[derive(Serialize)]
struct BenchRun<'a> {
    profile: &'static str,
    auth: &'static str,
    protocol: &'static str,
    load_average: String,
    settings: &'a StackSettings,
    report: &'a Report,
    diagnosis: &'a Diagnosis,
    #[serde(skip_serializing_if = "Option::is_none")]
    tail: Option<&'a tail::TailFigures>,
}

/// `durability` as `LOGPIPELINE_REDIS_DURABILITY`, then `settings`, which may override it.
fn with_durability(settings: &[(String, String)], durability: &str) -> Env {
    let mut env = Env::from([(
        "LOGPIPELINE_REDIS_DURABILITY".to_owned(),
        durability.to_owned(),
    )]);
    env.extend(settings.iter().cloned());
    env
}

/// Starts the stack, runs the profiles, prints the table; everything stops on return.
pub fn run(options: &BenchOptions) -> Result<()> {
    let settings = StackSettings {
        workers: options.workers,
        worker_concurrency: options.worker_concurrency,
        worker_batch_size: options.worker_batch_size,
        stream_capacity: options.stream_capacity,
        appendfsync: options.appendfsync.clone(),
        redis_replica: options.redis_replica,
        redis_cluster_masters: if options.redis_cluster { 3 } else { 0 },
        stream_shards: options.stream_shards,
        postgres_standby: options.postgres_standby,
        api_env: with_durability(&options.api_env, &options.redis_durability),
        worker_env: with_durability(&options.worker_env, &options.redis_durability),
    };
    logpipeline_local::packages::ensure_installed(true)?;
    println!(
        "starting Redis, PostgreSQL, {} worker(s) and the api…",
        settings.workers
    );
    let mut stack = BenchStack::start(&settings)?;
    if let Some(dir) = &options.json_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.load_threads as usize)
        .enable_all()
        .build()?;
    let rows = runtime.block_on(run_profiles(options, &settings, &mut stack))?;
    println!("\n{}", table::render(&rows));
    Ok(())
}

async fn run_profiles(
    options: &BenchOptions,
    settings: &StackSettings,
    stack: &mut BenchStack,
) -> Result<Vec<Row>> {
    let keys = BenchKeys::new()?;
    let modes = &options.auth;
    let protocols = &options.protocols;
    let variants: Vec<(AuthMode, Protocol)> = modes
        .iter()
        .flat_map(|&mode| protocols.iter().map(move |&protocol| (mode, protocol)))
        .collect();
    let mut running = None;
    let mut rows = Vec::new();
    for &profile in &options.profiles {
        let runs = profile.runs(options);
        let mut reports: Vec<Vec<(Report, Diagnosis)>> = vec![Vec::new(); variants.len()];
        for index in 1..=runs {
            for (variant, &(mode, protocol)) in variants.iter().enumerate() {
                if running != Some(mode) {
                    stack.restart_api(settings, &keys.api_env(mode))?;
                    running = Some(mode);
                }
                stack.truncate()?;
                let load_average = load_average();
                println!(
                    "\n== {} — auth {} — {} — run {index} of {runs} (load average before: {load_average})",
                    profile.name(),
                    mode.slug(),
                    protocol.slug(),
                );
                let load = profile.load(options, stack, index, keys.client_key(mode), protocol);
                let probe = Probe::start(stack).await?;
                let tail = if options.tail_subscribers > 0 {
                    let key = keys.client_key(mode);
                    Some(
                        tail::TailWatch::start(
                            &stack.api.url(),
                            key.as_deref(),
                            options.tail_subscribers,
                            options.tail_filter,
                        )
                        .await?,
                    )
                } else {
                    None
                };
                let report = crate::load::run(&load).await?;
                let tail = match tail {
                    Some(tail) => Some(tail.finish().await?),
                    None => None,
                };
                let logs = report
                    .end_to_end
                    .as_ref()
                    .map_or(report.accepted_logs, |e2e| e2e.persisted_logs);
                let diagnosis = probe.finish(stack, logs).await?;
                print!("{}{}", report.render(), diagnosis.render());
                if let Some(tail) = &tail {
                    print!("{}", tail.render());
                }
                if let Some(dir) = &options.json_dir {
                    let path = dir.join(format!(
                        "{}-auth-{}-{}-{index}.json",
                        profile.slug(),
                        mode.slug(),
                        protocol.slug(),
                    ));
                    let run = BenchRun {
                        profile: profile.slug(),
                        auth: mode.slug(),
                        protocol: protocol.slug(),
                        load_average,
                        settings,
                        report: &report,
                        diagnosis: &diagnosis,
                        tail: tail.as_ref(),
                    };
                    std::fs::write(&path, serde_json::to_vec_pretty(&run)?)
                        .with_context(|| format!("writing {}", path.display()))?;
                }
                reports[variant].push((report, diagnosis));
            }
        }
        for (&(mode, protocol), reports) in variants.iter().zip(&reports) {
            let mut name = profile.name().to_owned();
            if modes.len() > 1 || mode != AuthMode::Off {
                name.push_str(&format!(" · auth {}", mode.slug()));
            }
            if protocols.len() > 1 || protocol != Protocol::Http {
                name.push_str(&format!(" · {}", protocol.slug()));
            }
            rows.push(Row::of(&name, reports));
        }
    }
    Ok(rows)
}

/// `/proc/loadavg`'s 1, 5 and 15 minute averages: other work on the machine (a build)
/// makes figures noisy.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| "unknown".into())
}

fn parse_setting(setting: &str) -> Result<(String, String), String> {
    setting
        .split_once('=')
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .ok_or_else(|| format!("{setting:?} is not NAME=VALUE"))
}

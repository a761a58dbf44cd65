//! `logpipeline dev`: a whole LogPipeline on this machine. Redis and PostgreSQL run as
//! child processes in a temporary directory; the api and a worker run in this process
//! (the same code as their binaries), so the one build of this command is all it takes.
//! Ctrl-C stops everything.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use logpipeline_local::packages;
use logpipeline_local::postgres::{PostgresOptions, PostgresServer};
use logpipeline_local::process::{free_port, scratch_dir, wait_until};
use logpipeline_local::redis::{RedisOptions, RedisServer};
use logpipeline_local::services::http_status;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Runs Redis, PostgreSQL, the LogPipeline api and a worker on this machine until Ctrl-C.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Port the api serves on (127.0.0.1).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,

    /// Port the api serves gRPC on (127.0.0.1), as system B's server did.
    #[arg(long, default_value_t = 50051)]
    pub grpc_port: u16,

    /// Concurrent consumers in the worker.
    #[arg(long, default_value_t = 2)]
    pub concurrency: u32,

    /// Most entries the stream holds before the api answers 503.
    #[arg(long, default_value_t = 100_000)]
    pub stream_capacity: u64,

    /// Do not install missing Redis or PostgreSQL packages with apt-get; fail instead.
    #[arg(long)]
    pub no_install: bool,
}

pub fn run(args: DevArgs) -> Result<()> {
    packages::ensure_installed(!args.no_install)?;
    println!("starting Redis (append-only file) and PostgreSQL in temporary directories…");
    let redis = RedisServer::start_with(RedisOptions {
        append_only: true,
        extra_args: vec!["--maxmemory-policy".into(), "noeviction".into()],
    })?;
    let postgres = PostgresServer::start_with(PostgresOptions {
        durable: true,
        settings: Vec::new(),
    })?;
    postgres.psql("postgres", "create database logs")?;
    let database_url = postgres.url("logs");
    let dir = scratch_dir("logpipeline-dev-")?;
    let log = dir.path().join("logpipeline.log");
    let (writer, _flush) = tracing_appender::non_blocking(
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?,
    );
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(writer)
        .with_ansi(false)
        .try_init()
        .ok();
    let metrics_port = free_port()?;
    let url = format!("http://127.0.0.1:{}", args.port);
    let api = logpipeline_api::config::Config::try_parse_from([
        "logpipeline-api".to_owned(),
        format!("--redis-url={}", redis.url()),
        format!("--database-url={database_url}"),
        format!("--listen=127.0.0.1:{}", args.port),
        format!("--grpc-listen=127.0.0.1:{}", args.grpc_port),
        // A local stack: anyone on this machine reads and writes, as tenant `default`.
        "--auth=off".to_owned(),
        format!("--stream-capacity={}", args.stream_capacity),
    ])?;
    let worker = logpipeline_worker::config::Config::try_parse_from([
        "logpipeline-worker".to_owned(),
        format!("--redis-url={}", redis.url()),
        format!("--database-url={database_url}"),
        format!("--concurrency={}", args.concurrency),
        format!("--metrics-listen=127.0.0.1:{metrics_port}"),
    ])?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let shutdown = CancellationToken::new();
    let api = runtime.spawn(logpipeline_api::run_until(api, shutdown.clone()));
    let worker = runtime.spawn(logpipeline_worker::run_until(worker, shutdown.clone()));
    wait_until("the api serves", Duration::from_secs(60), || {
        anyhow::ensure!(!api.is_finished(), "the api stopped; see {}", log.display());
        Ok(http_status(args.port, "/livez").is_ok_and(|status| status == 200))
    })?;
    println!(
        "\nLogPipeline is running.\
         \n\n  explorer   {url}/ui     (search, graph and follow logs in the browser)\
         \n\n  api        {url}         (docs: {url}/docs)\
         \n  gRPC       http://127.0.0.1:{grpc}\
         \n  metrics    {url}/metrics (api), http://127.0.0.1:{metrics_port}/metrics (worker)\
         \n  redis      {redis}\
         \n  postgres   {database_url}\
         \n  logs       {log}\
         \n\nSend a log:\
         \n  curl -s -X POST {url}/api/log -H 'Content-Type: application/json' \\\
         \n       -d '{{\"device_id\": \"device-001\", \"log_level\": \"INFO\", \"message\": \"hello\", \"log_data\": {{\"v\": 1}}}}'\
         \n\nFind it:\
         \n  curl -s '{url}/api/logs?q=hello'\
         \n\nPress Ctrl-C to stop everything.",
        grpc = args.grpc_port,
        redis = redis.url(),
        log = log.display(),
    );
    runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result?,
            _ = terminate.recv() => {}
        }
        println!("\nstopping…");
        shutdown.cancel();
        let (api, worker) = tokio::join!(api, worker);
        api??;
        worker??;
        Ok::<_, anyhow::Error>(())
    })?;
    drop(postgres);
    drop(redis);
    Ok(())
}

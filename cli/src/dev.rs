//! `logpipeline dev`: a whole LogPipeline on this machine. Redis and PostgreSQL run as
//! child processes in a temporary directory, then the api and a worker. Ctrl-C stops
//! everything.

use anyhow::Result;
use logpipeline_local::packages;
use logpipeline_local::postgres::{PostgresOptions, PostgresServer};
use logpipeline_local::redis::{RedisOptions, RedisServer};
use logpipeline_local::services::{ApiProcess, Env, WorkerProcess};

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
    println!("building and starting the api and a worker…");
    let worker = WorkerProcess::start(
        &redis.url(),
        &database_url,
        &Env::from([(
            "LOGPIPELINE_CONCURRENCY".into(),
            args.concurrency.to_string(),
        )]),
    )?;
    let api = ApiProcess::start_on(
        args.port,
        &redis.url(),
        &database_url,
        &Env::from([
            (
                "LOGPIPELINE_STREAM_CAPACITY".into(),
                args.stream_capacity.to_string(),
            ),
            (
                "LOGPIPELINE_GRPC_LISTEN".into(),
                format!("127.0.0.1:{}", args.grpc_port),
            ),
        ]),
    )?;
    let url = api.url();
    println!(
        "\nLogPipeline is running.\n\
         \n  api        {url}\
         \n  gRPC       {}\
         \n  metrics    {url}/metrics (api), {}/metrics (worker)\
         \n  redis      {}\
         \n  postgres   {database_url}\
         \n  logs       {} and {}\
         \n\nSend a log:\
         \n  curl -s -X POST {url}/api/log -H 'Content-Type: application/json' \\\
         \n       -d '{{\"device_id\": \"device-001\", \"log_level\": \"INFO\", \"message\": \"hello\", \"log_data\": {{\"v\": 1}}}}'\
         \n\nSee it stored:\
         \n  psql {database_url} -c 'select id, device_id, log_level, message, created_at from logs order by id desc limit 5'\
         \n\nPress Ctrl-C to stop everything.",
        api.grpc_url(),
        worker.metrics_url(),
        redis.url(),
        api_log(&api),
        worker_log(&worker),
    );
    wait_for_ctrl_c()?;
    println!("\nstopping…");
    drop(api);
    drop(worker);
    drop(postgres);
    drop(redis);
    Ok(())
}

fn api_log(api: &ApiProcess) -> String {
    api.log_path().display().to_string()
}

fn worker_log(worker: &WorkerProcess) -> String {
    worker.log_path().display().to_string()
}

fn wait_for_ctrl_c() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = terminate.recv() => Ok(()),
        }
    })?;
    Ok(())
}

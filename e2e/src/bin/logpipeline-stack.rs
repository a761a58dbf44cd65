//! Runs a whole LogPipeline on this machine: Redis and PostgreSQL as child processes in
//! a temporary directory, then the api and a worker. Ctrl-C stops everything.
//!
//! `cargo run --release -p logpipeline-e2e --bin logpipeline-stack`

use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use clap::Parser;
use logpipeline_e2e::postgres::{PostgresOptions, PostgresServer, postgres_bindir};
use logpipeline_e2e::process::find_on_path;
use logpipeline_e2e::redis::{RedisOptions, RedisServer};
use logpipeline_e2e::services::{ApiProcess, Env, WorkerProcess};

/// Runs Redis, PostgreSQL, the LogPipeline api and a worker on this machine until Ctrl-C.
#[derive(Debug, Parser)]
#[command(name = "logpipeline-stack")]
struct Args {
    /// Port the api serves on (127.0.0.1).
    #[arg(long, default_value_t = 8080)]
    port: u16,

    /// Port the api serves gRPC on (127.0.0.1), as system B's server did.
    #[arg(long, default_value_t = 50051)]
    grpc_port: u16,

    /// Concurrent consumers in the worker.
    #[arg(long, default_value_t = 4)]
    concurrency: u32,

    /// Most entries the stream holds before the api answers 503.
    #[arg(long, default_value_t = 100_000)]
    stream_capacity: u64,

    /// Do not install missing Redis or PostgreSQL packages with apt-get; fail instead.
    #[arg(long)]
    no_install: bool,
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("logpipeline-stack: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    ensure_installed(!args.no_install)?;
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

/// Installs `redis-server` and PostgreSQL from the distribution's packages when missing.
fn ensure_installed(install: bool) -> Result<()> {
    let mut missing = Vec::new();
    if find_on_path("redis-server").is_none() {
        missing.push("redis-server");
    }
    if postgres_bindir().is_err() {
        missing.push("postgresql");
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !install || find_on_path("apt-get").is_none() {
        bail!(
            "missing packages: {}; install them and run again",
            missing.join(" ")
        );
    }
    println!("installing {} with apt-get…", missing.join(" "));
    let sudo = !nix::unistd::Uid::effective().is_root();
    let apt = |apt_args: &[&str]| -> Result<()> {
        let mut command = if sudo {
            Command::new("sudo")
        } else {
            Command::new("apt-get")
        };
        if sudo {
            command.arg("apt-get");
        }
        let status = command
            .args(apt_args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", apt_args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut install_args = vec!["install", "-y", "-qq"];
    install_args.extend(&missing);
    apt(&install_args)
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

//! `logpipeline`: run LogPipeline on this machine, load and benchmark it, run a local
//! Kubernetes cluster. `logpipeline --help` lists the subcommands.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use logpipeline::bench::query::QueryBenchArgs;
use logpipeline::bench::shelf::ShelfBenchArgs;
use logpipeline::bench::soak::SoakArgs;
use logpipeline::bench::store::StoreBenchArgs;
use logpipeline::bench::{self, BenchOptions};
use logpipeline::cluster::{self, ClusterArgs};
use logpipeline::dev::{self, DevArgs};
use logpipeline::load::{self, LoadOptions};
use logpipeline::logs;

/// LogPipeline's command line.
#[derive(Debug, Parser)]
#[command(name = "logpipeline", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Searches, follows and sends logs through a LogPipeline api.
    #[command(subcommand)]
    Logs(logs::Logs),
    /// Runs Redis, PostgreSQL, the api and a worker on this machine until Ctrl-C.
    Dev(DevArgs),
    /// Sends logs to a LogPipeline api as simulated devices and reports accepted logs/s,
    /// latency percentiles and answers; with --database-url and --redis-url, also
    /// persisted logs/s, the backlog, and whether every accepted log was stored once.
    Load(Box<LoadArgs>),
    /// Benchmarks on a stack this command starts.
    #[command(subcommand)]
    Bench(Bench),
    /// Runs a real one-node Kubernetes cluster with LogPipeline's images until Ctrl-C
    /// (needs root and the tools e2e/test.sh installs).
    Cluster(ClusterArgs),
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// The write path end to end: the seed's stress profile, the single-log profile and
    /// an open-loop sustained profile, each checked for lost and duplicated logs, with
    /// CPU per log per process, beside the seed system's figures.
    Pipeline(Box<BenchOptions>),
    /// The read path on a large table: cached and uncached device queries, statistics.
    Query(QueryBenchArgs),
    /// The worker's store path alone against a durable PostgreSQL: logs/s, CPU per log
    /// of PostgreSQL and of the worker's code, WAL and disk bytes per log.
    Store(StoreBenchArgs),
    /// The shelf: bytes per stored log and fleet-wide searches, as rows, as chunks and in
    /// VictoriaLogs, side by side on the same seed-shaped logs; compaction's CPU per log.
    Shelf(ShelfBenchArgs),
    /// Faults in turn under an open-loop writer for minutes: a worker and Redis
    /// SIGKILLed, another tenant's search storm and tail flood, PostgreSQL switched over;
    /// latency per phase, and every accepted log checked stored exactly once.
    Soak(SoakArgs),
}

#[derive(Debug, clap::Args)]
struct LoadArgs {
    #[command(flatten)]
    load: LoadOptions,

    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,

    /// Threads of the generator's runtime (default: one per CPU).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    threads: Option<u32>,
}

/// mimalloc: the load generator allocates per request from every runtime thread, where
/// glibc's arenas showed in profiles as lock waits and consolidation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Exits 1 with the error's chain on one line (the cluster tests quote the end of this
/// program's output when it fails, and a backtrace there would hide the cause), and 2
/// when a load found lost or duplicated logs.
fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(error) => {
            eprintln!("logpipeline: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<bool> {
    if matches!(command, Command::Bench(_)) {
        let profile = logpipeline_local::services::build_profile()?;
        if profile != "release" {
            eprintln!(
                "logpipeline: note: built with the `{profile}` profile; figures to compare are \
                 of release builds (`cargo logpipeline-release bench …`)"
            );
        }
    }
    match command {
        Command::Logs(command) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(logs::run(command, &mut std::io::stdout().lock()))
            .map(|()| true),
        Command::Dev(args) => dev::run(args).map(|()| true),
        Command::Load(args) => run_load(*args),
        Command::Bench(Bench::Pipeline(options)) => bench::run(&options).map(|()| true),
        Command::Bench(Bench::Query(args)) => runtime(None)?
            .block_on(bench::query::run(args))
            .map(|()| true),
        Command::Bench(Bench::Store(args)) => runtime(None)?
            .block_on(bench::store::run(args))
            .map(|()| true),
        Command::Bench(Bench::Shelf(args)) => runtime(None)?
            .block_on(bench::shelf::run(args))
            .map(|()| true),
        Command::Bench(Bench::Soak(args)) => bench::soak::run(&args),
        Command::Cluster(args) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(cluster::run(args))
            .map(|()| true),
    }
}

fn runtime(threads: Option<u32>) -> Result<tokio::runtime::Runtime> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        runtime.worker_threads(threads as usize);
    }
    Ok(runtime.enable_all().build()?)
}

/// Runs the load; `false` when end-to-end mode found lost or duplicated logs.
fn run_load(args: LoadArgs) -> Result<bool> {
    let report = runtime(args.threads)?.block_on(load::run(&args.load))?;
    print!("{}", report.render());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report
        .end_to_end
        .as_ref()
        .is_none_or(|e2e| e2e.exactly_once()))
}

//! The load generator: simulated devices posting logs to a LogPipeline api.
//!
//! `cargo run --release -p logpipeline-e2e --bin logpipeline-load -- --help`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use logpipeline_e2e::load::{self, LoadOptions};

/// Sends logs to a LogPipeline api as simulated devices and reports accepted logs/s,
/// latency percentiles and answers; with --database-url and --redis-url, also persisted
/// logs/s, the backlog, and whether every accepted log was stored exactly once.
#[derive(Debug, Parser)]
#[command(name = "logpipeline-load")]
struct Args {
    #[command(flatten)]
    load: LoadOptions,

    /// Also write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,

    /// Threads of the generator's runtime (default: one per CPU).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    threads: Option<u32>,
}

/// mimalloc: the hot path allocates per request from every runtime thread, where glibc's
/// arenas showed in profiles as lock waits and consolidation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(2),
        Err(error) => {
            eprintln!("logpipeline-load: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the load; `false` when end-to-end mode found lost or duplicated logs.
fn run(args: Args) -> Result<bool> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads as usize);
    }
    let report = runtime
        .enable_all()
        .build()?
        .block_on(load::run(&args.load))?;
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

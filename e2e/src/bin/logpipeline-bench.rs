//! The benchmark: a local stack, the seed's stress profile, the single-log profile and
//! an open-loop sustained profile, each in end-to-end mode, and a table of the medians.
//!
//! `cargo run --release -p logpipeline-e2e --bin logpipeline-bench -- --help`

use std::process::ExitCode;

use clap::Parser;
use logpipeline_e2e::load::bench::{self, BenchOptions};

/// Starts Redis, PostgreSQL, the api and workers on this machine, runs the benchmark
/// profiles against them and prints the results beside the seed system's.
#[derive(Debug, Parser)]
#[command(name = "logpipeline-bench")]
struct Args {
    #[command(flatten)]
    bench: BenchOptions,
}

/// mimalloc: the hot path allocates per request from every runtime thread, where glibc's
/// arenas showed in profiles as lock waits and consolidation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match bench::run(&Args::parse().bench) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("logpipeline-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

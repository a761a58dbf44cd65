use std::process::ExitCode;

use clap::Parser;
use logpipeline_worker::admin::Admin;
use logpipeline_worker::config::{Command, Config};

/// mimalloc: the hot path allocates per request from every runtime thread, where glibc's
/// arenas showed in profiles as lock waits and consolidation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    if let Some(Command::Admin {
        admin: Admin::Compact { older_than },
        ..
    }) = &config.command
    {
        return match logpipeline_worker::compact::admin(&config, *older_than).await {
            Ok(printed) => {
                print!("{printed}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("logpipeline-worker admin compact: {error}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(Command::Admin { shard, admin }) = &config.command {
        let target = config.admin_target(*shard);
        return match logpipeline_worker::admin::run(&config.redis, target, admin).await {
            Ok(printed) => {
                print!("{printed}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("logpipeline-worker admin: {error}");
                ExitCode::FAILURE
            }
        };
    }
    let _log_writer = logpipeline_core::telemetry::init(config.telemetry.log_format);
    match logpipeline_worker::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "logpipeline-worker failed");
            ExitCode::FAILURE
        }
    }
}

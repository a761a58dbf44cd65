use std::process::ExitCode;

use clap::Parser;
use logpipeline_api::auth;
use logpipeline_api::config::{Command, Config, KeysCommand};
use logpipeline_core::tenant::Tenant;

/// mimalloc: the hot path allocates per request from every runtime thread, where glibc's
/// arenas showed in profiles as lock waits and consolidation.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    if let Some(Command::Keys(KeysCommand::Generate {
        tenant,
        name,
        scopes,
    })) = &config.command
    {
        return generate_key(tenant, name, scopes);
    }
    let _log_writer = logpipeline_core::telemetry::init(config.telemetry.log_format);
    match logpipeline_api::run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(error = %error, "logpipeline-api failed");
            ExitCode::FAILURE
        }
    }
}

/// `keys generate`: a new key, and the keys file entry that admits it.
fn generate_key(tenant: &str, name: &str, scopes: &[String]) -> ExitCode {
    if let Err(error) = Tenant::parse(tenant) {
        eprintln!("logpipeline-api keys generate: {error}");
        return ExitCode::FAILURE;
    }
    let (secret, sha256) = auth::generate_key();
    println!("# The key, for the client; it is shown only here (the file holds its hash):");
    println!("#   {secret}");
    println!("# Its entry in the keys file (add it to the tenant's keys when it has some):");
    println!("tenants:");
    println!("  {tenant}:");
    println!("    keys:");
    println!("      - name: {}", serde_json::Value::from(name));
    println!("        sha256: {sha256}");
    println!("        scopes: [{}]", scopes.join(", "));
    ExitCode::SUCCESS
}

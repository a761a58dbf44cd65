//! The `logpipeline` command: finding, following and sending logs (`logs`), LogPipeline
//! on this machine (`dev`), its load generator and benchmarks (`load`, `bench`), and a
//! real one-node Kubernetes cluster with its images (`cluster`). Each subcommand is a
//! module with its arguments and a `run`.

pub mod bench;
pub mod cluster;
pub mod dev;
pub mod load;
pub mod logs;

use std::time::Duration;

use anyhow::{Result, bail};
use sqlx::PgPool;

/// An HTTP client for the commands, with ring as the TLS provider (reqwest is built
/// here without one of its own).
pub fn http_client() -> Result<reqwest::Client> {
    // Fails only when a provider is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::Client::builder().build()?)
}

/// Waits until the services have applied the whole schema to `pool`'s database.
pub async fn wait_for_schema(pool: &PgPool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !logpipeline_core::db::is_migrated(pool)
        .await
        .unwrap_or(false)
    {
        if tokio::time::Instant::now() >= deadline {
            bail!("the schema was not applied within two minutes");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

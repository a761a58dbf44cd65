//! Test harness and tools for LogPipeline's end-to-end tests.
//!
//! Tests start real servers — Redis, PostgreSQL, the LogPipeline binaries — on free ports
//! in temporary directories, and every server stops when its handle is dropped or the
//! test process exits.

pub mod auth;
pub mod devices;
pub mod kube;
pub mod load;
pub mod monitoring;
pub mod node;
pub mod postgres;
pub mod process;
pub mod prometheus;
pub mod redis;
pub mod rows;
pub mod services;
pub mod stack;

/// Builds an HTTP client for tests and tools. The workspace's TLS uses ring (the
/// cluster tests reach the ingress over HTTPS), so ring becomes the process's default
/// crypto provider first: reqwest refuses to build a client without one.
pub fn http_client(
    configure: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
) -> anyhow::Result<reqwest::Client> {
    // Fails only when a provider is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(configure(reqwest::Client::builder()).build()?)
}

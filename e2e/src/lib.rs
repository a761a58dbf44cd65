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

/// Makes ring the process's default TLS crypto provider. The tests' TLS uses ring (the
/// cluster tests reach the ingress over HTTPS), and reqwest, built here without a
/// provider of its own, refuses to build any client, this crate's or one that
/// `logpipeline-client` builds, until one is installed.
pub fn install_tls_provider() {
    // Fails only when a provider is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds an HTTP client for tests and tools.
pub fn http_client(
    configure: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
) -> anyhow::Result<reqwest::Client> {
    install_tls_provider();
    Ok(configure(reqwest::Client::builder()).build()?)
}

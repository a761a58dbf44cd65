//! The harness of LogPipeline's end-to-end tests: a whole stack per test, devices and the
//! system-B client that send logs, runs to find them again, readers of the Redis stream,
//! rows written straight to PostgreSQL, the operator's tests' objects on a shared
//! control plane, a real Prometheus, and the checks of the shipped dashboards. The
//! servers themselves (Redis, PostgreSQL, the binaries, a one-node Kubernetes) come from
//! `logpipeline-local`; every one stops when its handle is dropped or the test process
//! exits.

pub mod browser;
pub mod client;
pub mod devices;
pub mod monitoring;
pub mod operator;
pub mod prometheus;
pub mod rows;
pub mod runs;
pub mod stack;
pub mod stored;
pub mod stream;

/// Makes ring the process's default TLS crypto provider. The tests' TLS uses ring (the
/// cluster tests reach the ingress over HTTPS), and reqwest, built here without a
/// provider of its own, refuses to build any client, this crate's or one that
/// `logpipeline-client` builds, until one is installed.
pub fn install_tls_provider() {
    // Fails only when a provider is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Builds an HTTP client for tests.
pub fn http_client(
    configure: impl FnOnce(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
) -> anyhow::Result<reqwest::Client> {
    install_tls_provider();
    Ok(configure(reqwest::Client::builder()).build()?)
}

//! The system-B client (`logpipeline-client`) as the tests drive it.

use std::time::Duration;

use logpipeline_client::{Client, ClientBuilder};

/// A client that retries quickly, as the tests cannot wait for production backoffs.
/// Panics if the client cannot be built.
pub fn quick(builder: ClientBuilder) -> Client {
    crate::install_tls_provider();
    builder
        .timeout(Duration::from_secs(5))
        .retries(30, Duration::from_millis(50), Duration::from_millis(500))
        .build()
        .unwrap_or_else(|error| panic!("building the client: {error:?}"))
}

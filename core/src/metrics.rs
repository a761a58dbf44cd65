//! Prometheus helpers shared by the api and worker.

use prometheus::{Encoder, Registry, TextEncoder};

/// Every metric of `registry` in Prometheus' text format.
pub fn render(registry: &Registry) -> String {
    let mut buffer = Vec::new();
    // Encoding into a Vec fails only for malformed metrics, which registration refuses.
    let _ = TextEncoder::new().encode(&registry.gather(), &mut buffer);
    String::from_utf8_lossy(&buffer).into_owned()
}

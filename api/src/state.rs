//! What every handler can reach.

use axum::extract::FromRef;

use crate::metrics::Metrics;
use crate::queue::Queue;

/// The api's shared state; cheap to clone.
#[derive(Clone, FromRef)]
pub struct AppState {
    /// The stream accepted logs go to.
    pub queue: Queue,
    /// The api's metrics.
    pub metrics: Metrics,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
}

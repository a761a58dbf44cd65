//! What every handler can reach.

use std::time::Duration;

use axum::extract::FromRef;
use sqlx::PgPool;

use crate::auth::Auth;
use crate::cache::Cache;
use crate::limits::RateLimits;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::v1::FrontInfo;

/// The api's shared state; cheap to clone.
#[derive(Clone, FromRef)]
pub struct AppState {
    /// The stream accepted logs go to.
    pub queue: Queue,
    /// The stored logs.
    pub db: PgPool,
    /// The query cache.
    pub cache: Cache,
    /// The api's metrics.
    pub metrics: Metrics,
    /// How requests are authenticated.
    #[from_ref(skip)]
    pub auth: Auth,
    /// Request-rate limits.
    #[from_ref(skip)]
    pub rate_limits: RateLimits,
    /// Largest request body accepted, in bytes.
    #[from_ref(skip)]
    pub max_body_bytes: usize,
    /// How long a page of logs stays cached when no commit retires it.
    #[from_ref(skip)]
    pub query_cache_ttl: Duration,
    /// How long statistics stay cached.
    #[from_ref(skip)]
    pub stats_cache_ttl: Duration,
    /// What the `/api/v1` front says of the service, and its concurrent test.
    #[from_ref(skip)]
    pub front: FrontInfo,
}

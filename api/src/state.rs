//! What every handler can reach.

use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use axum::extract::FromRef;
use sqlx::PgPool;

use crate::auth::Auth;
use crate::body::BodyLimits;
use crate::cache::Cache;
use crate::limits::RateLimits;
use crate::metrics::Metrics;
use crate::queue::Queue;
use crate::read::admission::SearchGate;
use crate::read::shelf::Shelf;

/// The api's shared state: one allocation, so that the clone every request and
/// middleware takes is one reference count, whatever the state holds.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// The state of `shared`.
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl FromRef<AppState> for Metrics {
    fn from_ref(state: &AppState) -> Self {
        state.metrics.clone()
    }
}

/// What [`AppState`] holds.
pub struct Shared {
    /// The stream accepted logs go to.
    pub queue: Queue,
    /// The stored logs.
    pub db: PgPool,
    /// The stored logs, rows and chunks, as reads see them.
    pub shelf: Shelf,
    /// The same, through the searches' own connections.
    pub search_shelf: Shelf,
    /// Which searches run.
    pub search_gate: SearchGate,
    /// The query cache.
    pub cache: Cache,
    /// The api's metrics.
    pub metrics: Metrics,
    /// How requests are authenticated.
    pub auth: Auth,
    /// Request-rate limits.
    pub rate_limits: RateLimits,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// How request bodies are read: time, size and memory bounds.
    pub body: BodyLimits,
    /// How long a page of logs stays cached when no commit retires it.
    pub query_cache_ttl: Duration,
    /// How long a search may run in PostgreSQL, all its statements together.
    pub search_timeout: Duration,
    /// The live tail.
    pub tail: crate::tail::Tail,
    /// How long statistics stay cached.
    pub stats_cache_ttl: Duration,
    /// What the `/api/v1` front says of the service, and its concurrent test.
    pub front: FrontInfo,
}

/// What the `/api/v1` front and `GET /` say about the service.
#[derive(Debug, Clone)]
pub struct FrontInfo {
    /// Where gRPC is served.
    pub grpc_listen: SocketAddr,
    /// Whether the gRPC server is serving.
    pub grpc_serving: Arc<AtomicBool>,
    /// The concurrent test's limits, when it is on.
    pub concurrent_test: Option<ConcurrentTestLimits>,
}

/// Bounds of `POST /api/v1/logs/concurrent-test`.
#[derive(Debug, Clone, Copy)]
pub struct ConcurrentTestLimits {
    /// Most logs one test writes.
    pub max_count: u32,
    /// Most writers at once.
    pub max_workers: u32,
}

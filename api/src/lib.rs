//! LogPipeline's ingest and query service: HTTP (the seed's device API, system B's
//! `/api/v1` front, OTLP/HTTP logs, queries) and gRPC (system B's `LogService`, OTLP's
//! `LogsService`).
//!
//! [`app`] builds the HTTP router from an [`AppState`], [`grpc::router`] the gRPC one;
//! [`run`] connects to Redis, serves both until SIGTERM or Ctrl-C, then drains in-flight
//! requests.

mod accept;
pub mod auth;
pub mod body;
mod cache;
mod concurrent_test;
pub mod config;
pub mod docs;
mod error;
mod explorer;
mod extract;
pub mod grpc;
mod health;
mod hygiene;
pub mod idempotency;
mod ingest;
pub mod limits;
mod metrics;
pub mod otlp;
mod queue;
mod read;
mod routes;
mod scope;
pub mod server;
mod state;
mod stats;
mod tail;
pub mod v1;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use logpipeline_core::connection::RedisTarget;
use logpipeline_core::db::Reachability;
use logpipeline_core::retry::until_done;
use logpipeline_core::{shutdown, stream};
use tokio_util::sync::CancellationToken;
use tower_http::decompression::RequestDecompressionLayer;
use tracing::{info, warn};

pub use crate::auth::{Auth, Keys};
pub use crate::body::BodyLimits;
pub use crate::cache::Cache;
use crate::config::{AuthMode, Config};
pub use crate::error::{Error, ErrorBody, Result};
pub use crate::ingest::{BatchAccepted, LogAccepted};
pub use crate::limits::{RateLimit, RateLimits};
pub use crate::metrics::Metrics;
pub use crate::queue::{Queue, Replication, Settings as QueueSettings};
pub use crate::read::admission::SearchGate;
pub use crate::read::shelf::Shelf;
use crate::server::{ConnectionLimits, Protocol, Server};
pub use crate::state::{AppState, Shared};
pub use crate::state::{ConcurrentTestLimits, FrontInfo};
pub use crate::tail::Tail;

/// How often the rate limiters forget the clients they have not seen lately.
const FORGET_IDLE_LIMITS_EVERY: Duration = Duration::from_secs(60);

/// How often the api checks Redis and PostgreSQL for its metrics.
const DEPENDENCY_CHECK_EVERY: Duration = Duration::from_secs(5);

/// The api's routes, with request ids, tracing spans and metrics around every request.
/// Ingest needs a key of scope `write`, queries and stats `read` (within the rate
/// limits); health, probes, metrics and the API's documents are open.
pub fn app(state: AppState) -> Router {
    let guard = auth::Guard {
        auth: state.auth.clone(),
        limits: state.rate_limits.clone(),
    };
    let write = Router::new()
        .route("/api/log", post(ingest::create_log))
        .route("/api/logs/batch", post(ingest::create_batch))
        .route_layer(axum::middleware::from_fn_with_state(
            guard.clone(),
            auth::require_write,
        ));
    let front = Router::new()
        .route("/api/v1/logs/write", post(v1::write))
        .route("/api/v1/logs/batch", post(v1::batch))
        .route("/api/v1/logs/concurrent-test", post(concurrent_test::run))
        .route_layer(axum::middleware::from_fn_with_state(
            guard.clone(),
            auth::require_write,
        ))
        .route("/api/v1/logs/health", get(v1::health))
        .route_layer(axum::middleware::from_fn(v1::seed_error_shape));
    let otlp_http = Router::new()
        .route("/v1/logs", post(otlp::http_export))
        .route_layer(axum::middleware::from_fn_with_state(
            guard.clone(),
            auth::require_write,
        ))
        .route_layer(axum::middleware::from_fn(otlp::status_shape));
    let read = Router::new()
        .route("/api/logs", get(routes::search::search))
        .route("/api/logs/histogram", get(routes::search::histogram))
        .route("/api/logs/tail", get(routes::tail::tail))
        .route("/api/logs/{device_id}", get(routes::logs::get_logs))
        .route("/api/logs/batch", get(routes::logs::get_batch_device_logs))
        .route(
            "/api/services/{service_name}/logs",
            get(routes::logs::get_service_logs),
        )
        .route(
            "/api/traces/{trace_id}/logs",
            get(routes::logs::get_trace_logs),
        )
        .route("/api/stats", get(stats::get_stats))
        .route_layer(axum::middleware::from_fn_with_state(
            guard,
            auth::require_read,
        ));
    Router::new()
        .merge(write)
        .merge(front)
        .merge(otlp_http)
        .merge(read)
        .route("/", get(v1::about))
        .route("/health", get(health::health))
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::endpoint))
        .merge(docs::router())
        .merge(explorer::router())
        .fallback(|| async { Error::NotFound })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(RequestDecompressionLayer::new())
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            hygiene::around,
        ))
        .with_state(state)
}

/// Connects to Redis (retrying while it is down), serves until a shutdown signal, then
/// drains in-flight requests for up to the configured time.
pub async fn run(config: Config) -> Result<()> {
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            shutdown::signal().await;
            shutdown.cancel();
        }
    });
    run_until(config, shutdown).await
}

/// Like [`run`], until `shutdown` is cancelled (`logpipeline dev` runs the api in its own
/// process this way).
pub async fn run_until(config: Config, shutdown: CancellationToken) -> Result<()> {
    let target =
        RedisTarget::from_args(&config.redis).map_err(|error| Error::Config(error.to_string()))?;
    let redis_timeout = Duration::from_secs(config.redis_timeout_secs);
    let Some(redis) = until_done("connect to Redis", &shutdown, || {
        target.connect(redis_timeout)
    })
    .await
    else {
        return Ok(());
    };
    let mut setup = redis.clone();
    let shards = config.stream.shards(target.is_cluster());
    for shard in shards.keys() {
        if let Err(error) = stream::ensure_group(&mut setup, shard, &config.stream.group).await {
            warn!(%error, "cannot create the consumer group yet; the worker creates it too");
        }
    }
    stream::check_eviction_policy(&mut setup)
        .await
        .map_err(Error::RedisSetup)?;
    if target.is_cluster() && stream::requires_full_coverage(&mut setup).await == Some(true) {
        warn!(
            "the Redis Cluster has cluster-require-full-coverage yes: while one master is down, \
             every shard refuses logs until its replica takes over; set it to no so that \
             only the failed master's shard does"
        );
    }
    let replication = config.durability.replication();
    // `WAIT` holds up the connection it is sent on: with replication each writer has its own.
    let mut writers = Vec::with_capacity(queue::WRITERS);
    for _ in 0..queue::WRITERS {
        if replication.is_none() {
            writers.push(redis.clone());
            continue;
        }
        let Some(writer) = until_done("connect to Redis", &shutdown, || {
            target.connect(redis_timeout)
        })
        .await
        else {
            return Ok(());
        };
        writers.push(writer);
    }
    let metrics = Metrics::new().map_err(|error| Error::Internal(error.to_string()))?;
    let auth = authentication(&config, &shutdown)?;
    let rate_limits = RateLimits::new(
        rate_limit(config.rate_limit_per_key, config.rate_limit_per_key_burst),
        rate_limit(
            config.rate_limit_per_address,
            config.rate_limit_per_address_burst,
        ),
        config.trusted_proxies.clone(),
    );
    tokio::spawn({
        let rate_limits = rate_limits.clone();
        let shutdown = shutdown.clone();
        async move {
            let mut ticks = tokio::time::interval(FORGET_IDLE_LIMITS_EVERY);
            while shutdown.run_until_cancelled(ticks.tick()).await.is_some() {
                rate_limits.forget_idle();
            }
        }
    });
    let db = logpipeline_core::db::lazy_pool(&config.database)
        .map_err(|error| Error::Config(error.to_string()))?;
    // Queries need the schema, ingest does not: apply it in the background, so the api
    // accepts logs while PostgreSQL is down.
    tokio::spawn({
        let db = db.clone();
        let shutdown = shutdown.clone();
        async move {
            match logpipeline_core::db::migrate_when_reachable(&db, &shutdown).await {
                Ok(true) => info!("schema up to date"),
                Ok(false) => {}
                Err(error) => tracing::error!(%error, "cannot apply the schema; queries will fail"),
            }
        }
    });
    let search_db = logpipeline_core::db::lazy_pool_of(&config.database, config.search_concurrency)
        .map_err(|error| Error::Config(error.to_string()))?;
    let reachability = Reachability::watch(&config.database, shutdown.clone())
        .map_err(|error| Error::Config(error.to_string()))?;
    let shelf = Shelf::new(
        db.clone(),
        config.chunk_index_cache_mb * 1024 * 1024,
        reachability,
    );
    let state = AppState::new(Shared {
        queue: Queue::new(
            redis.clone(),
            writers,
            queue::Settings {
                shards: &shards,
                capacity: config.stream_capacity,
                idempotency_window: Duration::from_secs(config.idempotency_window_secs),
                replication,
            },
            metrics.clone(),
        ),
        cache: Cache::new(
            redis,
            &config.cache.cache_prefix,
            config.cache.generation_keys(),
            metrics.clone(),
        ),
        search_shelf: shelf.through(search_db),
        search_gate: SearchGate::new(
            config.search_concurrency as usize,
            config.search_concurrency_per_tenant as usize,
        ),
        shelf,
        db,
        metrics: metrics.clone(),
        auth,
        rate_limits: rate_limits.clone(),
        max_body_bytes: config.max_body_bytes,
        body: BodyLimits::new(
            config.max_body_bytes,
            Duration::from_secs(config.body_grace_secs),
            config.body_min_bytes_per_sec,
            config.max_gzip_ratio,
            config
                .body_bytes_in_flight
                .unwrap_or_else(body::default_budget_bytes),
        ),
        query_cache_ttl: Duration::from_secs(config.query_cache_ttl_secs),
        search_timeout: Duration::from_millis(config.search_timeout_ms),
        tail: Tail::start(
            &target,
            &shards,
            config.tail_max_subscribers,
            shutdown.clone(),
        ),
        stats_cache_ttl: Duration::from_secs(config.stats_cache_ttl_secs),
        front: FrontInfo {
            grpc_listen: config.grpc_listen,
            grpc_serving: Arc::new(AtomicBool::new(false)),
            concurrent_test: config.concurrent_test.then_some(ConcurrentTestLimits {
                max_count: config.concurrent_test_max_count,
                max_workers: config.concurrent_test_max_workers,
            }),
        },
    });
    state.metrics.set_stream_capacity(config.stream_capacity);
    tokio::spawn(health::watch(
        state.clone(),
        DEPENDENCY_CHECK_EVERY,
        shutdown.clone(),
    ));
    let bind = |address| {
        logpipeline_core::net::listen(address).map_err(|source| Error::Bind { address, source })
    };
    let listener = bind(config.listen)?;
    let grpc_listener = bind(config.grpc_listen)?;
    info!(address = %config.listen, grpc = %config.grpc_listen, stream = %config.stream.stream, shards = shards.count(), "serving");
    let drain = Duration::from_secs(config.shutdown_timeout_secs);
    let limits = ConnectionLimits {
        header_read_timeout: Duration::from_secs(config.header_read_timeout_secs),
        max_connections: config.max_connections,
        max_connections_per_address: config.max_connections_per_address,
    };
    let grpc = Server {
        listener: grpc_listener,
        protocol: Protocol::Http2,
        app: grpc::router(state.clone(), shutdown.clone()),
        limits,
    };
    let http = Server {
        listener,
        protocol: Protocol::Http1,
        app: app(state.clone()),
        limits,
    };
    state.front.grpc_serving.store(true, Ordering::Relaxed);
    let (served, grpc_served) = tokio::join!(
        server::serve(
            http,
            rate_limits.clone(),
            metrics.clone(),
            shutdown.clone().cancelled_owned(),
            drain,
        ),
        server::serve(
            grpc,
            rate_limits,
            metrics,
            shutdown.cancelled_owned(),
            drain
        ),
    );
    served.and(grpc_served)
}

/// The authentication `config` asks for; with a keys file, re-read while serving.
fn authentication(config: &Config, shutdown: &CancellationToken) -> Result<Auth> {
    match (config.auth, &config.api_keys_file, &config.api_keys) {
        (AuthMode::Off, ..) => {
            warn!(
                "AUTHENTICATION IS OFF (LOGPIPELINE_AUTH=off): anyone who reaches this api \
                 can write and read every log; use this for a local stack only"
            );
            Ok(Auth::Off)
        }
        (AuthMode::Keys, Some(path), _) => {
            let keys = Keys::read(path).map_err(|error| Error::Config(error.to_string()))?;
            info!(keys = keys.len(), path = %path.display(), "API keys read");
            let auth = Auth::with_keys(keys);
            tokio::spawn(auth::watch(
                auth.clone(),
                path.clone(),
                Duration::from_secs(config.api_keys_reload_secs.max(1)),
                shutdown.clone(),
            ));
            Ok(auth)
        }
        (AuthMode::Keys, None, Some(text)) => {
            let keys = Keys::parse(text).map_err(|error| Error::Config(error.to_string()))?;
            info!(keys = keys.len(), "API keys read from LOGPIPELINE_API_KEYS");
            Ok(Auth::with_keys(keys))
        }
        (AuthMode::Keys, None, None) => Err(Error::Config(
            "API keys are required: set LOGPIPELINE_API_KEYS_FILE (or LOGPIPELINE_API_KEYS), \
             or LOGPIPELINE_AUTH=off to accept requests without a key (a local stack only)"
                .into(),
        )),
    }
}

/// A limit of `per_second` with `burst`, one second's worth when unset.
fn rate_limit(per_second: Option<NonZeroU32>, burst: Option<NonZeroU32>) -> Option<RateLimit> {
    per_second.map(|per_second| RateLimit {
        per_second,
        burst: burst.unwrap_or(per_second),
    })
}

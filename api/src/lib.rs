//! LogPipeline's HTTP service.
//!
//! [`app`] builds the router from an [`AppState`]; [`run`] connects to Redis, serves
//! until SIGTERM or Ctrl-C, then drains in-flight requests.

mod cache;
pub mod config;
pub mod docs;
mod error;
mod extract;
mod health;
mod ingest;
mod metrics;
mod query;
mod queue;
mod state;
mod stats;

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::routing::{get, post};
use logpipeline_core::retry::until_done;
use logpipeline_core::{shutdown, stream};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceBuilder;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::{info, warn};

pub use crate::cache::Cache;
use crate::config::Config;
pub use crate::error::{Error, ErrorBody, Result};
pub use crate::ingest::{BatchAccepted, LogAccepted};
pub use crate::metrics::Metrics;
pub use crate::queue::Queue;
pub use crate::state::AppState;

/// How often the api checks Redis and PostgreSQL for its metrics.
const DEPENDENCY_CHECK_EVERY: Duration = Duration::from_secs(5);

/// The api's routes, with request ids, tracing spans and metrics around every request.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/api/log", post(ingest::create_log))
        .route("/api/logs/batch", post(ingest::create_batch))
        .route("/api/logs/{device_id}", get(query::get_logs))
        .route("/api/stats", get(stats::get_stats))
        .route("/health", get(health::health))
        .route("/livez", get(health::livez))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::endpoint))
        .merge(docs::router())
        .fallback(|| async { Error::NotFound })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ))
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(TraceLayer::new_for_http().make_span_with(request_span))
                .layer(PropagateRequestIdLayer::x_request_id()),
        )
        .with_state(state)
}

/// The span of a request: method, matched route and request id.
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(request.uri().path(), MatchedPath::as_str);
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|id| id.to_str().ok())
        .unwrap_or_default();
    tracing::info_span!("request", method = %request.method(), route, request_id = id)
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
    let client = redis::Client::open(config.redis.redis_url.as_str()).map_err(Error::RedisSetup)?;
    let Some(redis) = until_done("connect to Redis", &shutdown, || {
        connect_redis(&client, &config)
    })
    .await
    else {
        return Ok(());
    };
    let mut setup = redis.clone();
    if let Err(error) =
        stream::ensure_group(&mut setup, &config.stream.stream, &config.stream.group).await
    {
        warn!(%error, "cannot create the consumer group yet; the worker creates it too");
    }
    stream::check_eviction_policy(&mut setup)
        .await
        .map_err(Error::RedisSetup)?;
    let metrics = Metrics::new().map_err(|error| Error::Internal(error.to_string()))?;
    let db = logpipeline_core::db::lazy_pool(&config.database)
        .map_err(|error| Error::Internal(format!("invalid database settings: {error}")))?;
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
    let state = AppState {
        queue: Queue::new(
            redis.clone(),
            &config.stream.stream,
            config.stream_capacity,
            metrics.clone(),
        ),
        cache: Cache::new(
            redis,
            &config.cache.cache_prefix,
            &config.cache.generations_key(),
            metrics.clone(),
        ),
        db,
        metrics,
        max_body_bytes: config.max_body_bytes,
        query_cache_ttl: Duration::from_secs(config.query_cache_ttl_secs),
        stats_cache_ttl: Duration::from_secs(config.stats_cache_ttl_secs),
    };
    state.metrics.set_stream_capacity(config.stream_capacity);
    tokio::spawn(health::watch(
        state.clone(),
        DEPENDENCY_CHECK_EVERY,
        shutdown.clone(),
    ));
    let listener = logpipeline_core::net::listen(config.listen).map_err(|source| Error::Bind {
        address: config.listen,
        source,
    })?;
    info!(address = %config.listen, stream = %config.stream.stream, "serving");
    let drain = Duration::from_secs(config.shutdown_timeout_secs);
    serve(listener, app(state), shutdown.cancelled_owned(), drain).await
}

async fn connect_redis(
    client: &redis::Client,
    config: &Config,
) -> redis::RedisResult<ConnectionManager> {
    let timeout = Duration::from_secs(config.redis_timeout_secs);
    let manager_config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(timeout))
        .set_connection_timeout(Some(timeout))
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_with_config(client.clone(), manager_config).await
}

/// Serves `app` until `stop` completes; then stops accepting connections and waits up to
/// `drain` for in-flight requests to finish.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    stop: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
) -> Result<()> {
    let stopping = std::sync::Arc::new(tokio::sync::Notify::new());
    let signalled = stopping.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        stop.await;
        signalled.notify_one();
    });
    let deadline = async {
        stopping.notified().await;
        tokio::time::sleep(drain).await;
    };
    tokio::select! {
        served = server => served?,
        () = deadline => warn!(?drain, "in-flight requests did not finish in time; exiting"),
    }
    info!("stopped");
    Ok(())
}

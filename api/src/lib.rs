//! LogPipeline's HTTP service.
//!
//! [`app`] builds the router from an [`AppState`]; [`run`] connects to Redis, serves
//! until SIGTERM or Ctrl-C, then drains in-flight requests.

pub mod config;
mod error;
mod extract;
mod ingest;
mod metrics;
mod probes;
mod queue;
mod state;

use std::future::Future;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use logpipeline_core::retry::until_done;
use logpipeline_core::{shutdown, stream};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
pub use crate::error::{Error, ErrorBody, Result};
pub use crate::ingest::{BatchAccepted, LogAccepted};
pub use crate::metrics::Metrics;
pub use crate::queue::Queue;
pub use crate::state::AppState;

/// The api's routes.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/api/log", post(ingest::create_log))
        .route("/api/logs/batch", post(ingest::create_batch))
        .route("/livez", get(probes::livez))
        .route("/readyz", get(probes::readyz))
        .route("/metrics", get(probes::metrics))
        .fallback(|| async { Error::NotFound })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
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
    let state = AppState {
        queue: Queue::new(redis, &config.stream.stream, config.stream_capacity),
        metrics: Metrics::new().map_err(|error| Error::Serve(std::io::Error::other(error)))?,
        max_body_bytes: config.max_body_bytes,
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
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

//! LogPipeline's stream consumer.
//!
//! [`run`] applies the schema, starts `concurrency` [`consumer`]s that read the stream
//! through the consumer group and store batches in PostgreSQL, keeps the stream trimmed
//! ([`maintenance`]), serves metrics and probes ([`ops`]), and on SIGTERM or Ctrl-C lets
//! the consumers finish and acknowledge the batches in hand before exiting.

pub mod admin;
pub mod config;
pub mod consumer;
pub mod copy;
mod error;
pub mod maintenance;
pub mod metrics;
pub mod ops;
pub mod store;
pub mod stream;
pub mod upkeep;

use std::sync::Arc;
use std::time::Duration;

use logpipeline_core::retry::until_done;
use logpipeline_core::{db, shutdown};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::consumer::{Consumer, Settings};
pub use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::stream::Stream;

/// How long a consumer name that holds nothing may stay unused before it is removed.
const CONSUMER_EXPIRY: Duration = Duration::from_secs(3600);

/// Runs the worker until a shutdown signal, then drains.
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

/// Runs the worker until `shutdown` is cancelled, then drains.
pub async fn run_until(config: Config, shutdown: CancellationToken) -> Result<()> {
    let metrics = Metrics::new()?;
    let store = Store::new(db::lazy_pool(&config.database)?, config.store_settings());
    let client = redis::Client::open(config.redis.connection_info()?)?;
    let dead_letter = config.dead_letter_stream();
    let generations = config.cache.generation_keys();
    let stream_on = |connection: ConnectionManager| {
        Stream::new(
            connection,
            &config.stream.stream,
            &config.stream.group,
            &dead_letter,
            &generations,
        )
    };

    let Some(control) = until_done("connect to Redis", &shutdown, || {
        connect(&client, Duration::from_secs(5))
    })
    .await
    else {
        return Ok(());
    };
    logpipeline_core::stream::check_eviction_policy(&mut control.clone()).await?;

    let listener = TcpListener::bind(config.metrics_listen)
        .await
        .map_err(|source| Error::Bind {
            address: config.metrics_listen,
            source,
        })?;
    let ops = tokio::spawn(
        axum::serve(
            listener,
            ops::router(ops::OpsState {
                metrics: metrics.clone(),
                stream: stream_on(control.clone()),
                store: store.clone(),
            }),
        )
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .into_future(),
    );

    match db::migrate_when_reachable(store.pool(), &shutdown).await {
        Ok(true) => info!("schema up to date"),
        Ok(false) => return Ok(()),
        Err(error) => return Err(Error::Schema(error)),
    }
    let group_ready = until_done("create the consumer group", &shutdown, || async {
        logpipeline_core::stream::ensure_group(
            &mut control.clone(),
            &config.stream.stream,
            &config.stream.group,
        )
        .await
    })
    .await;
    if group_ready.is_none() {
        return Ok(());
    }

    let name = config.consumer_name();
    let settings = Settings {
        batch_size: config.batch_size,
        block: Duration::from_millis(config.block_ms),
        claim_idle: config.claim_idle(),
        max_deliveries: config.max_deliveries,
    };
    // Reads block their connection, so every consumer has its own.
    let read_timeout = settings.block + Duration::from_secs(10);
    let mut tasks = JoinSet::new();
    for index in 0..config.concurrency {
        let Some(connection) = until_done("connect to Redis", &shutdown, || {
            connect(&client, read_timeout)
        })
        .await
        else {
            return Ok(());
        };
        tasks.spawn(
            Consumer {
                name: Arc::from(format!("{name}-{index}")),
                stream: stream_on(connection),
                store: store.clone(),
                metrics: metrics.clone(),
                settings: settings.clone(),
                shutdown: shutdown.clone(),
            }
            .run(),
        );
    }
    tasks.spawn(upkeep::run(
        store.clone(),
        metrics.clone(),
        Duration::from_secs(config.storage_upkeep_secs),
        shutdown.clone(),
    ));
    tasks.spawn(upkeep::fold_counts(
        store.clone(),
        metrics.clone(),
        upkeep::FOLD_EVERY,
        shutdown.clone(),
    ));
    tasks.spawn(maintenance::run(
        stream_on(control.clone()),
        metrics.clone(),
        Duration::from_millis(config.maintenance_interval_ms),
        CONSUMER_EXPIRY.max(settings.claim_idle * 10),
        shutdown.clone(),
    ));
    info!(consumer = %name, concurrency = config.concurrency, stream = %config.stream.stream, "worker started");

    shutdown.cancelled().await;
    info!("stopping: finishing the batches in hand");
    let drain = Duration::from_secs(config.shutdown_timeout_secs);
    let drained =
        tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        warn!(
            ?drain,
            "batches did not finish in time; they stay pending for other workers"
        );
        tasks.abort_all();
    }
    let _ = ops.await;
    info!("stopped");
    Ok(())
}

async fn connect(
    client: &redis::Client,
    response_timeout: Duration,
) -> redis::RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_with_config(client.clone(), config).await
}

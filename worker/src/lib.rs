//! LogPipeline's stream consumer.
//!
//! [`run`] applies the schema, starts `concurrency` [`consumer`]s that read the stream
//! through the consumer group and store batches in PostgreSQL, keeps the stream trimmed
//! ([`maintenance`]), moves stored logs into chunks ([`compact`]), serves metrics and
//! probes ([`ops`]), and on SIGTERM or Ctrl-C lets
//! the consumers finish and acknowledge the batches in hand before exiting.

pub mod admin;
pub mod compact;
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
pub mod watermark;

use std::sync::Arc;
use std::time::Duration;

use logpipeline_core::connection::{Redis, RedisTarget};
use logpipeline_core::retry::until_done;
use logpipeline_core::{db, shutdown};
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
    let target = RedisTarget::from_args(&config.redis)?;
    let generations = config.cache.generation_keys();
    let shards = config.stream.shards(target.is_cluster());
    let replication = config.durability.replication();
    let stream_on = |connection: Redis, key: &str| {
        Stream::new(
            connection,
            key,
            &config.stream.group,
            &config.dead_letter_stream(key),
            &generations,
        )
        .with_replication(replication)
    };

    let Some(control) = until_done("connect to Redis", &shutdown, || {
        target.connect(Duration::from_secs(5))
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
                stream: stream_on(control.clone(), &shards.keys()[0]),
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
        for shard in shards.keys() {
            logpipeline_core::stream::ensure_group(
                &mut control.clone(),
                shard,
                &config.stream.group,
            )
            .await?;
        }
        Ok::<_, redis::RedisError>(())
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
    // Reads block their connection, so every consumer has its own. Consumer `i` reads
    // shard `i % shards`, and there are at least as many consumers as shards, so every
    // worker reads every shard.
    let read_timeout = settings.block + Duration::from_secs(10);
    let consumers = (config.concurrency as usize).max(shards.count());
    let mut tasks = JoinSet::new();
    for index in 0..consumers {
        let Some(connection) = until_done("connect to Redis", &shutdown, || {
            target.connect(read_timeout)
        })
        .await
        else {
            return Ok(());
        };
        tasks.spawn(
            Consumer {
                name: Arc::from(format!("{name}-{index}")),
                stream: stream_on(connection, &shards.keys()[index % shards.count()]),
                store: store.clone(),
                metrics: metrics.clone(),
                settings: settings.clone(),
                shutdown: shutdown.clone(),
                recovering: false,
            }
            .run(),
        );
    }
    let drainer = Consumer {
        name: Arc::from(format!("{name}-drain")),
        stream: stream_on(control.clone(), &shards.keys()[0]),
        store: store.clone(),
        metrics: metrics.clone(),
        settings: settings.clone(),
        shutdown: shutdown.clone(),
        recovering: false,
    };
    let group = config.stream.group.clone();
    let retired_generations = generations.clone();
    tasks.spawn(drain_retired(
        target.clone(),
        shards.retired(),
        drainer,
        read_timeout,
        move |connection, key| {
            let dead = format!("{key}:dead");
            Stream::new(connection, key, &group, &dead, &retired_generations)
                .with_replication(replication)
        },
    ));
    tasks.spawn(upkeep::run(
        store.clone(),
        metrics.clone(),
        Duration::from_secs(config.storage_upkeep_secs),
        shutdown.clone(),
    ));
    tasks.spawn(compact::run(
        store.clone(),
        config.compact_settings(),
        compact::Source {
            redis: control.clone(),
            keys: shards
                .keys()
                .iter()
                .cloned()
                .chain(shards.retired())
                .collect(),
            group: config.stream.group.clone(),
        },
        metrics.clone(),
        Duration::from_secs(config.compact_every_secs),
        shutdown.clone(),
    ));
    tasks.spawn(upkeep::fold_counts(
        store.clone(),
        metrics.clone(),
        upkeep::FOLD_EVERY,
        shutdown.clone(),
    ));
    tasks.spawn(maintenance::run(
        shards
            .keys()
            .iter()
            .map(|key| stream_on(control.clone(), key))
            .collect(),
        metrics.clone(),
        Duration::from_millis(config.maintenance_interval_ms),
        CONSUMER_EXPIRY.max(settings.claim_idle * 10),
        shutdown.clone(),
    ));
    info!(consumer = %name, consumers, stream = %config.stream.stream, shards = shards.count(), "worker started");

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

/// How often a worker looks for shards no longer in use.
const RETIRED_CHECK_EVERY: Duration = Duration::from_secs(2);

/// Drains the shards in `retired` that exist (the shard count shrank, or an api still
/// writes with a larger one), one after the other, with `drainer`'s name and settings
/// on a connection of its own, until shutdown: each is read to its end, stored and
/// deleted.
async fn drain_retired(
    target: RedisTarget,
    retired: Vec<String>,
    drainer: Consumer,
    read_timeout: Duration,
    stream_on: impl Fn(Redis, &str) -> Stream,
) {
    let shutdown = drainer.shutdown.clone();
    let mut ticker = tokio::time::interval(RETIRED_CHECK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connection: Option<Redis> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if connection.is_none() {
            connection = target.connect(read_timeout).await.ok();
        }
        let Some(redis) = connection.clone() else {
            continue;
        };
        // One call per key: on a Redis Cluster they are on slots of their own.
        let exists = retired.iter().map(|key| {
            let mut redis = redis.clone();
            async move {
                redis::cmd("EXISTS")
                    .arg(key)
                    .query_async::<bool>(&mut redis)
                    .await
            }
        });
        let found: Vec<bool> = match futures::future::try_join_all(exists).await {
            Ok(found) => found,
            Err(error) => {
                warn!(%error, "cannot look for shards no longer in use");
                continue;
            }
        };
        for (key, _) in retired.iter().zip(found).filter(|(_, found)| *found) {
            let mut stream = stream_on(redis.clone(), key);
            if let Err(error) = stream.recreate_group().await {
                warn!(%error, stream = %key, "cannot read a shard no longer in use");
                continue;
            }
            Consumer {
                name: drainer.name.clone(),
                stream,
                store: drainer.store.clone(),
                metrics: drainer.metrics.clone(),
                settings: drainer.settings.clone(),
                shutdown: shutdown.clone(),
                recovering: false,
            }
            .drain()
            .await;
        }
    }
}

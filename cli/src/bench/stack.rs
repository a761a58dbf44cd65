//! The stack a benchmark runs against: Redis with an append-only file, a durable
//! PostgreSQL with `pg_stat_statements`, the api and workers — release builds when the
//! benchmark itself is one.

use std::time::Duration;

use anyhow::{Context, Result};
use redis::aio::MultiplexedConnection;

use logpipeline_local::postgres::{PostgresOptions, PostgresServer, multi_host_url};
use logpipeline_local::process::wait_until;
use logpipeline_local::redis::{RedisOptions, RedisServer};
use logpipeline_local::services::{ApiProcess, Env, WorkerProcess};

use super::PostgresStandby;

/// How to configure the services.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StackSettings {
    /// Worker processes.
    pub workers: u32,
    /// `LOGPIPELINE_CONCURRENCY` of each worker.
    pub worker_concurrency: u32,
    /// `LOGPIPELINE_BATCH_SIZE` of each worker.
    pub worker_batch_size: u32,
    /// `LOGPIPELINE_STREAM_CAPACITY` of the api.
    pub stream_capacity: u64,
    /// Redis `appendfsync`.
    pub appendfsync: String,
    /// Whether Redis has a replica (with the same persistence), for the api's
    /// `LOGPIPELINE_REDIS_DURABILITY=replicated`.
    pub redis_replica: bool,
    /// Whether PostgreSQL has a streaming standby, and whether commits wait for it.
    pub postgres_standby: PostgresStandby,
    /// More api settings.
    pub api_env: Env,
    /// More worker settings.
    pub worker_env: Env,
}

/// A running benchmark stack; everything stops when it is dropped.
pub struct BenchStack {
    /// The api.
    pub api: ApiProcess,
    /// The workers.
    pub workers: Vec<WorkerProcess>,
    /// PostgreSQL.
    pub postgres: PostgresServer,
    /// Redis.
    pub redis: RedisServer,
    /// Its replica, when asked for.
    pub replica: Option<RedisServer>,
    /// PostgreSQL's standby, when asked for.
    pub standby: Option<PostgresServer>,
    /// The `logs` database on the primary.
    pub database_url: String,
    /// The `logs` database as the api and workers are given it: with the standby, a
    /// multi-host URL naming both.
    services_database_url: String,
}

impl BenchStack {
    /// Starts Redis, PostgreSQL, the workers (which create the schema) and the api.
    pub fn start(settings: &StackSettings) -> Result<Self> {
        let redis_options = RedisOptions {
            append_only: true,
            extra_args: vec![
                "--maxmemory-policy".into(),
                "noeviction".into(),
                "--appendfsync".into(),
                settings.appendfsync.clone(),
            ],
        };
        let redis = RedisServer::start_with(redis_options.clone())?;
        let replica = if settings.redis_replica {
            Some(RedisServer::start_replica_of(redis.port(), redis_options)?)
        } else {
            None
        };
        let mut postgres_settings = vec![
            (
                "shared_preload_libraries".into(),
                "pg_stat_statements".into(),
            ),
            ("pg_stat_statements.track".into(), "all".into()),
        ];
        if settings.postgres_standby == PostgresStandby::Sync {
            postgres_settings.push(("synchronous_standby_names".into(), "*".into()));
        }
        let postgres = PostgresServer::start_with(PostgresOptions {
            durable: true,
            settings: postgres_settings,
        })?;
        let standby = match settings.postgres_standby {
            PostgresStandby::Off => None,
            PostgresStandby::Async | PostgresStandby::Sync => {
                Some(PostgresServer::start_standby_of(&postgres)?)
            }
        };
        postgres.psql("postgres", "create database logs")?;
        postgres.psql("logs", "create extension pg_stat_statements")?;
        let database_url = postgres.url("logs");
        let services_database_url = match &standby {
            None => database_url.clone(),
            Some(standby) => multi_host_url(&[&postgres, standby], "logs"),
        };
        let mut worker_env = Env::from([
            (
                "LOGPIPELINE_CONCURRENCY".into(),
                settings.worker_concurrency.to_string(),
            ),
            (
                "LOGPIPELINE_BATCH_SIZE".into(),
                settings.worker_batch_size.to_string(),
            ),
        ]);
        worker_env.extend(settings.worker_env.clone());
        let mut workers = Vec::new();
        for index in 0..settings.workers {
            let mut env = worker_env.clone();
            env.insert("LOGPIPELINE_CONSUMER_NAME".into(), format!("bench{index}"));
            workers.push(WorkerProcess::start(
                &redis.url(),
                &services_database_url,
                &env,
            )?);
        }
        // The workers apply the schema as they start.
        wait_until(
            "the workers create the logs table",
            Duration::from_secs(60),
            || Ok(postgres.psql("logs", "select to_regclass('logs') is not null")? == "t"),
        )?;
        let api_env = Self::api_env(settings, &settings.api_env);
        let api = ApiProcess::start(&redis.url(), &services_database_url, &api_env)?;
        Ok(Self {
            api,
            workers,
            postgres,
            redis,
            replica,
            standby,
            database_url,
            services_database_url,
        })
    }

    /// Replaces the api with one started with `api_env` beside the settings' own, on the
    /// same Redis, PostgreSQL and workers.
    pub fn restart_api(&mut self, settings: &StackSettings, api_env: &Env) -> Result<()> {
        let mut env = settings.api_env.clone();
        env.extend(api_env.clone());
        let env = Self::api_env(settings, &env);
        self.api = ApiProcess::start(&self.redis.url(), &self.services_database_url, &env)?;
        Ok(())
    }

    /// The api's environment: the stream capacity, then `extra`.
    fn api_env(settings: &StackSettings, extra: &Env) -> Env {
        let mut env = Env::from([(
            "LOGPIPELINE_STREAM_CAPACITY".into(),
            settings.stream_capacity.to_string(),
        )]);
        env.extend(extra.clone());
        env
    }

    /// Empties the `logs` table, so every run starts from the same state (the
    /// workers are idle between runs).
    pub fn truncate(&self) -> Result<()> {
        self.postgres.psql("logs", "truncate logs")?;
        self.postgres.psql("logs", "checkpoint")?;
        Ok(())
    }

    /// A connection to Redis.
    pub async fn redis(&self) -> Result<MultiplexedConnection> {
        redis::Client::open(self.redis.url())?
            .get_multiplexed_async_connection()
            .await
            .context("connecting to Redis")
    }

    /// The process ids of each part of the stack by name: `api`, `worker`, `redis`,
    /// `postgres` (the postmaster; its children are counted with it).
    pub async fn pids(&mut self) -> Result<Vec<(&'static str, u32)>> {
        let mut pids = vec![("api", self.api.process().pid())];
        for worker in &mut self.workers {
            pids.push(("worker", worker.process().pid()));
        }
        pids.push(("redis", process_id(&self.redis).await?));
        if let Some(replica) = &self.replica {
            pids.push(("replica", process_id(replica).await?));
        }
        pids.push((
            "postgres",
            super::probe::postmaster_pid(self.postgres.dir())?,
        ));
        if let Some(standby) = &self.standby {
            pids.push(("standby", super::probe::postmaster_pid(standby.dir())?));
        }
        Ok(pids)
    }
}

/// The process id `redis` reports.
async fn process_id(redis: &RedisServer) -> Result<u32> {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(
            &mut redis::Client::open(redis.url())?
                .get_multiplexed_async_connection()
                .await?,
        )
        .await?;
    info.lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
        .context("Redis INFO has no process_id")
}

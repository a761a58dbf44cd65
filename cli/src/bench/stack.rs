//! The stack a benchmark runs against: Redis with an append-only file, a durable
//! PostgreSQL with `pg_stat_statements`, the api and workers — release builds when the
//! benchmark itself is one.

use std::time::Duration;

use anyhow::{Context, Result};
use redis::aio::MultiplexedConnection;

use logpipeline_local::postgres::{PostgresOptions, PostgresServer, multi_host_url};
use logpipeline_local::process::wait_until;
use logpipeline_local::redis::{RedisCluster, RedisOptions, RedisServer};
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
    /// `LOGPIPELINE_REDIS_DURABILITY=replicated`; on a cluster, each master has one.
    pub redis_replica: bool,
    /// Masters of a Redis Cluster, or 0 for one Redis server.
    pub redis_cluster_masters: u32,
    /// `LOGPIPELINE_STREAM_SHARDS` of the api and the workers.
    pub stream_shards: u32,
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
    pub redis: BenchRedis,
    /// PostgreSQL's standby, when asked for.
    pub standby: Option<PostgresServer>,
    /// The `logs` database on the primary.
    pub database_url: String,
    /// The `logs` database as the api and workers are given it: with the standby, a
    /// multi-host URL naming both.
    services_database_url: String,
    /// Each worker's settings, to start it again.
    worker_envs: Vec<Env>,
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
        let redis = if settings.redis_cluster_masters > 0 {
            BenchRedis::Cluster(RedisCluster::start_with(
                settings.redis_cluster_masters as usize,
                usize::from(settings.redis_replica),
                redis_options,
            )?)
        } else {
            let mut servers = vec![RedisServer::start_with(redis_options.clone())?];
            if settings.redis_replica {
                let primary = servers[0].port();
                servers.push(RedisServer::start_replica_of(primary, redis_options)?);
            }
            BenchRedis::Single(servers)
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
        let mut worker_env = Self::redis_env(settings);
        worker_env.extend([
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
        let mut worker_envs = Vec::new();
        for index in 0..settings.workers {
            let mut env = worker_env.clone();
            env.insert("LOGPIPELINE_CONSUMER_NAME".into(), format!("bench{index}"));
            workers.push(WorkerProcess::start(
                &redis.url(),
                &services_database_url,
                &env,
            )?);
            worker_envs.push(env);
        }
        // The workers apply the schema as they start, one migration after another: the
        // `logs` table comes long before the last of them.
        let migrations = logpipeline_core::db::MIGRATOR.iter().count();
        wait_until(
            "the workers apply every migration",
            Duration::from_secs(60),
            || {
                let applied = postgres
                    .psql(
                        "logs",
                        "select count(*) from _sqlx_migrations where success",
                    )
                    .ok();
                Ok(applied.and_then(|count| count.parse::<usize>().ok()) == Some(migrations))
            },
        )?;
        let api_env = Self::api_env(settings, &settings.api_env);
        let api = ApiProcess::start(&redis.url(), &services_database_url, &api_env)?;
        Ok(Self {
            api,
            workers,
            postgres,
            redis,
            standby,
            database_url,
            services_database_url,
            worker_envs,
        })
    }

    /// The `logs` database as the api and workers are given it (a multi-host URL with
    /// the standby), which follows a promotion.
    pub fn services_database_url(&self) -> &str {
        &self.services_database_url
    }

    /// `sql`'s output in the `logs` database of whichever server is the primary now.
    pub fn psql_logs(&self, sql: &str) -> Result<String> {
        match (self.postgres.psql("logs", sql), &self.standby) {
            (Err(_), Some(standby)) => standby.psql("logs", sql),
            (answer, _) => answer,
        }
    }

    /// Kills worker `index` at once (SIGKILL), mid-batch.
    pub fn kill_worker(&mut self, index: usize) -> Result<()> {
        self.workers[index]
            .process()
            .stop_with(nix::sys::signal::Signal::SIGKILL, Duration::from_secs(20))?;
        Ok(())
    }

    /// Starts worker `index` again, under its consumer name: it resumes the entries it
    /// had read and not acknowledged.
    pub fn start_worker_again(&mut self, index: usize) -> Result<()> {
        self.workers[index] = WorkerProcess::start_on(
            self.workers[index].metrics_port(),
            &self.redis.url(),
            &self.services_database_url,
            &self.worker_envs[index],
        )?;
        Ok(())
    }

    /// Switches PostgreSQL over to its standby: the primary stops (a fast shutdown,
    /// which sends the standby all it wrote) and the standby is promoted; the services
    /// follow it through their multi-host URL. Fails without a standby.
    pub fn switch_postgres_over(&mut self) -> Result<()> {
        let standby = self.standby.as_ref().context("PostgreSQL has no standby")?;
        self.postgres.stop()?;
        standby.promote()
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

    /// The api's environment: the Redis settings, the stream capacity, then `extra`.
    fn api_env(settings: &StackSettings, extra: &Env) -> Env {
        let mut env = Self::redis_env(settings);
        env.insert(
            "LOGPIPELINE_STREAM_CAPACITY".into(),
            settings.stream_capacity.to_string(),
        );
        env.extend(extra.clone());
        env
    }

    /// What the api and the workers both need of Redis: the shards, and whether it is a
    /// cluster.
    fn redis_env(settings: &StackSettings) -> Env {
        Env::from([
            (
                "LOGPIPELINE_STREAM_SHARDS".into(),
                settings.stream_shards.to_string(),
            ),
            (
                "LOGPIPELINE_REDIS_CLUSTER".into(),
                (settings.redis_cluster_masters > 0).to_string(),
            ),
        ])
    }

    /// Empties the `logs` table, so every run starts from the same state (the
    /// workers are idle between runs).
    pub fn truncate(&self) -> Result<()> {
        self.postgres.psql("logs", "truncate logs")?;
        self.postgres.psql("logs", "checkpoint")?;
        Ok(())
    }

    /// The process ids of each part of the stack by name: `api`, `worker`, `redis` (each
    /// master), `replica`, `postgres` and `standby` (the postmasters; their children are
    /// counted with them).
    pub async fn pids(&mut self) -> Result<Vec<(&'static str, u32)>> {
        let mut pids = vec![("api", self.api.process().pid())];
        for worker in &mut self.workers {
            pids.push(("worker", worker.process().pid()));
        }
        for node in self.redis.nodes() {
            let server = server_info(node).await?;
            let role = if server.master { "redis" } else { "replica" };
            pids.push((role, server.pid));
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

    /// Connections to each Redis master.
    pub async fn redis_masters(&self) -> Result<Vec<MultiplexedConnection>> {
        let mut masters = Vec::new();
        for node in self.redis.nodes() {
            if server_info(node).await?.master {
                masters.push(connect(node).await?);
            }
        }
        Ok(masters)
    }
}

/// The Redis a benchmark runs on.
pub enum BenchRedis {
    /// One server, then its replica when asked for.
    Single(Vec<RedisServer>),
    /// A Redis Cluster.
    Cluster(RedisCluster),
}

impl BenchRedis {
    /// The URL the services are given: the server's, or every node's, comma-separated.
    pub fn url(&self) -> String {
        match self {
            Self::Single(servers) => servers[0].url(),
            Self::Cluster(cluster) => cluster.url(),
        }
    }

    /// Whether it is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// Kills the master that holds `key` at once (SIGKILL): the one server, or on a
    /// cluster the master of the key's slot, whose replica then takes over. Returns the
    /// node, for [`start_again`](Self::start_again).
    pub fn kill_master_of(&mut self, key: &str) -> Result<usize> {
        match self {
            Self::Single(servers) => servers[0].kill().map(|()| 0),
            Self::Cluster(cluster) => {
                let index = cluster.master_of(key)?;
                cluster.kill(index)?;
                Ok(index)
            }
        }
    }

    /// Starts node `index` again after [`kill_master_of`](Self::kill_master_of), from
    /// its append-only file; a cluster's node rejoins as a replica.
    pub fn start_again(&mut self, index: usize) -> Result<()> {
        match self {
            Self::Single(servers) => servers[index].start_again(),
            Self::Cluster(cluster) => cluster.restart(index),
        }
    }

    /// Every server: masters and replicas.
    fn nodes(&self) -> Vec<&RedisServer> {
        match self {
            Self::Single(servers) => servers.iter().collect(),
            Self::Cluster(cluster) => cluster.nodes().iter().collect(),
        }
    }
}

/// A connection to one Redis server.
async fn connect(redis: &RedisServer) -> Result<MultiplexedConnection> {
    redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")
}

/// What a Redis server says of itself.
struct ServerInfo {
    pid: u32,
    master: bool,
}

/// The process id and role `redis` reports.
async fn server_info(redis: &RedisServer) -> Result<ServerInfo> {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .arg("replication")
        .query_async(&mut connect(redis).await?)
        .await?;
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    Ok(ServerInfo {
        pid: field("process_id")
            .and_then(|pid| pid.parse().ok())
            .context("Redis INFO has no process_id")?,
        master: field("role") == Some("master"),
    })
}

//! A whole LogPipeline on this machine for a test: Redis, a PostgreSQL database, the api
//! and workers, each a real process, plus clients to look inside.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use logpipeline_local::auth::{ApiKey, keys_file};
use logpipeline_local::postgres::{self, PostgresServer};
use logpipeline_local::redis::{RedisOptions, RedisServer};
use logpipeline_local::services::{ApiProcess, Env, WorkerProcess, binaries_dir};

/// A running stack. Everything stops when it is dropped.
pub struct Stack {
    /// The api, if started.
    pub api: Option<ApiProcess>,
    /// The workers started, in order.
    pub workers: Vec<WorkerProcess>,
    /// Its own PostgreSQL server, when the test needs to stop it.
    pub postgres: Option<PostgresServer>,
    /// Its Redis server.
    pub redis: RedisServer,
    database_url: String,
    api_env: Env,
    worker_env: Env,
}

/// How to start a [`Stack`].
#[derive(Debug, Clone, Default)]
pub struct StackBuilder {
    own_postgres: bool,
    redis: RedisOptions,
    api: bool,
    workers: usize,
    api_env: Env,
    worker_env: Env,
    api_keys: Option<String>,
}

impl StackBuilder {
    /// Runs a PostgreSQL server of its own (to stop and start it) instead of a database
    /// on the shared one.
    pub fn own_postgres(mut self) -> Self {
        self.own_postgres = true;
        self
    }

    /// Starts Redis with these options.
    pub fn redis(mut self, options: RedisOptions) -> Self {
        self.redis = options;
        self
    }

    /// Starts the api.
    pub fn api(mut self) -> Self {
        self.api = true;
        self
    }

    /// Starts `count` workers.
    pub fn workers(mut self, count: usize) -> Self {
        self.workers = count;
        self
    }

    /// Sets an environment variable of the api.
    pub fn api_env(mut self, name: &str, value: impl ToString) -> Self {
        self.api_env.insert(name.into(), value.to_string());
        self
    }

    /// Requires API keys, these (`LOGPIPELINE_AUTH=keys` with a keys file of them).
    pub fn api_keys(mut self, keys: &[&ApiKey]) -> Self {
        self.api_keys = Some(keys_file(keys));
        self
    }

    /// Sets an environment variable of every worker.
    pub fn worker_env(mut self, name: &str, value: impl ToString) -> Self {
        self.worker_env.insert(name.into(), value.to_string());
        self
    }

    /// Starts it all.
    pub fn start(mut self) -> Result<Stack> {
        let redis = RedisServer::start_with(self.redis)?;
        if let Some(keys) = &self.api_keys {
            // In Redis's directory, which lives as long as the stack.
            let path = redis.dir().join("api-keys.yaml");
            std::fs::write(&path, keys)?;
            self.api_env
                .insert("LOGPIPELINE_AUTH".into(), "keys".into());
            self.api_env.insert(
                "LOGPIPELINE_API_KEYS_FILE".into(),
                path.display().to_string(),
            );
        }
        let (postgres, database_url) = if self.own_postgres {
            let server = PostgresServer::start()?;
            let url = server.create_database()?;
            (Some(server), url)
        } else {
            (None, postgres::fresh_database()?)
        };
        let mut stack = Stack {
            api: None,
            workers: Vec::new(),
            postgres,
            redis,
            database_url,
            api_env: self.api_env,
            worker_env: self.worker_env,
        };
        if self.api {
            stack.start_api()?;
        }
        for _ in 0..self.workers {
            stack.start_worker(&Env::new())?;
        }
        Ok(stack)
    }
}

/// The hot window of a stack's workers unless a test sets one: longer than any test, so
/// that tests which check what is stored by reading `logs` find every row there. The
/// tests of compaction (`chunks.rs`) set their own.
const HOT_WINDOW: &str = "24h";

impl Stack {
    /// How to start one.
    pub fn builder() -> StackBuilder {
        StackBuilder::default().worker_env("LOGPIPELINE_HOT_WINDOW", HOT_WINDOW)
    }

    /// Starts (or restarts) the api.
    pub fn start_api(&mut self) -> Result<&mut ApiProcess> {
        let api = ApiProcess::start(&self.redis.url(), &self.database_url, &self.api_env)?;
        Ok(self.api.insert(api))
    }

    /// SIGKILLs the api and starts it again on the same HTTP and gRPC ports, as a
    /// crashed pod comes back behind its Service.
    pub fn kill_and_restart_api(&mut self) -> Result<&mut ApiProcess> {
        let mut api = self.api.take().context("the api is not running")?;
        let (port, grpc_port) = (api.port(), api.grpc_port());
        api.process().kill();
        drop(api);
        let mut env = self.api_env.clone();
        env.insert(
            "LOGPIPELINE_GRPC_LISTEN".into(),
            format!("127.0.0.1:{grpc_port}"),
        );
        let api = ApiProcess::start_on(port, &self.redis.url(), &self.database_url, &env)?;
        Ok(self.api.insert(api))
    }

    /// Starts one more worker, with `env` over the stack's worker settings. Each worker
    /// gets a distinct consumer name unless `env` names one.
    pub fn start_worker(&mut self, env: &Env) -> Result<&mut WorkerProcess> {
        let mut settings = self.worker_env.clone();
        settings
            .entry("LOGPIPELINE_CONSUMER_NAME".into())
            .or_insert_with(|| format!("worker{}", self.workers.len()));
        settings.extend(env.clone());
        let worker = WorkerProcess::start(&self.redis.url(), &self.database_url, &settings)?;
        self.workers.push(worker);
        self.workers.last_mut().context("no worker")
    }

    /// The api's base URL.
    pub fn api_url(&self) -> Result<String> {
        Ok(self.api.as_ref().context("the api is not running")?.url())
    }

    /// Runs `logpipeline-worker admin <args>` against the stack's Redis and PostgreSQL:
    /// whether it succeeded, and what it printed (stdout and stderr).
    pub fn worker_admin(&self, args: &[&str]) -> Result<(bool, String)> {
        let output = std::process::Command::new(binaries_dir()?.join("logpipeline-worker"))
            .arg("admin")
            .args(args)
            .env("REDIS_URL", self.redis.url())
            .env("DATABASE_URL", &self.database_url)
            .output()?;
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok((output.status.success(), printed))
    }

    /// Redis's URL.
    pub fn redis_url(&self) -> String {
        self.redis.url()
    }

    /// The database's URL.
    pub fn database_url(&self) -> &str {
        &self.database_url
    }

    /// A small pool on the database, for assertions.
    pub async fn pool(&self) -> Result<PgPool> {
        Ok(PgPoolOptions::new()
            .max_connections(2)
            .connect(&self.database_url)
            .await?)
    }

    /// Waits until the workers have stored and acknowledged every entry of the stream:
    /// the consumer group has nothing left to deliver and nothing pending. What is in
    /// PostgreSQL then is all that will ever be.
    pub async fn wait_until_drained(&self, timeout: Duration) -> Result<()> {
        let redis = self.redis().await?;
        eventually("the stream is drained", timeout, || {
            let mut redis = redis.clone();
            async move {
                let groups: Vec<std::collections::HashMap<String, redis::Value>> =
                    redis::cmd("XINFO")
                        .arg("GROUPS")
                        .arg("logs:stream")
                        .query_async(&mut redis)
                        .await?;
                let number =
                    |group: &std::collections::HashMap<String, redis::Value>, key| match group
                        .get(key)
                    {
                        Some(redis::Value::Int(value)) => Some(*value),
                        _ => None,
                    };
                Ok(!groups.is_empty()
                    && groups.iter().all(|group| {
                        number(group, "pending") == Some(0) && number(group, "lag") == Some(0)
                    }))
            }
        })
        .await
    }

    /// Waits until a worker reads the stream: a consumer has joined the group. A worker
    /// still starting (its schema run, its connections) on a busy machine may take
    /// longer than a test's wait for one batch should; the error ends with the worker's
    /// last lines.
    pub async fn wait_until_a_worker_reads(&self, timeout: Duration) -> Result<()> {
        let redis = self.redis().await?;
        eventually("the worker reads the stream", timeout, || {
            let mut redis = redis.clone();
            async move { Ok(crate::stream::consumer_count(&mut redis).await > 0) }
        })
        .await
        .map_err(|error| anyhow::anyhow!("{error}{}", self.worker_log()))
    }

    /// A connection to Redis, for assertions.
    pub async fn redis(&self) -> Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.redis.url())?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// The first worker's last log lines, newest first, to explain a wait that timed
    /// out: text to append to the error.
    pub fn worker_log(&self) -> String {
        let log = self
            .workers
            .first()
            .and_then(|worker| std::fs::read_to_string(worker.log_path()).ok())
            .unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        format!(
            "; the worker's last lines, newest first:\n{}",
            tail.join("\n")
        )
    }
}

/// Waits until a service has applied the whole schema to `pool`'s database: every
/// migration and every query index. A test that queries, locks or alters `logs` sooner
/// races the later migrations.
pub async fn wait_for_schema(pool: &PgPool) -> Result<()> {
    eventually("the schema is applied", Duration::from_secs(60), || async {
        Ok(logpipeline_core::db::is_migrated(pool)
            .await
            .unwrap_or(false))
    })
    .await
}

/// Waits until `query` (a single `bigint`) returns `expected`, up to `timeout`; returns
/// how long it took.
pub async fn wait_for_count(
    pool: &PgPool,
    query: &str,
    expected: i64,
    timeout: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    let mut last = None;
    while started.elapsed() < timeout {
        match sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(query))
            .fetch_one(pool)
            .await
        {
            Ok(count) if count == expected => return Ok(started.elapsed()),
            Ok(count) => last = Some(count),
            // The worker may not have created the table yet.
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("after {timeout:?}, `{query}` gives {last:?}, not {expected}")
}

/// Polls `check` every 50 ms until it is true, failing after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let started = Instant::now();
    let mut last_error = None;
    while started.elapsed() < timeout {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(error) => last_error = Some(error),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match last_error {
        Some(error) => Err(error.context(format!("timed out after {timeout:?}: {what}"))),
        None => bail!("timed out after {timeout:?}: {what}"),
    }
}

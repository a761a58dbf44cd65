//! End-to-end mode: watching PostgreSQL and the stream while the load runs, and checking
//! every row of the run at the end.
//!
//! Counting a run's rows with `log_data @> '{"run": …}'` reads every row of the run, so
//! polling it each second would cost more as the run grows. Instead each poll reads the
//! counters the workers keep in the same transactions as their inserts (`log_counts`, a
//! few hundred rows), so what it shows is exactly what is committed: the logs stored
//! since the watch began, of this run and of any other traffic alike (a benchmark has the
//! pipeline to itself). The exact figure of the run comes from the final check, which
//! reads the run's rows. The backlog is `XINFO GROUPS` of every shard of the stream,
//! added up: lag (not yet delivered) and pending (delivered, not acknowledged). Workers
//! acknowledge after commit, so lag and pending both 0 means everything accepted is in
//! PostgreSQL.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::TryStreamExt;
use logpipeline_core::chunk::block::{Block, Column};
use logpipeline_core::config::{DatabaseArgs, RedisArgs};
use logpipeline_core::connection::{Redis, RedisTarget};
use logpipeline_core::stream::Shards;
use redis::streams::StreamInfoGroupsReply;
use sqlx::PgPool;

use super::ledger::{Ledger, Verdict};

/// The consumer group's backlog.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    /// Entries not yet delivered to the group, when Redis can tell.
    pub lag: Option<u64>,
    /// Entries delivered and not acknowledged.
    pub pending: u64,
}

impl Backlog {
    /// Whether every entry has been delivered and acknowledged.
    pub fn is_empty(&self) -> bool {
        self.lag == Some(0) && self.pending == 0
    }
}

/// A stream entry id, `<ms>-<seq>`, in the order Redis gives them.
fn entry_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Logs stored and counted, all tenants and partitions.
async fn stored(pool: &PgPool) -> Result<i64> {
    Ok(
        sqlx::query_scalar::<_, Option<i64>>("select sum(count)::bigint from log_count_totals")
            .fetch_one(pool)
            .await?
            .unwrap_or(0),
    )
}

/// Watches a run's rows and the stream's backlog.
pub struct Watch {
    pool: PgPool,
    redis: Redis,
    shards: Vec<String>,
    group: String,
    run: String,
    /// Logs counted when the watch began.
    counted_at_start: i64,
    persisted: u64,
    polls: u64,
    poll_time: Duration,
    slowest_poll: Duration,
}

/// The stream a watch reads: its key, its shards, and whether it is on a Redis Cluster.
#[derive(Debug, Clone, Copy)]
pub struct StreamKeys<'a> {
    /// The stream's key (`--stream`).
    pub name: &'a str,
    /// Its shards (`--stream-shards`).
    pub shards: u32,
    /// Whether the Redis URL names nodes of a Redis Cluster.
    pub cluster: bool,
}

/// What one poll saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// Rows of the run counted so far.
    pub persisted: u64,
    /// The backlog now.
    pub backlog: Backlog,
}

/// What watching cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WatchCost {
    /// Polls made.
    pub polls: u64,
    /// Mean duration of a poll, in milliseconds.
    pub mean_ms: f64,
    /// Slowest poll, in milliseconds.
    pub max_ms: f64,
}

impl Watch {
    /// Connects to the pipeline's database and Redis (a Redis Cluster when
    /// `stream.cluster`), to watch run `run` on the consumer group `group` of the stream's
    /// shards.
    pub async fn connect(
        database_url: &str,
        redis_url: &str,
        stream: &StreamKeys<'_>,
        group: &str,
        run: &str,
    ) -> Result<Self> {
        // A primary and its standby named together are followed across a promotion, as
        // the services follow them.
        let pool = logpipeline_core::db::lazy_pool_of(&DatabaseArgs::of_url(database_url, 2), 2)
            .context("the database URL")?;
        let target = RedisTarget::from_args(&RedisArgs::of_url(redis_url, stream.cluster))?;
        let redis = target
            .connect(Duration::from_secs(10))
            .await
            .context("connecting to Redis")?;
        let shards = if stream.cluster {
            Shards::on_cluster(stream.name, stream.shards)
        } else {
            Shards::new(stream.name, stream.shards)
        };
        let start = stored(&pool)
            .await
            .context("reading the log counters (has a worker created them?)")?;
        Ok(Self {
            pool,
            redis,
            shards: shards.keys().to_vec(),
            group: group.to_owned(),
            run: run.to_owned(),
            counted_at_start: start,
            persisted: 0,
            polls: 0,
            poll_time: Duration::ZERO,
            slowest_poll: Duration::ZERO,
        })
    }

    /// Counts the logs stored since the watch began and reads the backlog.
    pub async fn poll(&mut self) -> Result<Seen> {
        let started = Instant::now();
        let now = stored(&self.pool).await?;
        self.persisted = u64::try_from(now - self.counted_at_start).unwrap_or(0);
        let backlog = self.backlog().await?;
        let took = started.elapsed();
        self.polls += 1;
        self.poll_time += took;
        self.slowest_poll = self.slowest_poll.max(took);
        Ok(Seen {
            persisted: self.persisted,
            backlog,
        })
    }

    async fn backlog(&mut self) -> Result<Backlog> {
        let mut total = Backlog {
            lag: Some(0),
            pending: 0,
        };
        for shard in &self.shards {
            let reply: StreamInfoGroupsReply = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(shard)
                .query_async(&mut self.redis)
                .await
                .with_context(|| format!("XINFO GROUPS {shard}"))?;
            let group = reply
                .groups
                .into_iter()
                .find(|group| group.name == self.group)
                .with_context(|| format!("stream {shard} has no group {}", self.group))?;
            // A group that has been delivered the last entry added has no lag, whatever
            // it says: after a failover, its count of entries read can be behind.
            let info: std::collections::HashMap<String, redis::Value> = redis::cmd("XINFO")
                .arg("STREAM")
                .arg(shard)
                .query_async(&mut self.redis)
                .await
                .with_context(|| format!("XINFO STREAM {shard}"))?;
            let last_added = match info.get("last-generated-id") {
                Some(redis::Value::BulkString(id)) => entry_id(&String::from_utf8_lossy(id)),
                _ => None,
            };
            let lag = match (entry_id(&group.last_delivered_id), last_added) {
                (Some(delivered), Some(added)) if delivered >= added => Some(0),
                _ => group.lag,
            };
            total.lag = total.lag.zip(lag).map(|(sum, lag)| sum + lag as u64);
            total.pending += group.pending as u64;
        }
        Ok(total)
    }

    /// What the polls cost so far.
    pub fn cost(&self) -> WatchCost {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        WatchCost {
            polls: self.polls,
            mean_ms: if self.polls == 0 {
                0.0
            } else {
                ms(self.poll_time) / self.polls as f64
            },
            max_ms: ms(self.slowest_poll),
        }
    }

    /// Reads every row of the run (through the GIN index on `log_data`) into `ledger`
    /// and returns its verdict. OTLP logs carry the marks among their attributes.
    pub async fn verify(&self, mut ledger: Ledger) -> Result<Verdict> {
        let run = serde_json::json!({ "run": self.run });
        let otlp_run = serde_json::json!({ "attributes": { "run": self.run } });
        // One snapshot for rows and chunks: compaction moving rows into chunks between
        // two reads would otherwise show them twice.
        let mut snapshot = self.pool.begin().await?;
        sqlx::query("set transaction isolation level repeatable read, read only")
            .execute(&mut *snapshot)
            .await?;
        let mut rows = sqlx::query_as::<_, (Option<i64>, Option<i64>)>(
            "select coalesce(log_data->>'device', log_data->'attributes'->>'device')::bigint, \
                    coalesce(log_data->>'seq', log_data->'attributes'->>'seq')::bigint \
             from logs where log_data @> $1 or log_data @> $2",
        )
        .bind(run)
        .bind(otlp_run)
        .fetch(&mut *snapshot);
        while let Some((device, seq)) = rows.try_next().await? {
            ledger.row(device, seq);
        }
        drop(rows);
        // Logs compacted during the run are in chunks: every block is read, and each
        // log of the run in it is counted as a row is.
        let mut blocks =
            sqlx::query_scalar::<_, Vec<u8>>("select block from log_chunks").fetch(&self.pool);
        while let Some(bytes) = blocks.try_next().await? {
            let block = Block::parse(&bytes)?;
            let log_data = block.texts(Column::LogData)?;
            for index in 0..block.rows() {
                let Some(text) = log_data.get(index)? else {
                    continue;
                };
                let log_data: serde_json::Value = serde_json::from_str(text)?;
                // Sent over OTLP, the numbers are among the attributes.
                let numbered = log_data
                    .get("attributes")
                    .filter(|attributes| attributes.get("run").is_some())
                    .unwrap_or(&log_data);
                if numbered.get("run").and_then(serde_json::Value::as_str) == Some(&self.run) {
                    let number = |name| numbered.get(name).and_then(serde_json::Value::as_i64);
                    ledger.row(number("device"), number("seq"));
                }
            }
        }
        Ok(ledger.verdict())
    }
}

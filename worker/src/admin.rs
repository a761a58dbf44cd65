//! `logpipeline-worker admin …`: the operations on the stream an operator needs, as
//! commands, so nobody types stream ids into `redis-cli` in production.
//!
//! - `stream`: the stream, its group, consumers and pending entries, the dead letters;
//! - `dead-letters list`: the dead letters with their reasons;
//! - `dead-letters replay [--dry-run]`: moves dead letters back onto the stream once
//!   their cause is fixed;
//! - `consumers delete <name>`: removes a consumer that is gone for good.
//!
//! They use the same settings (`REDIS_URL`, `LOGPIPELINE_STREAM`, …) as the worker, so in
//! Kubernetes `kubectl exec deploy/<pipeline>-worker -- logpipeline-worker admin stream`
//! needs no arguments.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use clap::{Args, Subcommand};
use logpipeline_core::codec;
use redis::Value;
use serde::Serialize;

use crate::stream::{field_map, read_group_info, text};
use logpipeline_core::config::RedisArgs;
use logpipeline_core::connection::{Redis, RedisTarget};

/// Operations on the stream.
#[derive(Debug, Clone, Subcommand)]
pub enum Admin {
    /// Shows the stream, the consumer group, its consumers and pending entries, and the
    /// dead-letter stream.
    Stream {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The dead-letter stream.
    #[command(subcommand)]
    DeadLetters(DeadLetters),
    /// The consumers of the group.
    #[command(subcommand)]
    Consumers(Consumers),
    /// Moves into chunks, now, every stored log whose stream entry can no longer be
    /// delivered and that is older than `--older-than`, merges small chunks, and prints
    /// what it did with the disk taken before and after (docs/storage.md). Uses
    /// `DATABASE_URL` too. The workers do the same on their own every
    /// `LOGPIPELINE_COMPACT_EVERY_SECS`.
    Compact {
        /// Only logs received longer ago than this (`0s`: every log the stream allows);
        /// the hot window (`LOGPIPELINE_HOT_WINDOW`) by default.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<Duration>,
    },
}

/// Operations on dead letters.
#[derive(Debug, Clone, Subcommand)]
pub enum DeadLetters {
    /// Lists dead letters, oldest first, with the reason each was set aside.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        count: usize,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Moves dead letters back onto the stream, oldest first, for the workers to store
    /// again: run it once their cause is fixed. Each goes back as it was accepted (same
    /// logs, same receive time) under a new entry id, and leaves the dead-letter stream
    /// in the same step. Entries this worker cannot decode stay where they are.
    Replay(Replay),
}

/// What to replay.
#[derive(Debug, Clone, Args)]
pub struct Replay {
    /// Only show what would be replayed.
    #[arg(long)]
    pub dry_run: bool,
    /// At most this many.
    #[arg(long, default_value_t = 1000)]
    pub count: usize,
    /// Only these dead-letter entries (ids of the dead-letter stream).
    #[arg(long = "id")]
    pub ids: Vec<String>,
}

/// Operations on consumers.
#[derive(Debug, Clone, Subcommand)]
pub enum Consumers {
    /// Removes a consumer whose worker is gone for good. Refuses while it holds pending
    /// entries: live workers claim those once they have been idle for
    /// `LOGPIPELINE_CLAIM_IDLE_MS`; run it again then.
    Delete {
        /// The consumer's name, as `admin stream` shows it.
        name: String,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Redis refused or is unreachable.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The command cannot be done as asked.
    #[error("{0}")]
    Refused(String),
}

/// An entry's fields as Redis returns them.
type Fields = Vec<(String, Vec<u8>)>;

/// Moves a dead letter back onto the stream and off the dead-letter stream, atomically.
/// KEYS: stream, dead-letter stream. ARGV: dead letter id, then the entry's fields.
const REPLAY: &str = r"
if redis.call('XDEL', KEYS[2], ARGV[1]) == 0 then
    return false
end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
";

/// Runs `command` against `target` on the Redis (or Redis Cluster) `redis` names;
/// returns what to print.
pub async fn run(redis: &RedisArgs, target: Target, command: &Admin) -> Result<String, AdminError> {
    let mut redis = RedisTarget::from_args(redis)
        .map_err(|error| AdminError::Refused(error.to_string()))?
        .connect(Duration::from_secs(10))
        .await?;
    match command {
        Admin::Stream { json } => {
            let report = target.report(&mut redis).await?;
            Ok(if *json {
                to_json(&report)
            } else {
                report.to_string()
            })
        }
        Admin::DeadLetters(DeadLetters::List { count, json }) => {
            let letters = target.dead_letters(&mut redis, *count).await?;
            Ok(if *json {
                to_json(&letters)
            } else {
                letters.iter().map(|letter| format!("{letter}\n")).collect()
            })
        }
        Admin::DeadLetters(DeadLetters::Replay(replay)) => target.replay(&mut redis, replay).await,
        Admin::Consumers(Consumers::Delete { name }) => {
            target.delete_consumer(&mut redis, name).await
        }
        Admin::Compact { .. } => Err(AdminError::Refused(
            "compact works on PostgreSQL too: run it through the worker's command".into(),
        )),
    }
}

fn to_json(value: &impl Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default() + "\n"
}

/// The keys the commands work on.
#[derive(Debug, Clone)]
pub struct Target {
    /// The stream of accepted logs.
    pub stream: String,
    /// The workers' consumer group.
    pub group: String,
    /// The dead-letter stream.
    pub dead: String,
}

/// What `admin stream` shows.
#[derive(Debug, Serialize)]
pub struct Report {
    pub stream: String,
    pub length: u64,
    pub group: String,
    /// Entries not yet delivered (absent when Redis cannot tell).
    pub lag: Option<u64>,
    pub pending: u64,
    pub oldest_pending_id: Option<String>,
    pub oldest_pending_age_secs: u64,
    pub consumers: Vec<Consumer>,
    pub dead_letter_stream: String,
    pub dead_letters: u64,
}

/// One consumer of the group.
#[derive(Debug, Serialize)]
pub struct Consumer {
    pub name: String,
    /// Entries it holds unacknowledged.
    pub pending: u64,
    /// Milliseconds since it last read or claimed.
    pub idle_ms: u64,
}

/// One dead letter.
#[derive(Debug, Serialize)]
pub struct DeadLetter {
    /// Its id in the dead-letter stream.
    pub id: String,
    /// The entry's id in the stream it came from.
    pub source_id: String,
    pub reason: String,
    pub deliveries: String,
    pub consumer: String,
    /// How many logs it holds, when this worker can decode it.
    pub logs: Option<usize>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lag = self
            .lag
            .map_or_else(|| "unknown".to_owned(), |lag| lag.to_string());
        writeln!(f, "stream       {} ({} entries)", self.stream, self.length)?;
        writeln!(
            f,
            "group        {}: lag {lag}, pending {}",
            self.group, self.pending
        )?;
        if let Some(oldest) = &self.oldest_pending_id {
            writeln!(
                f,
                "oldest pending {oldest} ({} s old)",
                self.oldest_pending_age_secs
            )?;
        }
        writeln!(
            f,
            "dead letters {} in {}",
            self.dead_letters, self.dead_letter_stream
        )?;
        writeln!(f, "consumers    {}", self.consumers.len())?;
        for consumer in &self.consumers {
            writeln!(
                f,
                "  {:<40} pending {:>8}  idle {:>8} ms",
                consumer.name, consumer.pending, consumer.idle_ms
            )?;
        }
        Ok(())
    }
}

impl std::fmt::Display for DeadLetter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let logs = self
            .logs
            .map_or_else(|| "undecodable".to_owned(), |logs| format!("{logs} logs"));
        write!(
            f,
            "{}  from {}  {}  after {} deliveries on {}: {}",
            self.id, self.source_id, logs, self.deliveries, self.consumer, self.reason
        )
    }
}

impl Target {
    async fn report(&self, redis: &mut Redis) -> Result<Report, AdminError> {
        let length: u64 = redis::cmd("XLEN")
            .arg(&self.stream)
            .query_async(redis)
            .await?;
        let dead_letters: u64 = redis::cmd("XLEN")
            .arg(&self.dead)
            .query_async(redis)
            .await?;
        let info = read_group_info(redis, &self.stream, &self.group).await?;
        let consumers: Vec<Value> = if info.group_exists {
            redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&self.stream)
                .arg(&self.group)
                .query_async(redis)
                .await?
        } else {
            Vec::new()
        };
        let consumers = consumers
            .into_iter()
            .map(|consumer| {
                let fields: HashMap<String, Value> = field_map(consumer).into_iter().collect();
                let number = |key: &str| match fields.get(key) {
                    Some(Value::Int(n)) => u64::try_from(*n).unwrap_or(0),
                    _ => 0,
                };
                Consumer {
                    name: fields.get("name").and_then(text).unwrap_or_default(),
                    pending: number("pending"),
                    idle_ms: number("idle"),
                }
            })
            .collect();
        Ok(Report {
            stream: self.stream.clone(),
            length,
            group: self.group.clone(),
            lag: info.lag,
            pending: info.pending,
            oldest_pending_age_secs: info.oldest_pending_age(SystemTime::now()).as_secs(),
            oldest_pending_id: info.oldest_pending,
            consumers,
            dead_letter_stream: self.dead.clone(),
            dead_letters,
        })
    }

    async fn dead_letters(
        &self,
        redis: &mut Redis,
        count: usize,
    ) -> Result<Vec<DeadLetter>, AdminError> {
        Ok(self
            .dead_entries(redis, Some(count))
            .await?
            .into_iter()
            .map(|(letter, _)| letter)
            .collect())
    }

    /// Dead letters oldest first (at most `count`, or all), each with the fields of the
    /// entry as it was accepted.
    async fn dead_entries(
        &self,
        redis: &mut Redis,
        count: Option<usize>,
    ) -> Result<Vec<(DeadLetter, Fields)>, AdminError> {
        let mut range = redis::cmd("XRANGE");
        range.arg(&self.dead).arg("-").arg("+");
        if let Some(count) = count {
            range.arg("COUNT").arg(count);
        }
        let entries: Vec<(String, Fields)> = range.query_async(redis).await?;
        Ok(entries
            .into_iter()
            .map(|(id, fields)| {
                let field = |name: &str| {
                    fields
                        .iter()
                        .find(|(key, _)| key == name)
                        .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
                        .unwrap_or_default()
                };
                let original: Fields = fields
                    .iter()
                    .filter(|(key, _)| {
                        [
                            codec::FIELD_VERSION,
                            codec::FIELD_RECEIVED_AT,
                            codec::FIELD_LOGS,
                            codec::FIELD_TENANT,
                        ]
                        .contains(&key.as_str())
                    })
                    .cloned()
                    .collect();
                let as_bytes: Vec<(Vec<u8>, Vec<u8>)> = original
                    .iter()
                    .map(|(key, value)| (key.clone().into_bytes(), value.clone()))
                    .collect();
                let logs = codec::decode(&as_bytes).ok().map(|entry| entry.logs.len());
                let letter = DeadLetter {
                    source_id: field("source_id"),
                    reason: field("reason"),
                    deliveries: field("deliveries"),
                    consumer: field("consumer"),
                    logs,
                    id,
                };
                (letter, original)
            })
            .collect())
    }

    async fn replay(&self, redis: &mut Redis, replay: &Replay) -> Result<String, AdminError> {
        // Without ids, the oldest `count`; with ids, those among all dead letters.
        let scan = replay.ids.is_empty().then_some(replay.count);
        let mut out = String::new();
        let (mut moved, mut kept) = (0, 0);
        let script = redis::Script::new(REPLAY);
        for (letter, fields) in self.dead_entries(redis, scan).await? {
            if !replay.ids.is_empty() && !replay.ids.contains(&letter.id) {
                continue;
            }
            if moved + kept >= replay.count {
                break;
            }
            if letter.logs.is_none() {
                kept += 1;
                let _ = writeln!(out, "kept     {letter} (this worker cannot decode it)");
                continue;
            }
            if replay.dry_run {
                moved += 1;
                let _ = writeln!(out, "would replay {letter}");
                continue;
            }
            let mut invocation = script.key(&self.stream);
            invocation.key(&self.dead).arg(&letter.id);
            for (key, value) in &fields {
                invocation.arg(key).arg(value.as_slice());
            }
            let new_id: Option<String> = invocation.invoke_async(redis).await?;
            // None: replayed or removed by someone else meanwhile.
            if let Some(new_id) = new_id {
                moved += 1;
                let _ = writeln!(out, "replayed {letter} as {new_id}");
            }
        }
        let verb = if replay.dry_run {
            "would replay"
        } else {
            "replayed"
        };
        let _ = writeln!(out, "{verb} {moved}, kept {kept}");
        Ok(out)
    }

    async fn delete_consumer(&self, redis: &mut Redis, name: &str) -> Result<String, AdminError> {
        let report = self.report(redis).await?;
        let consumer = report
            .consumers
            .iter()
            .find(|consumer| consumer.name == name)
            .ok_or_else(|| {
                AdminError::Refused(format!("group {} has no consumer {name}", self.group))
            })?;
        if consumer.pending > 0 {
            return Err(AdminError::Refused(format!(
                "{name} still holds {} pending entries; live workers claim them once they have been idle for LOGPIPELINE_CLAIM_IDLE_MS (it has been {:.0?}); run this again then",
                consumer.pending,
                Duration::from_millis(consumer.idle_ms)
            )));
        }
        let _: u64 = redis::cmd("XGROUP")
            .arg("DELCONSUMER")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(name)
            .query_async(redis)
            .await?;
        Ok(format!("deleted consumer {name} of group {}\n", self.group))
    }
}

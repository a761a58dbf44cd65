//! Putting accepted logs on the Redis Stream, within its capacity, and once per
//! idempotency key.
//!
//! Requests do not call Redis one by one: they hand their entry to a few writer tasks,
//! each of which takes every entry waiting and adds them all with one script call (group
//! commit, as databases do with their log). Under load one call carries tens of entries,
//! which saves the api and Redis a round trip, a script invocation and two system calls
//! per request; an idle api still sends each entry at once. Every request is answered
//! only once Redis has its entry, as before.
//!
//! Each shard has writers of its own, so a shard whose Redis master is down or slow
//! holds up only the requests that go to it: the others' calls never wait behind its.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use logpipeline_core::codec;
pub use logpipeline_core::config::Replication;
use logpipeline_core::connection::Redis;
use logpipeline_core::stream::{MAX_SHARDS, Shards};
use logpipeline_core::tenant::Tenant;
use redis::Script;
use time::OffsetDateTime;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::error::{Error, Result};
use crate::idempotency::{self, IdempotencyKey};
use crate::metrics::Metrics;

/// Adds entries to the stream shard `KEYS[1]`, each unless the shard holds `ARGV[1]`
/// entries already or its idempotency record exists, atomically: the checks and the adds
/// are one script, so concurrent requests cannot overshoot the capacity, and an entry and
/// its idempotency record persist (AOF) and replicate together. The stream is never
/// trimmed here: only entries the workers have acknowledged are removed, by the workers.
///
/// Entry ids are the server's time in milliseconds and a sequence number that is the
/// shard's number `ARGV[3]` modulo `ARGV[4]` ([`MAX_SHARDS`]), counting up by `ARGV[4]`
/// within a millisecond: no two shards give the same id, and so no two logs the same key
/// in PostgreSQL. The last id given is kept in `KEYS[2]` (reading the stream's own costs
/// more); should the stream have a later one (added by an api from before shards), the
/// script reads that and goes on after it. A clock stepped back keeps the last id's
/// millisecond.
///
/// After `ARGV[1]` (capacity), `ARGV[2]` (seconds an idempotency record lives), `ARGV[3]`
/// and `ARGV[4]`, each entry is: the index in `KEYS` of its idempotency record (0 for
/// none), the record to write (`<micros> <fingerprint>`, after the entry id), the number of
/// its fields and values, then those. The reply holds, per entry, `{1, id}` when it was
/// added, `{0, record}` when its key was accepted before, or `{-1, ''}` when the shard is
/// full.
const ADMIT: &str = r"
local capacity = tonumber(ARGV[1])
local shard = tonumber(ARGV[3])
local step = tonumber(ARGV[4])
local length = redis.call('XLEN', KEYS[1])
local time = redis.call('TIME')
local ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local seq = shard
local function after(last)
    local last_ms, last_seq = string.match(last, '^(%d+)-(%d+)$')
    last_ms, last_seq = tonumber(last_ms), tonumber(last_seq)
    if last_ms >= ms then
        ms = last_ms
        seq = last_seq - last_seq % step + shard
        if seq <= last_seq then seq = seq + step end
    end
end
local function stream_last()
    local info = redis.call('XINFO', 'STREAM', KEYS[1])
    for j = 1, #info, 2 do
        if info[j] == 'last-generated-id' then return info[j + 1] end
    end
end
local last = redis.call('GET', KEYS[2])
if last then after(last) end
local results = {}
local added = nil
local i = 5
while i <= #ARGV do
    local key = tonumber(ARGV[i])
    local first = i + 3
    local final = first + tonumber(ARGV[i + 2]) - 1
    local prior = false
    if key > 0 then
        prior = redis.call('GET', KEYS[key])
    end
    if prior then
        results[#results + 1] = {0, prior}
    elseif length >= capacity then
        results[#results + 1] = {-1, ''}
    else
        local id = string.format('%d-%d', ms, seq)
        local reply = redis.pcall('XADD', KEYS[1], id, unpack(ARGV, first, final))
        if type(reply) == 'table' and reply.err then
            after(stream_last())
            id = string.format('%d-%d', ms, seq)
            redis.call('XADD', KEYS[1], id, unpack(ARGV, first, final))
        end
        added = id
        seq = seq + step
        length = length + 1
        if key > 0 then
            redis.call('SET', KEYS[key], id .. ' ' .. ARGV[i + 1], 'EX', ARGV[2])
        end
        results[#results + 1] = {1, id}
    end
    i = final + 1
end
if added then redis.call('SET', KEYS[2], added) end
return results
";

/// Writer tasks, each with one script call in flight at a time.
pub const WRITERS: usize = 2;
/// Most entries one script call adds.
const MAX_ENTRIES_PER_CALL: usize = 128;
/// Entries waiting for a writer before requests wait to hand theirs over.
const WAITING: usize = 4096;

/// Where an entry stands after [`Queue::publish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    /// The entry holding the logs.
    pub entry_id: String,
    /// When the api received them: now, or for a repeated request the first time.
    pub received_at: OffsetDateTime,
    /// Whether a request with the same idempotency key was accepted before, which this
    /// answer repeats.
    pub duplicate: bool,
}

/// Where a [`Queue`] puts entries, and when it calls them accepted.
#[derive(Debug, Clone)]
pub struct Settings<'a> {
    /// The stream's shards.
    pub shards: &'a Shards,
    /// Most entries each shard holds.
    pub capacity: u64,
    /// How long an idempotency key is remembered.
    pub idempotency_window: Duration,
    /// Replicas that must hold an entry too; none when the primary's copy is enough.
    pub replication: Option<Replication>,
}

/// The stream accepted logs go to.
#[derive(Clone)]
pub struct Queue {
    shards: Arc<Shards>,
    capacity: u64,
    idempotency_window_secs: u64,
    replication: Option<Replication>,
    redis: Redis,
    /// Each shard's writers take its entries from here.
    waiting: Arc<[mpsc::Sender<Pending>]>,
    /// With replication: how many replicas each shard's master had in sync at its last
    /// check ([`watch_replicas`]).
    in_sync: Arc<[AtomicU32]>,
}

/// How often the api asks each shard's master how many replicas it has in sync.
const CHECK_REPLICAS_EVERY: Duration = Duration::from_secs(1);

/// An entry handed to the writers, and where its outcome goes.
struct Pending {
    /// Its fields and values, as [`codec::encode`] makes them.
    fields: Vec<(&'static str, Vec<u8>)>,
    /// Its idempotency record's key and what to write there, when it has one.
    idempotency: Option<(String, String)>,
    outcome: oneshot::Sender<Result<Outcome, redis::RedisError>>,
}

/// What the script did with one entry.
enum Outcome {
    Added(String),
    AcceptedBefore(String),
    Full,
}

impl Queue {
    /// A queue as `settings` say, which answers through `redis` and starts, for each
    /// shard, a writer task on each of `writers`. With replication each writer of a shard
    /// needs a connection of its own, since `WAIT` holds up the connection it is sent on
    /// (the writers of different shards take turns with them).
    pub fn new(
        redis: Redis,
        writers: Vec<Redis>,
        settings: Settings<'_>,
        metrics: Metrics,
    ) -> Self {
        let (senders, receivers): (Vec<_>, Vec<_>) = (0..settings.shards.count())
            .map(|_| mpsc::channel(WAITING))
            .unzip();
        let queue = Self {
            shards: Arc::new(settings.shards.clone()),
            capacity: settings.capacity,
            idempotency_window_secs: settings.idempotency_window.as_secs().max(1),
            replication: settings.replication,
            redis,
            waiting: senders.into(),
            in_sync: (0..settings.shards.count())
                .map(|_| AtomicU32::new(u32::MAX))
                .collect(),
        };
        if let Some(replication) = settings.replication {
            tokio::spawn(watch_replicas(queue.clone(), replication));
        }
        let script = Arc::new(Script::new(ADMIT));
        for (shard, receiver) in receivers.into_iter().enumerate() {
            let receiver = Arc::new(Mutex::new(receiver));
            for connection in &writers {
                tokio::spawn(write(
                    queue.clone(),
                    shard,
                    connection.clone(),
                    receiver.clone(),
                    script.clone(),
                    metrics.clone(),
                ));
            }
        }
        queue
    }

    /// Appends one entry holding `logs_json` (a JSON array of valid logs of `tenant`, the
    /// first of `device`) to the shard of `tenant` and `device`, and returns its id once
    /// Redis has it. With an idempotency `key`, a request whose key
    /// was accepted within the window is not added again: the answer is the first
    /// entry's, marked duplicate, if `logs_json` is the same as then
    /// ([`Error::IdempotencyKeyReused`] if not).
    ///
    /// A failure says whether the entry is refused for certain ([`Error::QueueUnavailable`]:
    /// Redis answered with an error, or could not be reached) or may have been added
    /// ([`Error::OutcomeUnknown`]: the command was sent and no answer came in time, or the
    /// connection broke before it). Redis runs a command it has received even after the
    /// client gave up waiting, so only the first kind is safe to retry without a key.
    pub async fn publish(
        &self,
        received_at: OffsetDateTime,
        tenant: &Tenant,
        device: &str,
        logs_json: &[u8],
        key: Option<&IdempotencyKey>,
    ) -> Result<Admission> {
        let shard = self.shards.of(tenant.as_str(), device);
        if let Some(replication) = self.replication {
            let in_sync = self.in_sync[shard].load(Ordering::Relaxed);
            if in_sync < replication.replicas {
                return Err(Error::ReplicasMissing {
                    required: replication.replicas,
                    in_sync,
                });
            }
        }
        let fields = codec::encode(received_at, tenant, logs_json)
            .into_iter()
            .map(|(name, value)| (name, value.as_bytes().to_vec()))
            .collect();
        let fingerprint = key.map(|_| idempotency::fingerprint(logs_json));
        let idempotency = key.zip(fingerprint.as_ref()).map(|(key, fingerprint)| {
            (
                key.redis_key(&self.shards.keys()[shard], tenant),
                format!("{} {fingerprint}", codec::unix_micros(received_at)),
            )
        });
        let (outcome, answer) = oneshot::channel();
        let pending = Pending {
            fields,
            idempotency,
            outcome,
        };
        if self.waiting[shard].send(pending).await.is_err() {
            return Err(Error::Internal("the queue's writers stopped".into()));
        }
        let outcome = answer
            .await
            .map_err(|_| Error::Internal("the queue's writer went away".into()))?;
        match outcome.map_err(|error| failed(error, key.is_some()))? {
            Outcome::Added(entry_id) => Ok(Admission {
                entry_id,
                received_at,
                duplicate: false,
            }),
            Outcome::AcceptedBefore(record) => {
                let first =
                    idempotency::replay(&record, fingerprint.as_deref().unwrap_or_default())?;
                Ok(Admission {
                    entry_id: first.entry_id,
                    received_at: first.received_at,
                    duplicate: true,
                })
            }
            Outcome::Full => Err(Error::Backpressure {
                capacity: self.capacity,
            }),
        }
    }

    /// The stream's shards.
    pub fn shards(&self) -> &Shards {
        &self.shards
    }

    /// With replicated acceptance, the shards whose master has fewer replicas in sync
    /// than acceptance needs, each with how many it has (none otherwise).
    pub fn short_of_replicas(&self) -> Vec<(usize, u32)> {
        match self.replication {
            Some(replication) => self
                .in_sync
                .iter()
                .map(|count| count.load(Ordering::Relaxed))
                .enumerate()
                .filter(|(_, in_sync)| *in_sync < replication.replicas)
                .collect(),
            None => Vec::new(),
        }
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> bool {
        redis::cmd("PING")
            .query_async::<()>(&mut self.redis.clone())
            .await
            .is_ok()
    }
}

/// A writer of `shard`: takes every entry waiting for it (up to
/// [`MAX_ENTRIES_PER_CALL`]), adds them with one script call on `redis`, waits for the
/// replicas if asked to, answers each, and again, until every sender is gone.
async fn write(
    queue: Queue,
    shard: usize,
    redis: Redis,
    receiver: Arc<Mutex<mpsc::Receiver<Pending>>>,
    script: Arc<Script>,
    metrics: Metrics,
) {
    let mut entries = Vec::with_capacity(MAX_ENTRIES_PER_CALL);
    loop {
        let received = receiver
            .lock()
            .await
            .recv_many(&mut entries, MAX_ENTRIES_PER_CALL)
            .await;
        if received == 0 {
            return;
        }
        let started = Instant::now();
        let reply = admission(&queue, &script, shard, &entries)
            .invoke_async::<Vec<(i64, String)>>(&mut redis.clone())
            .await;
        metrics.redis_call("XADD", started.elapsed());
        // An entry added now, or by an earlier request with the same key, counts as
        // accepted only once the replicas hold it.
        let any_held = reply
            .as_ref()
            .is_ok_and(|results| results.iter().any(|(status, _)| *status >= 0));
        let unreplicated = match queue.replication {
            Some(replication) if any_held => wait_on_master_of(
                &mut redis.clone(),
                &queue.shards.keys()[shard],
                replication,
                &metrics,
            )
            .await
            .err(),
            _ => None,
        };
        answer(entries.drain(..), reply, unreplicated.as_ref());
    }
}

/// The script call that adds `entries` to `shard`.
fn admission<'a>(
    queue: &Queue,
    script: &'a Script,
    shard: usize,
    entries: &[Pending],
) -> redis::ScriptInvocation<'a> {
    let stream = &queue.shards.keys()[shard];
    let mut invocation = script.key(stream);
    invocation.key(format!("{stream}:last-id"));
    invocation
        .arg(queue.capacity)
        .arg(queue.idempotency_window_secs)
        .arg(shard)
        .arg(MAX_SHARDS);
    let mut keys = 0;
    for pending in entries {
        match &pending.idempotency {
            Some((key, record)) => {
                keys += 1;
                invocation.key(key).arg(keys + 2).arg(record);
            }
            None => {
                invocation.arg(0).arg("");
            }
        }
        invocation.arg(pending.fields.len() * 2);
        for (name, value) in &pending.fields {
            invocation.arg(*name).arg(value.as_slice());
        }
    }
    invocation
}

/// Tells each of `entries` what became of it, from the `reply` of its shard's call and
/// whether the replicas failed to confirm.
fn answer(
    entries: impl ExactSizeIterator<Item = Pending>,
    reply: redis::RedisResult<Vec<(i64, String)>>,
    unreplicated: Option<&redis::RedisError>,
) {
    let results = match reply {
        Ok(results) if results.len() == entries.len() => results,
        Ok(results) => {
            let error = redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "the admission script answered for the wrong number of entries",
                format!("{} answers for {} entries", results.len(), entries.len()),
            ));
            for pending in entries {
                let _ = pending.outcome.send(Err(error.clone()));
            }
            return;
        }
        Err(error) => {
            for pending in entries {
                let _ = pending.outcome.send(Err(error.clone()));
            }
            return;
        }
    };
    for (pending, (status, value)) in entries.zip(results) {
        let outcome = match (status, unreplicated) {
            (0 | 1, Some(error)) => Err(error.clone()),
            (1, None) => Ok(Outcome::Added(value)),
            (0, None) => Ok(Outcome::AcceptedBefore(value)),
            _ => Ok(Outcome::Full),
        };
        let _ = pending.outcome.send(outcome);
    }
}

/// Asks each shard's master every [`CHECK_REPLICAS_EVERY`] how many of its replicas are
/// in sync (`INFO replication`, `state=online`), so that a request is refused at once,
/// with the reason, while acceptance cannot succeed, rather than wait for `WAIT` to time
/// out. A master that does not answer leaves its count as it was: its requests fail on
/// their own.
async fn watch_replicas(queue: Queue, replication: Replication) {
    let mut ticks = tokio::time::interval(CHECK_REPLICAS_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut redis = queue.redis.clone();
    loop {
        ticks.tick().await;
        // Only the queue's own clones keep it: the api has stopped.
        if queue.waiting[0].is_closed() {
            return;
        }
        for (shard, key) in queue.shards.keys().iter().enumerate() {
            let info = tokio::time::timeout(
                CHECK_REPLICAS_EVERY.max(replication.timeout),
                redis.query_at::<String>(key, redis::cmd("INFO").arg("replication")),
            )
            .await;
            if let Ok(Ok(info)) = info {
                // A node that is no master (the shard's slot moved in a failover and the
                // client has not learned it yet) says nothing of the shard: its requests
                // go on, meet the new master, and the next check asks that one.
                let in_sync = replicas_in_sync(&info).unwrap_or(u32::MAX);
                queue.in_sync[shard].store(in_sync, Ordering::Relaxed);
            }
        }
    }
}

/// How many replicas `INFO replication` lists as in sync, None when the node that
/// answered is not a master.
fn replicas_in_sync(info: &str) -> Option<u32> {
    if !info.lines().any(|line| line.trim() == "role:master") {
        return None;
    }
    let online = info
        .lines()
        .filter(|line| line.starts_with("slave") && line.contains("state=online"))
        .count();
    Some(u32::try_from(online).unwrap_or(u32::MAX))
}

/// Waits until `replication.replicas` replicas hold every write made on `redis` so far
/// to `shard` (`WAIT` on its master: a replica acknowledges a replication offset, and
/// holds all that came before it). Fails with an error of unknown outcome when they do
/// not in time, or when `WAIT` fails: the master holds the entries either way.
async fn wait_on_master_of(
    redis: &mut Redis,
    shard: &str,
    replication: Replication,
    metrics: &Metrics,
) -> Result<(), redis::RedisError> {
    let unconfirmed = |why: String| {
        redis::RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, why))
    };
    let started = Instant::now();
    let mut wait = redis::cmd("WAIT");
    wait.arg(replication.replicas)
        .arg(u64::try_from(replication.timeout.as_millis()).unwrap_or(u64::MAX));
    let acknowledged: redis::RedisResult<u32> = redis.query_at(shard, &wait).await;
    metrics.redis_call("WAIT", started.elapsed());
    match acknowledged {
        Ok(count) if count >= replication.replicas => Ok(()),
        Ok(count) => Err(unconfirmed(format!(
            "{count} of the {} replicas required acknowledged the entries within {:?}",
            replication.replicas, replication.timeout
        ))),
        Err(error) => Err(unconfirmed(format!(
            "waiting for the replicas failed: {error}"
        ))),
    }
}

/// What a failed `publish` means for the entry: refused when Redis answered with an error
/// or the connection was refused, unknown when the command may have reached Redis.
/// `keyed`: the request carried an Idempotency-Key.
fn failed(error: redis::RedisError, keyed: bool) -> Error {
    let may_have_arrived =
        error.is_timeout() || error.is_connection_dropped() || error.is_io_error();
    if may_have_arrived && !error.is_connection_refusal() {
        Error::OutcomeUnknown {
            source: error,
            keyed,
        }
    } else {
        Error::QueueUnavailable(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replicas_in_sync_are_counted_on_a_master_only() {
        let master = "# Replication\r\nrole:master\r\nconnected_slaves:2\r\n\
            slave0:ip=127.0.0.1,port=7001,state=online,offset=10,lag=0\r\n\
            slave1:ip=127.0.0.1,port=7002,state=wait_bgsave,offset=0,lag=0\r\n";
        assert_eq!(replicas_in_sync(master), Some(1));
        let alone = "# Replication\r\nrole:master\r\nconnected_slaves:0\r\n";
        assert_eq!(replicas_in_sync(alone), Some(0));
        // A failed-over master come back as a replica knows nothing of the shard.
        let replica =
            "# Replication\r\nrole:slave\r\nmaster_host:127.0.0.1\r\nconnected_slaves:0\r\n";
        assert_eq!(replicas_in_sync(replica), None);
    }
}

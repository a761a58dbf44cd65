//! Putting accepted logs on the Redis Stream, within its capacity, and once per
//! idempotency key.
//!
//! Requests do not call Redis one by one: they hand their entry to a few writer tasks,
//! each of which takes every entry waiting and adds them all with one script call (group
//! commit, as databases do with their log). Under load one call carries tens of entries,
//! which saves the api and Redis a round trip, a script invocation and two system calls
//! per request; an idle api still sends each entry at once. Every request is answered
//! only once Redis has its entry, as before.

use std::sync::Arc;
use std::time::{Duration, Instant};

use logpipeline_core::codec;
use logpipeline_core::tenant::Tenant;
use redis::Script;
use redis::aio::ConnectionManager;
use time::OffsetDateTime;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::error::{Error, Result};
use crate::idempotency::{self, IdempotencyKey};
use crate::metrics::Metrics;

/// Adds entries to the stream `KEYS[1]`, each unless the stream holds `ARGV[1]` entries
/// already or its idempotency record exists, atomically: the checks and the adds are one
/// script, so concurrent requests cannot overshoot the capacity, and an entry and its
/// idempotency record persist (AOF) and replicate together. The stream is never trimmed
/// here: only entries the workers have acknowledged are removed, by the workers.
///
/// After `ARGV[1]` (capacity) and `ARGV[2]` (seconds an idempotency record lives), each
/// entry is: the index in `KEYS` of its idempotency record (0 for none), the record to
/// write (`<micros> <fingerprint>`, after the entry id), the number of its fields and
/// values, then those. The reply holds, per entry, `{1, id}` when it was added, `{0,
/// record}` when its key was accepted before, or `{-1, ''}` when the stream is full.
const ADMIT: &str = r"
local capacity = tonumber(ARGV[1])
local length = redis.call('XLEN', KEYS[1])
local results = {}
local i = 3
while i <= #ARGV do
    local key = tonumber(ARGV[i])
    local first = i + 3
    local last = first + tonumber(ARGV[i + 2]) - 1
    local prior = false
    if key > 0 then
        prior = redis.call('GET', KEYS[key])
    end
    if prior then
        results[#results + 1] = {0, prior}
    elseif length >= capacity then
        results[#results + 1] = {-1, ''}
    else
        local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, first, last))
        length = length + 1
        if key > 0 then
            redis.call('SET', KEYS[key], id .. ' ' .. ARGV[i + 1], 'EX', ARGV[2])
        end
        results[#results + 1] = {1, id}
    end
    i = last + 1
end
return results
";

/// Writer tasks, each with one script call in flight at a time.
const WRITERS: usize = 2;
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

/// The stream accepted logs go to.
#[derive(Clone)]
pub struct Queue {
    stream: Arc<str>,
    capacity: u64,
    idempotency_window_secs: u64,
    redis: ConnectionManager,
    waiting: mpsc::Sender<Pending>,
}

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
    /// A queue on `stream` of at most `capacity` entries, through `redis`, remembering
    /// idempotency keys for `idempotency_window`. Starts its writer tasks.
    pub fn new(
        redis: ConnectionManager,
        stream: &str,
        capacity: u64,
        idempotency_window: Duration,
        metrics: Metrics,
    ) -> Self {
        let (waiting, receiver) = mpsc::channel(WAITING);
        let queue = Self {
            stream: stream.into(),
            capacity,
            idempotency_window_secs: idempotency_window.as_secs().max(1),
            redis,
            waiting,
        };
        let receiver = Arc::new(Mutex::new(receiver));
        let script = Arc::new(Script::new(ADMIT));
        for _ in 0..WRITERS {
            tokio::spawn(write(
                queue.clone(),
                receiver.clone(),
                script.clone(),
                metrics.clone(),
            ));
        }
        queue
    }

    /// Appends one entry holding `logs_json` (a JSON array of valid logs of `tenant`) and
    /// returns its id once Redis has it. With an idempotency `key`, a request whose key
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
        logs_json: &[u8],
        key: Option<&IdempotencyKey>,
    ) -> Result<Admission> {
        let fields = codec::encode(received_at, tenant, logs_json)
            .into_iter()
            .map(|(name, value)| (name, value.as_bytes().to_vec()))
            .collect();
        let fingerprint = key.map(|_| idempotency::fingerprint(logs_json));
        let idempotency = key.zip(fingerprint.as_ref()).map(|(key, fingerprint)| {
            (
                key.redis_key(&self.stream, tenant),
                format!("{} {fingerprint}", codec::unix_micros(received_at)),
            )
        });
        let (outcome, answer) = oneshot::channel();
        let pending = Pending {
            fields,
            idempotency,
            outcome,
        };
        if self.waiting.send(pending).await.is_err() {
            return Err(Error::Internal("the queue's writers stopped".into()));
        }
        let outcome = answer
            .await
            .map_err(|_| Error::Internal("the queue's writer went away".into()))?;
        match outcome.map_err(failed)? {
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

    /// The stream's name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> bool {
        redis::cmd("PING")
            .query_async::<()>(&mut self.redis.clone())
            .await
            .is_ok()
    }
}

/// A writer: takes every entry waiting (up to [`MAX_ENTRIES_PER_CALL`]), adds them with
/// one script call, answers each, and again, until every sender is gone.
async fn write(
    queue: Queue,
    receiver: Arc<Mutex<mpsc::Receiver<Pending>>>,
    script: Arc<Script>,
    metrics: Metrics,
) {
    let mut batch = Vec::with_capacity(MAX_ENTRIES_PER_CALL);
    let mut redis = queue.redis.clone();
    loop {
        let received = receiver
            .lock()
            .await
            .recv_many(&mut batch, MAX_ENTRIES_PER_CALL)
            .await;
        if received == 0 {
            return;
        }
        let mut invocation = script.key(&*queue.stream);
        invocation
            .arg(queue.capacity)
            .arg(queue.idempotency_window_secs);
        let mut keys = 0;
        for pending in &batch {
            match &pending.idempotency {
                Some((key, record)) => {
                    keys += 1;
                    invocation.key(key).arg(keys + 1).arg(record);
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
        let started = Instant::now();
        let reply: redis::RedisResult<Vec<(i64, String)>> =
            invocation.invoke_async(&mut redis).await;
        metrics.redis_call("XADD", started.elapsed());
        match reply {
            Ok(results) if results.len() == batch.len() => {
                for (pending, (status, value)) in batch.drain(..).zip(results) {
                    let outcome = match status {
                        1 => Outcome::Added(value),
                        0 => Outcome::AcceptedBefore(value),
                        _ => Outcome::Full,
                    };
                    let _ = pending.outcome.send(Ok(outcome));
                }
            }
            Ok(results) => {
                let error = redis::RedisError::from((
                    redis::ErrorKind::UnexpectedReturnType,
                    "the admission script answered for the wrong number of entries",
                    format!("{} answers for {} entries", results.len(), batch.len()),
                ));
                for pending in batch.drain(..) {
                    let _ = pending.outcome.send(Err(error.clone()));
                }
            }
            Err(error) => {
                for pending in batch.drain(..) {
                    let _ = pending.outcome.send(Err(error.clone()));
                }
            }
        }
    }
}

/// What a failed `publish` means for the entry: refused when Redis answered with an error
/// or the connection was refused, unknown when the command may have reached Redis.
fn failed(error: redis::RedisError) -> Error {
    let may_have_arrived =
        error.is_timeout() || error.is_connection_dropped() || error.is_io_error();
    if may_have_arrived && !error.is_connection_refusal() {
        Error::OutcomeUnknown(error)
    } else {
        Error::QueueUnavailable(error)
    }
}

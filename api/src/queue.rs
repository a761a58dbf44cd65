//! Putting accepted logs on the Redis Stream, within its capacity, and once per
//! idempotency key.

use std::sync::Arc;
use std::time::{Duration, Instant};

use logpipeline_core::codec;
use logpipeline_core::tenant::Tenant;
use redis::Script;
use redis::aio::ConnectionManager;
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::idempotency::{self, IdempotencyKey};
use crate::metrics::Metrics;

/// Adds an entry unless the stream already holds `capacity` entries, atomically: the
/// check and the add are one script, so concurrent requests cannot overshoot. Returns
/// the new entry's id, or nil when the stream is full. `ARGV[2..]` are the entry's
/// fields and values ([`codec::encode`]). The stream is never trimmed here: only entries
/// the workers have acknowledged are removed, by the workers.
const ADMIT: &str = r"
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then
    return false
end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
";

/// [`ADMIT`] for a request with an idempotency key, whose record is `KEYS[2]`: when the
/// record exists, the request was accepted before and the script returns `{0, record}`;
/// otherwise it adds the entry as [`ADMIT`] does, records `<entry id> ARGV[3]` for
/// `ARGV[2]` seconds and returns `{1, entry id}`. Entry and record are written by one
/// script, so they persist (AOF) and replicate together: neither exists without the
/// other. `ARGV[4..]` are the entry's fields.
const ADMIT_ONCE: &str = r"
local prior = redis.call('GET', KEYS[2])
if prior then
    return {0, prior}
end
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then
    return false
end
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 4))
redis.call('SET', KEYS[2], id .. ' ' .. ARGV[3], 'EX', ARGV[2])
return {1, id}
";

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
    redis: ConnectionManager,
    stream: Arc<str>,
    capacity: u64,
    admit: Arc<Script>,
    admit_once: Arc<Script>,
    idempotency_window_secs: u64,
    metrics: Metrics,
}

impl Queue {
    /// A queue on `stream` of at most `capacity` entries, through `redis`, remembering
    /// idempotency keys for `idempotency_window`.
    pub fn new(
        redis: ConnectionManager,
        stream: &str,
        capacity: u64,
        idempotency_window: Duration,
        metrics: Metrics,
    ) -> Self {
        Self {
            redis,
            stream: stream.into(),
            capacity,
            admit: Arc::new(Script::new(ADMIT)),
            admit_once: Arc::new(Script::new(ADMIT_ONCE)),
            idempotency_window_secs: idempotency_window.as_secs().max(1),
            metrics,
        }
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
        let fields = codec::encode(received_at, tenant, logs_json);
        let started = Instant::now();
        let admitted = match key {
            None => {
                let mut invocation = self.admit.key(&*self.stream);
                invocation.arg(self.capacity);
                for (field, value) in &fields {
                    invocation.arg(*field).arg(value.as_bytes());
                }
                let id: redis::RedisResult<Option<String>> =
                    invocation.invoke_async(&mut self.redis.clone()).await;
                id.map(|id| {
                    id.map(|entry_id| Admission {
                        entry_id,
                        received_at,
                        duplicate: false,
                    })
                })
            }
            Some(key) => {
                let fingerprint = idempotency::fingerprint(logs_json);
                let record = format!("{} {fingerprint}", codec::unix_micros(received_at));
                let mut invocation = self.admit_once.key(&*self.stream);
                invocation
                    .key(key.redis_key(&self.stream, tenant))
                    .arg(self.capacity)
                    .arg(self.idempotency_window_secs)
                    .arg(record);
                for (field, value) in &fields {
                    invocation.arg(*field).arg(value.as_bytes());
                }
                let reply: redis::RedisResult<Option<(u8, String)>> =
                    invocation.invoke_async(&mut self.redis.clone()).await;
                match reply {
                    Ok(Some((1, entry_id))) => Ok(Some(Admission {
                        entry_id,
                        received_at,
                        duplicate: false,
                    })),
                    Ok(Some((_, record))) => {
                        self.metrics.redis_call("XADD", started.elapsed());
                        return idempotency::replay(&record, &fingerprint);
                    }
                    Ok(None) => Ok(None),
                    Err(error) => Err(error),
                }
            }
        };
        self.metrics.redis_call("XADD", started.elapsed());
        admitted.map_err(failed)?.ok_or(Error::Backpressure {
            capacity: self.capacity,
        })
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

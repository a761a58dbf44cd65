//! Putting accepted logs on the Redis Stream, within its capacity.

use std::sync::Arc;
use std::time::Instant;

use logpipeline_core::codec;
use logpipeline_core::tenant::Tenant;
use redis::Script;
use redis::aio::ConnectionManager;
use time::OffsetDateTime;

use crate::error::{Error, Result};
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

/// The stream accepted logs go to.
#[derive(Clone)]
pub struct Queue {
    redis: ConnectionManager,
    stream: Arc<str>,
    capacity: u64,
    admit: Arc<Script>,
    metrics: Metrics,
}

impl Queue {
    /// A queue on `stream` of at most `capacity` entries, through `redis`.
    pub fn new(redis: ConnectionManager, stream: &str, capacity: u64, metrics: Metrics) -> Self {
        Self {
            redis,
            stream: stream.into(),
            capacity,
            admit: Arc::new(Script::new(ADMIT)),
            metrics,
        }
    }

    /// Appends one entry holding `logs_json` (a JSON array of valid logs of `tenant`) and
    /// returns its id once Redis has it.
    ///
    /// A failure says whether the entry is refused for certain ([`Error::QueueUnavailable`]:
    /// Redis answered with an error, or could not be reached) or may have been added
    /// ([`Error::OutcomeUnknown`]: the command was sent and no answer came in time, or the
    /// connection broke before it). Redis runs a command it has received even after the
    /// client gave up waiting, so only the first kind is safe to retry without care.
    pub async fn publish(
        &self,
        received_at: OffsetDateTime,
        tenant: &Tenant,
        logs_json: &[u8],
    ) -> Result<String> {
        let mut invocation = self.admit.key(&*self.stream);
        invocation.arg(self.capacity);
        for (field, value) in codec::encode(received_at, tenant, logs_json) {
            invocation.arg(field).arg(value.as_bytes());
        }
        let started = Instant::now();
        let id: redis::RedisResult<Option<String>> =
            invocation.invoke_async(&mut self.redis.clone()).await;
        self.metrics.redis_call("XADD", started.elapsed());
        let id = id.map_err(failed)?;
        id.ok_or(Error::Backpressure {
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

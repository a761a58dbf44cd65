//! Putting accepted logs on the Redis Stream, within its capacity.

use std::sync::Arc;
use std::time::Instant;

use logpipeline_core::codec;
use redis::Script;
use redis::aio::ConnectionManager;
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Adds an entry unless the stream already holds `capacity` entries, atomically: the
/// check and the add are one script, so concurrent requests cannot overshoot. Returns
/// the new entry's id, or nil when the stream is full. `ARGV[2..7]` are the
/// entry's three fields and values ([`codec::encode`]). The stream is never trimmed
/// here: only entries the workers have acknowledged are removed, by the workers.
const ADMIT: &str = r"
if redis.call('XLEN', KEYS[1]) >= tonumber(ARGV[1]) then
    return false
end
return redis.call('XADD', KEYS[1], '*', ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
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

    /// Appends one entry holding `logs_json` (a JSON array of valid logs) and returns its
    /// id once Redis has it.
    pub async fn publish(&self, received_at: OffsetDateTime, logs_json: &[u8]) -> Result<String> {
        let mut invocation = self.admit.key(&*self.stream);
        invocation.arg(self.capacity);
        for (field, value) in codec::encode(received_at, logs_json) {
            invocation.arg(field).arg(value.as_bytes());
        }
        let started = Instant::now();
        let id: redis::RedisResult<Option<String>> =
            invocation.invoke_async(&mut self.redis.clone()).await;
        self.metrics.redis_call("XADD", started.elapsed());
        let id = id.map_err(Error::QueueUnavailable)?;
        id.ok_or(Error::Backpressure {
            capacity: self.capacity,
        })
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> bool {
        redis::cmd("PING")
            .query_async::<()>(&mut self.redis.clone())
            .await
            .is_ok()
    }
}

//! The acknowledged watermark: a time, in the milliseconds of stream entry ids, below
//! which every entry of every shard has been delivered to the worker group and
//! acknowledged, so none will ever be delivered again. A row whose entry is below it may
//! become part of a chunk (docs/storage.md, "When a row becomes a chunk").

use std::time::{Duration, Instant};

use logpipeline_core::connection::Redis;
use redis::{RedisResult, Script};

/// For one shard, atomically (one script on the shard's server): the server's time, the
/// first entry the group has not been given yet (the stream's first entry when there is
/// no such group), and the group's oldest pending entry; `''` for what there is none of.
/// KEYS: the shard's stream. ARGV: the group.
const READ_SHARD: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('EXISTS', KEYS[1]) == 0 then
    return {now, '', ''}
end
local delivered = nil
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local name, last = nil, nil
    for j = 1, #group, 2 do
        if group[j] == 'name' then name = group[j + 1] end
        if group[j] == 'last-delivered-id' then last = group[j + 1] end
    end
    if name == ARGV[1] then delivered = last end
end
local unread = ''
local pending = ''
if delivered then
    local next = redis.call('XRANGE', KEYS[1], '(' .. delivered, '+', 'COUNT', 1)
    if #next > 0 then unread = next[1][1] end
    local summary = redis.call('XPENDING', KEYS[1], ARGV[1])
    if summary[1] > 0 then pending = summary[2] end
else
    local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
    if #first > 0 then unread = first[1][1] end
end
return {now, unread, pending}
";

/// The milliseconds of entry id `id` (`<ms>-<seq>`).
fn millis(id: &str) -> Option<i64> {
    id.split_once('-')?.0.parse().ok()
}

/// What one shard says: entries below this many milliseconds are all acknowledged. The
/// bound is the first entry not given to the group yet, or the server's time when there
/// is none (a later entry's id is at least that), and the oldest pending entry.
fn shard_bound(now_ms: i64, unread: &str, pending: &str) -> i64 {
    let unread = millis(unread).unwrap_or(now_ms);
    millis(pending).map_or(unread, |pending| pending.min(unread))
}

/// Reads the watermark of `keys` (every shard's stream, those of a larger shard count
/// used before included) for `group`, in milliseconds: the smallest of the shards'.
pub async fn read(redis: &mut Redis, keys: &[String], group: &str) -> RedisResult<i64> {
    let script = Script::new(READ_SHARD);
    let mut bound = i64::MAX;
    for key in keys {
        let (now_ms, unread, pending): (i64, String, String) =
            script.key(key).arg(group).invoke_async(redis).await?;
        bound = bound.min(shard_bound(now_ms, &unread, &pending));
    }
    Ok(bound)
}

/// Readings of the watermark, and the one that may be used: the smaller of the last two,
/// taken at least [`SETTLE`] apart. An acknowledgement Redis had not yet made durable
/// (written to its append-only file, or sent to its replica) when it crashed is one a
/// later reading no longer shows, and it is never used.
#[derive(Debug, Default)]
pub struct Readings {
    last: Option<(Instant, i64)>,
    settled: Option<i64>,
}

/// How far apart two readings must be for their smaller to be used: more than
/// `appendfsync everysec`'s second.
pub const SETTLE: Duration = Duration::from_millis(1100);

impl Readings {
    /// Adds a reading taken at `at`.
    pub fn add(&mut self, at: Instant, value: i64) {
        match self.last {
            Some((taken, previous)) if at.duration_since(taken) >= SETTLE => {
                self.settled = Some(previous.min(value));
                self.last = Some((at, value));
            }
            Some(_) => {}
            None => self.last = Some((at, value)),
        }
    }

    /// The watermark that may be used, once two readings far enough apart were taken.
    pub fn settled(&self) -> Option<i64> {
        self.settled
    }

    /// Forgets every reading (Redis could not be read: what it said may have changed).
    pub fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_is_bounded_by_its_oldest_pending_and_first_unread_entry() {
        assert_eq!(shard_bound(5000, "", ""), 5000);
        assert_eq!(shard_bound(5000, "4000-3", ""), 4000);
        assert_eq!(shard_bound(5000, "4000-3", "3000-0"), 3000);
        assert_eq!(shard_bound(5000, "", "4500-17"), 4500);
    }

    #[test]
    fn the_settled_watermark_is_the_smaller_of_two_readings_a_second_apart() {
        let start = Instant::now();
        let mut readings = Readings::default();
        readings.add(start, 100);
        assert_eq!(readings.settled(), None);
        readings.add(start + Duration::from_millis(200), 120);
        assert_eq!(readings.settled(), None, "too soon after the first");
        readings.add(start + SETTLE, 150);
        assert_eq!(readings.settled(), Some(100));
        // An acknowledgement lost by a crash: the watermark went back.
        readings.add(start + SETTLE * 2, 90);
        assert_eq!(readings.settled(), Some(90));
        readings.clear();
        assert_eq!(readings.settled(), None);
    }
}

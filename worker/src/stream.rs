//! The worker's side of the Redis Stream: reading through the consumer group, claiming
//! from dead consumers, acknowledging, dead-lettering and trimming.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use logpipeline_core::config::Replication;
use logpipeline_core::connection::Redis;
use logpipeline_core::generations::{GenerationKeys, Kind};
use redis::{RedisResult, Script, Value};

/// Acknowledges an entry and copies it to the dead-letter stream, atomically and once:
/// only the caller whose XACK removed it from the pending list writes the copy.
/// KEYS: stream, dead-letter stream. ARGV: group, entry id, reason, deliveries, consumer,
/// then the entry's own field/value pairs.
const DEAD_LETTER: &str = r"
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 1 then
    redis.call('XADD', KEYS[2], '*', 'source_id', ARGV[2], 'reason', ARGV[3],
        'deliveries', ARGV[4], 'consumer', ARGV[5], unpack(ARGV, 6))
    return 1
end
return 0
";

/// Trims the entries every consumer group has acknowledged: those older than each
/// group's oldest pending entry, or than the entry after the last one it was given.
/// A stream without groups is left alone. Returns the number of entries removed.
/// KEYS: stream.
const TRIM: &str = r"
local function parse(id)
    local ms, seq = string.match(id, '^(%d+)-(%d+)$')
    return tonumber(ms), tonumber(seq)
end
local function older(a, b)
    local a_ms, a_seq = parse(a)
    local b_ms, b_seq = parse(b)
    return a_ms < b_ms or (a_ms == b_ms and a_seq < b_seq)
end
local horizon = nil
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local info = {}
    for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
    local keep
    if info['pending'] > 0 then
        keep = redis.call('XPENDING', KEYS[1], info['name'])[2]
    else
        local ms, seq = parse(info['last-delivered-id'])
        keep = string.format('%d-%d', ms, seq + 1)
    end
    if horizon == nil or older(keep, horizon) then horizon = keep end
end
if horizon == nil then return 0 end
return redis.call('XTRIM', KEYS[1], 'MINID', horizon)
";

/// Deletes a shard that is no longer in use once the group has had every entry it ever
/// held (its last delivered id is the stream's last id) and acknowledged them all, in
/// one step, so an entry added meanwhile keeps it. Returns 1 when it is gone.
/// KEYS: the shard's stream. ARGV: group.
const RETIRE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 1 end
local last = nil
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = info[i + 1] end
end
for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local g = {}
    for i = 1, #group, 2 do g[group[i]] = group[i + 1] end
    if g['name'] == ARGV[1] then
        if g['pending'] > 0 or g['last-delivered-id'] ~= last then return 0 end
        redis.call('DEL', KEYS[1])
        return 1
    end
end
return 0
";

/// A stream entry as read: its id and its raw field/value pairs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEntry {
    /// The entry id, `<ms>-<seq>`.
    pub id: String,
    /// Its fields, in order.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The stream's numbers for the consumer group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupInfo {
    /// Entries in the stream.
    pub length: u64,
    /// Entries not yet delivered to any consumer (None when Redis cannot tell).
    pub lag: Option<u64>,
    /// Entries delivered and not yet acknowledged.
    pub pending: u64,
    /// The id of the oldest of those, if any.
    pub oldest_pending: Option<String>,
    /// Whether the group exists.
    pub group_exists: bool,
}

impl GroupInfo {
    /// How long ago the oldest pending entry was added to the stream (its id is the
    /// Redis server's clock in milliseconds then); zero when nothing is pending.
    pub fn oldest_pending_age(&self, now: std::time::SystemTime) -> Duration {
        let added_ms = self
            .oldest_pending
            .as_deref()
            .and_then(|id| id.split('-').next()?.parse::<u64>().ok());
        let Some(added_ms) = added_ms else {
            return Duration::ZERO;
        };
        let now_ms = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        Duration::from_millis(now_ms.saturating_sub(added_ms))
    }
}

/// One connection's view of the stream, its consumer group and its dead-letter stream.
#[derive(Clone)]
pub struct Stream {
    redis: Redis,
    key: Arc<str>,
    group: Arc<str>,
    dead_letter_key: Arc<str>,
    generations: Arc<GenerationKeys>,
    dead_letter: Arc<Script>,
    trim: Arc<Script>,
    replication: Option<Replication>,
}

impl Stream {
    /// `key`'s consumer `group` through `redis`; failed entries go to `dead_letter_key`,
    /// and the query cache's generations are in the hashes of `generations`.
    pub fn new(
        redis: Redis,
        key: &str,
        group: &str,
        dead_letter_key: &str,
        generations: &GenerationKeys,
    ) -> Self {
        Self {
            redis,
            key: key.into(),
            group: group.into(),
            dead_letter_key: dead_letter_key.into(),
            generations: Arc::new(generations.clone()),
            dead_letter: Arc::new(Script::new(DEAD_LETTER)),
            trim: Arc::new(Script::new(TRIM)),
            replication: None,
        }
    }

    /// The same, for a pipeline whose api answers 200 only once `replication` holds an
    /// entry (see [`Self::replicated`]).
    pub fn with_replication(mut self, replication: Option<Replication>) -> Self {
        self.replication = replication;
        self
    }

    /// Whether the replicas hold `ids`, entries `consumer` has read, when the pipeline
    /// asks for replicated acceptance (true otherwise). An entry stored before a replica
    /// held it could be lost in a failover after being stored, and then be sent again by
    /// its client, whose request was never answered 200: stored twice.
    ///
    /// `WAIT` waits for what the connection it is sent on wrote. A read that was blocked
    /// does not count as this connection's write, so the entries are touched first
    /// (`XCLAIM … JUSTID`, a write Redis replicates after the entries themselves).
    pub async fn replicated(&mut self, consumer: &str, ids: &[String]) -> RedisResult<bool> {
        let Some(replication) = self.replication else {
            return Ok(true);
        };
        self.touch(consumer, ids).await?;
        let mut wait = redis::cmd("WAIT");
        wait.arg(replication.replicas)
            .arg(u64::try_from(replication.timeout.as_millis()).unwrap_or(u64::MAX));
        let key = self.key.clone();
        let acknowledged: u32 = self.redis.query_at(&key, &wait).await?;
        Ok(acknowledged >= replication.replicas)
    }

    /// Creates the consumer group again, after Redis lost it (a restart without
    /// persistence, a failover onto a replica that never had it): without it no consumer
    /// reads. A no-op when it exists.
    pub async fn recreate_group(&mut self) -> RedisResult<()> {
        logpipeline_core::stream::ensure_group(&mut self.redis, &self.key, &self.group).await
    }

    /// Reads up to `count` entries never delivered before, waiting up to `block`.
    pub async fn read_new(
        &mut self,
        consumer: &str,
        count: u32,
        block: Duration,
    ) -> RedisResult<Vec<StreamEntry>> {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&*self.group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("BLOCK")
            .arg(block.as_millis() as u64)
            .arg("STREAMS")
            .arg(&*self.key)
            .arg(">")
            .query_async(&mut self.redis)
            .await?;
        Ok(parse_read_reply(reply))
    }

    /// Reads up to `count` entries already delivered to `consumer` and not acknowledged,
    /// with ids above `after` (a restarted consumer's unfinished work).
    pub async fn read_own_pending(
        &mut self,
        consumer: &str,
        count: u32,
        after: &str,
    ) -> RedisResult<Vec<StreamEntry>> {
        let reply: Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&*self.group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(&*self.key)
            .arg(after)
            .query_async(&mut self.redis)
            .await?;
        Ok(parse_read_reply(reply))
    }

    /// Claims for `consumer` up to `count` entries that other consumers have held for
    /// longer than `min_idle` without acknowledging. Each claim counts as a delivery.
    pub async fn claim_idle(
        &mut self,
        consumer: &str,
        min_idle: Duration,
        count: u32,
    ) -> RedisResult<Vec<StreamEntry>> {
        let mut claimed = Vec::new();
        let mut cursor = "0-0".to_owned();
        loop {
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(&*self.key)
                .arg(&*self.group)
                .arg(consumer)
                .arg(min_idle.as_millis() as u64)
                .arg(&cursor)
                .arg("COUNT")
                .arg(count as usize - claimed.len())
                .query_async(&mut self.redis)
                .await?;
            let Value::Array(mut parts) = reply else {
                return Ok(claimed);
            };
            if parts.len() < 2 {
                return Ok(claimed);
            }
            claimed.extend(parse_entries(parts.swap_remove(1)));
            cursor = text(&parts[0]).unwrap_or_else(|| "0-0".into());
            if cursor == "0-0" || claimed.len() >= count as usize {
                return Ok(claimed);
            }
        }
    }

    /// How many times each of `ids` has been delivered, for those still pending.
    pub async fn deliveries(&mut self, ids: &[String]) -> RedisResult<Vec<(String, u64)>> {
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("XPENDING")
                .arg(&*self.key)
                .arg(&*self.group)
                .arg(id)
                .arg(id)
                .arg(1);
        }
        let replies: Vec<Vec<(String, String, u64, u64)>> =
            pipe.query_async(&mut self.redis).await?;
        Ok(replies
            .into_iter()
            .flatten()
            .map(|(id, _consumer, _idle, deliveries)| (id, deliveries))
            .collect())
    }

    /// Acknowledges `ids`, which are stored, after retiring the cached query results of
    /// the devices, services and traces whose logs they hold (`retired`, see
    /// [`generations`]), in one round trip. The order matters: once an entry is
    /// acknowledged, no query may be answered from a cache that predates its logs.
    pub async fn ack(
        &mut self,
        ids: &[String],
        retired: &BTreeSet<(Kind, String)>,
    ) -> RedisResult<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut ack = redis::cmd("XACK");
        ack.arg(&*self.key).arg(&*self.group).arg(ids);
        if self.redis.is_cluster() {
            self.retire(retired).await?;
            return ack.query_async(&mut self.redis).await;
        }
        let mut pipe = self.retiring(retired);
        pipe.add_command(ack);
        let (acked,): (u64,) = pipe.query_async(&mut self.redis).await?;
        Ok(acked)
    }

    /// Retires the cached reads of `retired` (their generations), for logs committed
    /// before their entry is acknowledged. On a Redis Cluster, where the hashes of
    /// generations are on slots of their own, one call per hash.
    pub async fn retire(&mut self, retired: &BTreeSet<(Kind, String)>) -> RedisResult<()> {
        if !self.redis.is_cluster() {
            return self.retiring(retired).query_async(&mut self.redis).await;
        }
        let calls = [Kind::Device, Kind::Service, Kind::Trace]
            .into_iter()
            .map(|kind| -> BTreeSet<(Kind, String)> {
                retired
                    .iter()
                    .filter(|(of, _)| *of == kind)
                    .cloned()
                    .collect()
            })
            .filter(|fields| !fields.is_empty())
            .map(|fields| {
                let pipe = self.retiring(&fields);
                let mut redis = self.redis.clone();
                async move { pipe.query_async::<()>(&mut redis).await }
            });
        futures::future::try_join_all(calls).await.map(drop)
    }

    /// A pipeline that bumps the generations of `retired`.
    fn retiring(&self, retired: &BTreeSet<(Kind, String)>) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        for (kind, field) in retired {
            pipe.cmd("HINCRBY")
                .arg(self.generations.key(*kind))
                .arg(field)
                .arg(1)
                .ignore();
        }
        pipe
    }

    /// Resets the idle time of `ids` held by `consumer`, without counting a delivery, so
    /// other consumers do not claim entries this one is still working on.
    pub async fn touch(&mut self, consumer: &str, ids: &[String]) -> RedisResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        redis::cmd("XCLAIM")
            .arg(&*self.key)
            .arg(&*self.group)
            .arg(consumer)
            .arg(0)
            .arg(ids)
            .arg("JUSTID")
            .query_async::<Value>(&mut self.redis)
            .await
            .map(drop)
    }

    /// Delivers `id` to `consumer` again, counting a delivery. False when it is no longer
    /// pending (acknowledged meanwhile).
    pub async fn redeliver(&mut self, consumer: &str, id: &str) -> RedisResult<bool> {
        let reply: Value = redis::cmd("XCLAIM")
            .arg(&*self.key)
            .arg(&*self.group)
            .arg(consumer)
            .arg(0)
            .arg(id)
            .query_async(&mut self.redis)
            .await?;
        Ok(!parse_entries(reply).is_empty())
    }

    /// Moves `entry` to the dead-letter stream with `reason`. False when another consumer
    /// acknowledged or dead-lettered it first.
    pub async fn dead_letter(
        &mut self,
        entry: &StreamEntry,
        reason: &str,
        deliveries: u64,
        consumer: &str,
    ) -> RedisResult<bool> {
        let mut invocation = self.dead_letter.key(&*self.key);
        invocation
            .key(&*self.dead_letter_key)
            .arg(&*self.group)
            .arg(&entry.id)
            .arg(reason)
            .arg(deliveries)
            .arg(consumer);
        for (field, value) in &entry.fields {
            invocation.arg(field.as_slice()).arg(value.as_slice());
        }
        let moved: u64 = invocation.invoke_async(&mut self.redis).await?;
        Ok(moved == 1)
    }

    /// Whether Redis answers.
    pub async fn ping(&mut self) -> bool {
        redis::cmd("PING")
            .query_async::<()>(&mut self.redis)
            .await
            .is_ok()
    }

    /// The stream's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Deletes the stream if the group has stored every entry it held (see [`RETIRE`]);
    /// true when it is gone.
    pub async fn retire_if_drained(&mut self) -> RedisResult<bool> {
        let gone: u64 = Script::new(RETIRE)
            .key(&*self.key)
            .arg(&*self.group)
            .invoke_async(&mut self.redis)
            .await?;
        Ok(gone == 1)
    }

    /// Removes the entries every group has acknowledged; returns how many.
    pub async fn trim(&mut self) -> RedisResult<u64> {
        self.trim
            .key(&*self.key)
            .invoke_async(&mut self.redis)
            .await
    }

    /// The stream's length and the group's lag and pending count.
    pub async fn group_info(&mut self) -> RedisResult<GroupInfo> {
        read_group_info(&mut self.redis, &self.key, &self.group).await
    }

    /// Removes consumers that hold nothing and have not read for longer than `idle`:
    /// names left behind by workers that are gone. Returns how many.
    pub async fn remove_idle_consumers(&mut self, idle: Duration) -> RedisResult<u64> {
        let consumers: Vec<Value> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&*self.key)
            .arg(&*self.group)
            .query_async(&mut self.redis)
            .await?;
        let mut removed = 0;
        for consumer in consumers {
            let fields = field_map(consumer);
            let number = |name: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == name)
                    .and_then(|(_, v)| match v {
                        Value::Int(n) => Some(*n),
                        _ => None,
                    })
            };
            let name = fields
                .iter()
                .find(|(k, _)| k == "name")
                .and_then(|(_, v)| text(v));
            if let (Some(name), Some(0), Some(idle_ms)) = (name, number("pending"), number("idle"))
                && idle_ms >= 0
                && Duration::from_millis(idle_ms as u64) > idle
            {
                let _: Value = redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&*self.key)
                    .arg(&*self.group)
                    .arg(name)
                    .query_async(&mut self.redis)
                    .await?;
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Orders stream ids numerically (`<ms>-<seq>`).
pub fn compare_ids(a: &str, b: &str) -> std::cmp::Ordering {
    let parse = |id: &str| {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (
            ms.parse::<u64>().unwrap_or(0),
            seq.parse::<u64>().unwrap_or(0),
        )
    };
    parse(a).cmp(&parse(b))
}

pub(crate) fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        Value::SimpleString(text) => Some(text.clone()),
        _ => None,
    }
}

/// The length of stream `key` and the lag, pending count and oldest pending entry of its
/// consumer `group` (all zero when they do not exist).
pub async fn read_group_info<C: redis::aio::ConnectionLike>(
    redis: &mut C,
    key: &str,
    group: &str,
) -> RedisResult<GroupInfo> {
    let exists: bool = redis::cmd("EXISTS").arg(key).query_async(redis).await?;
    if !exists {
        return Ok(GroupInfo::default());
    }
    let length: u64 = redis::cmd("XLEN").arg(key).query_async(redis).await?;
    let groups: Vec<Value> = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(key)
        .query_async(redis)
        .await?;
    let mut info = GroupInfo {
        length,
        ..GroupInfo::default()
    };
    for described in groups {
        let fields = field_map(described);
        if fields
            .iter()
            .any(|(k, v)| k == "name" && text(v).as_deref() == Some(group))
        {
            info.group_exists = true;
            for (field, value) in fields {
                match (field.as_str(), value) {
                    ("pending", Value::Int(n)) => info.pending = n.max(0) as u64,
                    ("lag", Value::Int(n)) => info.lag = Some(n.max(0) as u64),
                    _ => {}
                }
            }
        }
    }
    if info.pending > 0 {
        // XPENDING's summary: count, smallest id, greatest id, consumers.
        let summary: Vec<Value> = redis::cmd("XPENDING")
            .arg(key)
            .arg(group)
            .query_async(redis)
            .await?;
        info.oldest_pending = summary.get(1).and_then(text);
    }
    Ok(info)
}

/// A flat `[key, value, key, value, …]` array (or a map) as pairs.
pub(crate) fn field_map(value: Value) -> Vec<(String, Value)> {
    match value {
        Value::Array(items) => {
            let mut items = items.into_iter();
            let mut pairs = Vec::new();
            while let (Some(key), Some(value)) = (items.next(), items.next()) {
                if let Some(key) = text(&key) {
                    pairs.push((key, value));
                }
            }
            pairs
        }
        Value::Map(pairs) => pairs
            .into_iter()
            .filter_map(|(key, value)| Some((text(&key)?, value)))
            .collect(),
        _ => Vec::new(),
    }
}

/// `XREADGROUP`'s reply: nil on timeout, else `[[stream, [entry, …]]]`.
fn parse_read_reply(reply: Value) -> Vec<StreamEntry> {
    match reply {
        Value::Array(streams) => streams
            .into_iter()
            .flat_map(|stream| match stream {
                Value::Array(mut parts) if parts.len() == 2 => parse_entries(parts.swap_remove(1)),
                _ => Vec::new(),
            })
            .collect(),
        Value::Map(streams) => streams
            .into_iter()
            .flat_map(|(_, entries)| parse_entries(entries))
            .collect(),
        _ => Vec::new(),
    }
}

/// `[[id, [field, value, …]], …]`; entries deleted from the stream come as `[id, nil]`
/// and are skipped.
fn parse_entries(value: Value) -> Vec<StreamEntry> {
    let Value::Array(entries) = value else {
        return Vec::new();
    };
    entries
        .into_iter()
        .filter_map(|entry| {
            let Value::Array(mut parts) = entry else {
                return None;
            };
            if parts.len() != 2 {
                return None;
            }
            let Value::Array(flat) = parts.pop()? else {
                return None;
            };
            let id = text(&parts[0])?;
            let mut fields = Vec::with_capacity(flat.len() / 2);
            let mut flat = flat.into_iter();
            while let (Some(Value::BulkString(key)), Some(Value::BulkString(value))) =
                (flat.next(), flat.next())
            {
                fields.push((key, value));
            }
            Some(StreamEntry { id, fields })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    #[test]
    fn read_replies_parse_and_skip_deleted_entries() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("logs:stream"),
            Value::Array(vec![
                Value::Array(vec![bulk("1-0"), Value::Array(vec![bulk("v"), bulk("1")])]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let entries = parse_read_reply(reply);
        assert_eq!(
            entries,
            [StreamEntry {
                id: "1-0".into(),
                fields: vec![(b"v".to_vec(), b"1".to_vec())]
            }]
        );
        assert!(parse_read_reply(Value::Nil).is_empty());
    }

    #[test]
    fn ids_compare_numerically() {
        use std::cmp::Ordering::*;
        assert_eq!(compare_ids("9-0", "10-0"), Less);
        assert_eq!(compare_ids("10-2", "10-10"), Less);
        assert_eq!(compare_ids("10-2", "10-2"), Equal);
    }
}

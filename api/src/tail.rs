//! The live tail: the logs the pipeline accepts, live, read from the Redis Stream the
//! api writes and never from PostgreSQL, for `GET /api/logs/tail` (its handler is in
//! the routes, which depend on this module and not the other way round).
//!
//! One reader per api process and shard follows the stream with `XREAD` (not the
//! workers' consumer group, which it leaves alone) while anyone subscribes, on a thread
//! and runtime of the tail's own, so the tail's work never takes ingest's threads. It
//! hands each log to the [`Hub`], which knows the subscribers by tenant, and within a
//! tenant by the device, service or trace they ask for: a log costs only the
//! subscribers that can want it, whatever the others ask or however many there are.
//!
//! Each subscriber has a queue of [`QUEUE`] logs. One that reads too slowly and finds
//! its queue full is told how many logs it missed (an event `missed`) and goes on; one
//! that takes nothing while [`DROP_AFTER`] logs are missed is dropped, told why (an
//! event `dropped`), and its queue freed: a subscriber that stops reading costs a
//! bounded amount of memory and then nothing.
//!
//! A subscription starts exactly: its answer begins once every reader holds a position in
//! its stream (an entry id, never `$`) that it keeps while anyone subscribes, so every log
//! the pipeline accepts after that is delivered.
//!
//! Each event `log` is a log as the queries return it, with its `message_id`; a
//! subscriber sees only its tenant's logs. Filters: `device_id`, `service_name`,
//! `trace_id`, `level` and `q` (words and "quoted phrases", as in a search).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use axum::response::sse::Event;
use futures::Stream;
use logpipeline_core::codec;
use logpipeline_core::connection::{Redis, RedisTarget};
use logpipeline_core::record::{LogLevel, LogRecord};
use logpipeline_core::stream::Shards;
use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{Notify, Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::warn;
use utoipa::IntoParams;

use crate::error::{Error, Result};
use crate::read::filter::{Subject, parse_levels, terms};

/// Logs a subscriber's queue holds: how far it may fall behind before it misses logs.
pub const QUEUE: usize = 4096;
/// Logs a subscriber may miss without taking any from its queue before it is dropped.
pub const DROP_AFTER: u64 = 16_384;
/// Most entries one `XREAD` returns, and how long it blocks.
const READ_COUNT: usize = 500;
const READ_BLOCK: Duration = Duration::from_secs(1);
/// How long a reader waits after a Redis error.
const RETRY: Duration = Duration::from_secs(1);
/// How long a new subscription waits for the readers to hold their positions; past it
/// (Redis is away) it starts without.
const START: Duration = Duration::from_secs(3);

/// A log as the tail sends it.
#[derive(Debug, Serialize)]
pub struct TailLog {
    #[serde(skip)]
    tenant: String,
    message_id: String,
    #[serde(flatten)]
    record: LogRecord,
    #[serde(with = "time::serde::rfc3339")]
    created_at: OffsetDateTime,
    /// The log as an event's data, made by the first subscriber that sends it and
    /// shared by the others: a log a hundred subscribers match is serialized once.
    #[serde(skip)]
    json: OnceLock<Option<String>>,
}

impl TailLog {
    /// The log as JSON, None if it could not be serialized.
    fn json(&self) -> Option<&str> {
        self.json
            .get_or_init(|| serde_json::to_string(self).ok())
            .as_deref()
    }
}

/// The live tail of one api process: its readers and its subscribers.
#[derive(Clone)]
pub struct Tail {
    hub: Hub,
    subscribers: Arc<Semaphore>,
    max_subscribers: usize,
    /// Wakes idle readers when someone subscribes.
    wake: Arc<Notify>,
    /// Each reader's: whether it holds a position it keeps while anyone subscribes.
    positioned: Vec<watch::Receiver<bool>>,
    shutdown: CancellationToken,
}

impl Tail {
    /// Starts a reader for each of `shards` on `target`, on a thread of their own; they
    /// read while anyone subscribes (at most `max_subscribers` at once), and stop with
    /// `shutdown`, as do the subscriptions.
    pub fn start(
        target: &RedisTarget,
        shards: &Shards,
        max_subscribers: usize,
        shutdown: CancellationToken,
    ) -> Self {
        let hub = Hub::default();
        let wake = Arc::new(Notify::new());
        let mut readers = Vec::new();
        let positioned = shards
            .keys()
            .iter()
            .map(|key| {
                let (positioned, watched) = watch::channel(false);
                readers.push(read(
                    target.clone(),
                    key.clone(),
                    Reader {
                        hub: hub.clone(),
                        wake: wake.clone(),
                        positioned,
                    },
                    shutdown.clone(),
                ));
                watched
            })
            .collect();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let spawned = runtime.map(|runtime| {
            std::thread::Builder::new()
                .name("tail".to_owned())
                .spawn(move || runtime.block_on(futures::future::join_all(readers)))
        });
        if let Err(error) | Ok(Err(error)) = spawned {
            // Without its thread the tail has no reader: subscriptions start after the
            // start wait and receive nothing, and the api goes on accepting logs.
            tracing::error!(%error, "tail: cannot start the readers' thread");
        }
        Self {
            hub,
            subscribers: Arc::new(Semaphore::new(max_subscribers)),
            max_subscribers,
            wake,
            positioned,
            shutdown,
        }
    }

    /// The logs of `tenant` that `query` (a tail's query string) asks for, from now on,
    /// as Server-Sent Events: [`Error::TailFull`] past the subscriber limit, and
    /// [`Error::InvalidQuery`] for a query it does not take. The events end with the
    /// process, or after `dropped`.
    pub async fn open(
        &self,
        tenant: &str,
        query: Option<&str>,
    ) -> Result<impl Stream<Item = Event> + use<>> {
        let filter = Filter::parse(tenant, query)?;
        let permit = self
            .subscribers
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::TailFull {
                limit: self.max_subscribers,
            })?;
        let subscription = self.subscribe(filter).await;
        let events = futures::stream::unfold(
            (subscription, permit),
            |(mut subscription, permit)| async move {
                let delivery = subscription.next().await?;
                Some((delivery.event(), (subscription, permit)))
            },
        );
        Ok(futures::StreamExt::take_until(
            events,
            self.shutdown.clone().cancelled_owned(),
        ))
    }

    /// Subscribes `filter`, and returns once every reader holds a position it keeps
    /// while this subscription lasts (or after [`START`], if Redis is away): every log
    /// accepted after that reaches the subscription.
    async fn subscribe(&self, filter: Filter) -> Subscription {
        let subscription = self.hub.subscribe(filter);
        self.wake.notify_waiters();
        let positioned = futures::future::join_all(self.positioned.iter().cloned().map(
            |mut positioned| async move {
                // A reader that stopped (shutdown) has nothing more to wait for.
                let _ = positioned.wait_for(|held| *held).await;
            },
        ));
        if tokio::time::timeout(START, positioned).await.is_err() {
            warn!("tail: a subscription starts before every reader holds its position");
        }
        subscription
    }
}

/// The subscribers of one api process, by tenant, and within a tenant by the device,
/// service or trace they ask for (the first of them they name).
#[derive(Clone, Default)]
pub struct Hub {
    registry: Arc<RwLock<Registry>>,
    count: Arc<AtomicUsize>,
    next_id: Arc<AtomicU64>,
}

#[derive(Default)]
struct Registry {
    tenants: HashMap<String, Tenant>,
}

/// One tenant's subscribers.
#[derive(Default)]
struct Tenant {
    by_device: HashMap<String, Vec<Arc<Subscriber>>>,
    by_service: HashMap<String, Vec<Arc<Subscriber>>>,
    by_trace: HashMap<String, Vec<Arc<Subscriber>>>,
    /// Those that name none of them.
    rest: Vec<Arc<Subscriber>>,
}

/// A subscriber, as the hub holds it.
struct Subscriber {
    id: u64,
    filter: Filter,
    queue: mpsc::Sender<Arc<TailLog>>,
    counts: Arc<Counts>,
}

/// What the hub and a subscription share.
#[derive(Default)]
struct Counts {
    /// Logs missed for a full queue, in all.
    missed: AtomicU64,
    /// `missed` when the subscription last took a log.
    missed_at_last_take: AtomicU64,
    /// Set when the hub drops the subscriber for not reading.
    dropped: AtomicBool,
}

/// A subscription, as its answer reads it; it leaves the hub when dropped.
struct Subscription {
    id: u64,
    filter: Filter,
    queue: mpsc::Receiver<Arc<TailLog>>,
    counts: Arc<Counts>,
    hub: Hub,
    /// `counts.missed` as last told to the client.
    told_missed: u64,
}

impl Tenant {
    fn bucket(&mut self, filter: &Filter) -> &mut Vec<Arc<Subscriber>> {
        match filter.subjects.first() {
            Some(Subject::Device(device)) => self.by_device.entry(device.clone()).or_default(),
            Some(Subject::Service(service)) => self.by_service.entry(service.clone()).or_default(),
            Some(Subject::Trace(trace)) => self.by_trace.entry(trace.clone()).or_default(),
            None => &mut self.rest,
        }
    }

    fn is_empty(&self) -> bool {
        self.by_device.is_empty()
            && self.by_service.is_empty()
            && self.by_trace.is_empty()
            && self.rest.is_empty()
    }

    /// The subscribers that may want `log`: each at most once, since each is in one
    /// bucket.
    fn candidates<'a>(&'a self, log: &TailLog) -> impl Iterator<Item = &'a Arc<Subscriber>> {
        let record = &log.record;
        let of = |map: &'a HashMap<String, Vec<Arc<Subscriber>>>, key: Option<&str>| {
            key.and_then(|key| map.get(key))
                .map(Vec::as_slice)
                .unwrap_or_default()
        };
        of(&self.by_device, Some(record.device_id.as_str()))
            .iter()
            .chain(of(
                &self.by_service,
                record.service_name.as_ref().map(|name| name.as_str()),
            ))
            .chain(of(
                &self.by_trace,
                record.trace_id.as_ref().map(|id| id.as_str()),
            ))
            .chain(self.rest.iter())
    }
}

impl Hub {
    /// How many subscribe.
    fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    fn subscribe(&self, filter: Filter) -> Subscription {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let counts = Arc::new(Counts::default());
        let mut registry = self.write();
        registry
            .tenants
            .entry(filter.tenant.clone())
            .or_default()
            .bucket(&filter)
            .push(Arc::new(Subscriber {
                id,
                filter: filter.clone(),
                queue: sender,
                counts: counts.clone(),
            }));
        self.count.fetch_add(1, Ordering::AcqRel);
        Subscription {
            id,
            filter,
            queue: receiver,
            counts,
            hub: self.clone(),
            told_missed: 0,
        }
    }

    /// Takes subscriber `id` of the tenant of `filter` out, if it is still in.
    fn remove(&self, tenant: &str, filter: &Filter, id: u64) {
        let mut registry = self.write();
        let Some(subscribers) = registry.tenants.get_mut(tenant) else {
            return;
        };
        let bucket = subscribers.bucket(filter);
        let before = bucket.len();
        bucket.retain(|subscriber| subscriber.id != id);
        let removed = before - bucket.len();
        let empty_bucket = bucket.is_empty();
        if empty_bucket {
            match filter.subjects.first() {
                Some(Subject::Device(device)) => {
                    subscribers.by_device.remove(device);
                }
                Some(Subject::Service(service)) => {
                    subscribers.by_service.remove(service);
                }
                Some(Subject::Trace(trace)) => {
                    subscribers.by_trace.remove(trace);
                }
                None => {}
            }
        }
        if subscribers.is_empty() {
            registry.tenants.remove(tenant);
        }
        self.count.fetch_sub(removed, Ordering::AcqRel);
    }

    /// Hands `logs` to the subscribers that want them; drops those that stopped reading.
    fn dispatch(&self, logs: &[Arc<TailLog>]) {
        let mut not_reading = Vec::new();
        {
            let registry = self.registry.read().unwrap_or_else(PoisonError::into_inner);
            for log in logs {
                let Some(subscribers) = registry.tenants.get(&log.tenant) else {
                    continue;
                };
                for subscriber in subscribers.candidates(log) {
                    if subscriber.counts.dropped.load(Ordering::Acquire)
                        || !subscriber.filter.matches(log)
                    {
                        continue;
                    }
                    match subscriber.queue.try_send(log.clone()) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            let counts = &subscriber.counts;
                            let missed = counts.missed.fetch_add(1, Ordering::AcqRel) + 1;
                            let since_take =
                                missed - counts.missed_at_last_take.load(Ordering::Acquire);
                            if since_take > DROP_AFTER
                                && !counts.dropped.swap(true, Ordering::AcqRel)
                            {
                                not_reading.push(subscriber.clone());
                            }
                        }
                        // Its subscription ended; it leaves the hub by itself.
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
            }
        }
        for subscriber in not_reading {
            self.remove(&subscriber.filter.tenant, &subscriber.filter, subscriber.id);
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(&self.filter.tenant, &self.filter, self.id);
    }
}

/// What a subscription hands its client next.
#[derive(Debug)]
enum Delivery {
    /// A log it asked for.
    Log(Arc<TailLog>),
    /// How many logs went by for a full queue since it was last told.
    Missed(u64),
    /// It was dropped for not reading: the last event.
    Dropped,
}

impl Delivery {
    /// The Server-Sent Event.
    fn event(&self) -> Event {
        match self {
            // A log always serializes; were it not to, the client is told it missed one.
            Self::Log(log) => match log.json() {
                Some(json) => Event::default().event("log").data(json),
                None => Event::default().event("missed").data("1"),
            },
            Self::Missed(count) => Event::default().event("missed").data(count.to_string()),
            Self::Dropped => Event::default().event("dropped").data(format!(
                "this subscriber took no log while {DROP_AFTER} went by for it; subscribe again to go on"
            )),
        }
    }
}

impl Subscription {
    /// What the client gets next: [`Delivery::Missed`] when logs went by for a full
    /// queue since it was last told, else the next log; [`Delivery::Dropped`], then the
    /// end, once the hub has dropped it.
    async fn next(&mut self) -> Option<Delivery> {
        let missed = self.counts.missed.load(Ordering::Acquire);
        if missed > self.told_missed {
            let count = missed - self.told_missed;
            self.told_missed = missed;
            return Some(Delivery::Missed(count));
        }
        match self.queue.recv().await {
            Some(log) => {
                self.counts.missed_at_last_take.store(
                    self.counts.missed.load(Ordering::Acquire),
                    Ordering::Release,
                );
                Some(Delivery::Log(log))
            }
            None if self.counts.dropped.swap(false, Ordering::AcqRel) => Some(Delivery::Dropped),
            None => None,
        }
    }
}

/// What a reader shares with the subscriptions.
struct Reader {
    hub: Hub,
    /// Wakes it when someone subscribes.
    wake: Arc<Notify>,
    /// Whether it holds a position it keeps while anyone subscribes.
    positioned: watch::Sender<bool>,
}

/// The id of the last entry of stream `key`, `0-0` when it has none.
async fn end_of(redis: &mut Redis, key: &str) -> redis::RedisResult<String> {
    let last: StreamRangeReply =
        redis::AsyncCommands::xrevrange_count(redis, key, "+", "-", 1).await?;
    Ok(last
        .ids
        .into_iter()
        .next()
        .map_or_else(|| "0-0".to_owned(), |entry| entry.id))
}

/// Follows the stream `key` from its end while anyone subscribes, and hands every log
/// of every entry to the hub.
async fn read(target: RedisTarget, key: String, reader: Reader, shutdown: CancellationToken) {
    let Reader {
        hub,
        wake,
        positioned,
    } = reader;
    let mut redis: Option<Redis> = None;
    // The id of the last entry read, None while idle.
    let mut last: Option<String> = None;
    while !shutdown.is_cancelled() {
        // Listening before looking, so a subscriber that comes in between wakes it.
        let woken = wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if hub.count() == 0 {
            // It says it holds no position, then looks again: a subscriber that came
            // before this second look keeps the position, and one that comes after it
            // sees "no" and waits for the next.
            positioned.send_replace(false);
            if hub.count() == 0 {
                // Nobody listens: start from the end again once someone does.
                last = None;
                shutdown.run_until_cancelled(woken).await;
                continue;
            }
        }
        let connection = match &mut redis {
            Some(connection) => connection,
            None => match target.connect(READ_BLOCK + Duration::from_secs(5)).await {
                Ok(connection) => redis.insert(connection),
                Err(error) => {
                    warn!(%error, stream = %key, "tail: cannot connect to Redis; retrying");
                    shutdown
                        .run_until_cancelled(tokio::time::sleep(RETRY))
                        .await;
                    continue;
                }
            },
        };
        let options = StreamReadOptions::default()
            .count(READ_COUNT)
            .block(READ_BLOCK.as_millis() as usize);
        let read = shutdown
            .run_until_cancelled(async {
                let from = match last.take() {
                    Some(id) => id,
                    None => end_of(connection, &key).await?,
                };
                let from = last.insert(from);
                positioned.send_replace(true);
                redis::AsyncCommands::xread_options::<_, _, Option<StreamReadReply>>(
                    connection,
                    &[&key],
                    &[from.as_str()],
                    &options,
                )
                .await
            })
            .await;
        let reply = match read {
            None => return,
            Some(Ok(reply)) => reply,
            Some(Err(error)) => {
                warn!(%error, stream = %key, "tail: reading the stream failed; retrying");
                redis = None;
                shutdown
                    .run_until_cancelled(tokio::time::sleep(RETRY))
                    .await;
                continue;
            }
        };
        let mut logs = Vec::new();
        for entry in reply
            .into_iter()
            .flat_map(|reply| reply.keys)
            .flat_map(|key| key.ids)
        {
            last = Some(entry.id.clone());
            let fields: Vec<(&str, Vec<u8>)> = entry
                .map
                .iter()
                .filter_map(|(name, value)| match value {
                    redis::Value::BulkString(bytes) => Some((name.as_str(), bytes.clone())),
                    _ => None,
                })
                .collect();
            // An entry this build cannot read is the workers' to set aside; the tail
            // skips it.
            let Ok(decoded) = codec::decode(&fields) else {
                continue;
            };
            let ids = codec::log_ids(&entry.id, decoded.logs.len());
            for (record, message_id) in decoded.logs.into_iter().zip(ids) {
                logs.push(Arc::new(TailLog {
                    tenant: decoded.tenant.as_str().to_owned(),
                    message_id,
                    record,
                    created_at: decoded.received_at,
                    json: OnceLock::new(),
                }));
            }
        }
        hub.dispatch(&logs);
    }
}

/// The query string of a tail.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TailParams {
    /// Only this device's logs.
    device_id: Option<String>,
    /// Only this service's logs.
    service_name: Option<String>,
    /// Only this trace's logs.
    trace_id: Option<String>,
    /// Only these levels: repeat the parameter or separate them with commas.
    #[param(value_type = Option<Vec<LogLevel>>, style = Form, explode = true)]
    #[serde(default)]
    level: Vec<String>,
    /// Words and "quoted phrases" the message must all hold, case-insensitively.
    q: Option<String>,
}

/// What one subscriber wants.
#[derive(Debug, Clone)]
struct Filter {
    tenant: String,
    subjects: Vec<Subject>,
    levels: Vec<LogLevel>,
    terms: Vec<String>,
}

impl Filter {
    fn parse(tenant: &str, query: Option<&str>) -> Result<Self> {
        let params: TailParams =
            serde_html_form::from_str(query.unwrap_or_default()).map_err(|error| {
                Error::InvalidQuery(format!("the query string is invalid: {error}"))
            })?;
        let subjects =
            Subject::those_given(params.device_id, params.service_name, params.trace_id)?;
        Ok(Self {
            tenant: tenant.to_owned(),
            subjects,
            levels: parse_levels(&params.level)?,
            terms: params
                .q
                .as_deref()
                .map(terms)
                .transpose()?
                .unwrap_or_default()
                .into_iter()
                .map(|term| term.to_lowercase())
                .collect(),
        })
    }

    fn matches(&self, log: &TailLog) -> bool {
        let record = &log.record;
        log.tenant == self.tenant
            && self.subjects.iter().all(|subject| match subject {
                Subject::Device(device) => record.device_id.as_str() == device,
                Subject::Service(service) => record
                    .service_name
                    .as_ref()
                    .is_some_and(|name| name.as_str() == service),
                Subject::Trace(trace) => record
                    .trace_id
                    .as_ref()
                    .is_some_and(|id| id.as_str() == trace),
            })
            && (self.levels.is_empty() || self.levels.contains(&record.log_level))
            && (self.terms.is_empty() || {
                let message = record.message.as_str().to_lowercase();
                self.terms
                    .iter()
                    .all(|term| message.contains(term.as_str()))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(tenant: &str, device: &str, level: &str, message: &str) -> TailLog {
        TailLog {
            tenant: tenant.to_owned(),
            message_id: "1-0".to_owned(),
            record: serde_json::from_value(serde_json::json!({
                "device_id": device, "log_level": level, "message": message,
            }))
            .unwrap(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            json: OnceLock::new(),
        }
    }

    #[test]
    fn a_filter_keeps_its_tenants_matching_logs() {
        let filter = Filter::parse(
            "acme",
            Some("device_id=pump-7&level=ERROR,CRITICAL&q=Pressure%20%22valve%203%22"),
        )
        .unwrap();
        assert!(filter.matches(&log("acme", "pump-7", "ERROR", "PRESSURE at valve 3")));
        assert!(!filter.matches(&log("globex", "pump-7", "ERROR", "pressure at valve 3")));
        assert!(!filter.matches(&log("acme", "pump-8", "ERROR", "pressure at valve 3")));
        assert!(!filter.matches(&log("acme", "pump-7", "INFO", "pressure at valve 3")));
        assert!(!filter.matches(&log("acme", "pump-7", "ERROR", "pressure, valve 4")));
    }

    fn filter(tenant: &str, query: &str) -> Filter {
        Filter::parse(tenant, Some(query)).unwrap()
    }

    #[test]
    fn a_log_costs_only_the_subscribers_that_can_want_it() {
        let hub = Hub::default();
        let _held: Vec<Subscription> = (0..100)
            .map(|_| hub.subscribe(filter("globex", "")))
            .chain((0..100).map(|n| hub.subscribe(filter("acme", &format!("device_id=pump-{n}")))))
            .chain([
                hub.subscribe(filter("acme", "service_name=billing")),
                hub.subscribe(filter("acme", "level=ERROR")),
            ])
            .collect();
        assert_eq!(hub.count(), 202);
        let registry = hub.registry.read().unwrap();
        let looked_at = |log: &TailLog| {
            registry
                .tenants
                .get(&log.tenant)
                .map_or(0, |tenant| tenant.candidates(log).count())
        };
        // pump-7's subscriber and the one that names no device; not globex's hundred,
        // not the other pumps', not billing's.
        assert_eq!(looked_at(&log("acme", "pump-7", "INFO", "m")), 2);
        assert_eq!(looked_at(&log("initech", "pump-7", "INFO", "m")), 0);
        assert_eq!(looked_at(&log("globex", "pump-7", "INFO", "m")), 100);
    }

    #[tokio::test]
    async fn a_subscriber_that_stops_reading_is_told_what_it_missed_then_dropped() {
        let hub = Hub::default();
        let mut reading = hub.subscribe(filter("acme", ""));
        let mut sleeping = hub.subscribe(filter("acme", ""));
        let logs: Vec<Arc<TailLog>> = (0..64)
            .map(|_| Arc::new(log("acme", "pump-7", "INFO", "m")))
            .collect();
        let mut sent = 0;
        while sent < QUEUE as u64 + DROP_AFTER + 64 {
            hub.dispatch(&logs);
            sent += logs.len() as u64;
            // The reading one keeps up.
            while let Ok(log) = reading.queue.try_recv() {
                assert_eq!(log.tenant, "acme");
            }
        }
        assert_eq!(hub.count(), 1, "the sleeper is out of the hub");
        assert!(matches!(
            sleeping.next().await,
            Some(Delivery::Missed(count)) if count == DROP_AFTER + 1
        ));
        let mut queued = 0;
        let last = loop {
            match sleeping.next().await {
                Some(Delivery::Log(_)) => queued += 1,
                other => break other,
            }
        };
        assert_eq!(queued, QUEUE, "it had its queue");
        assert!(matches!(last, Some(Delivery::Dropped)), "{last:?}");
        assert!(sleeping.next().await.is_none());
        drop(reading);
        assert_eq!(hub.count(), 0);
        assert!(hub.registry.read().unwrap().tenants.is_empty());
    }

    #[test]
    fn unknown_parameters_are_refused() {
        let error = Filter::parse("acme", Some("regex=(a%2B)%2B"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `regex`"), "{error}");
    }
}

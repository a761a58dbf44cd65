//! `GET /api/logs/tail`: the logs the pipeline accepts, live, as Server-Sent Events,
//! read from the Redis Stream the api writes and never from PostgreSQL.
//!
//! One reader per api process and shard follows the stream with `XREAD` (not the
//! workers' consumer group, which it leaves alone) while anyone subscribes, and puts each
//! log on one broadcast ring of [`RING`] logs. Every subscriber reads the ring with its
//! own filter and position: a slow one falls behind, is told how many logs it missed
//! (an event `missed`), and goes on from the oldest log still held. It never holds up the
//! others, and the ring's memory is fixed however many subscribe or stop reading.
//!
//! A subscription starts exactly: its answer begins once every reader holds a position in
//! its stream (an entry id, never `$`) that it keeps while anyone subscribes, so every log
//! the pipeline accepts after that is delivered.
//!
//! Each event `log` is a log as the queries return it, with its `message_id`; a
//! subscriber sees only its tenant's logs. Filters: `device_id`, `service_name`,
//! `trace_id`, `level` and `q` (words and "quoted phrases", as in a search).

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use logpipeline_core::codec;
use logpipeline_core::connection::{Redis, RedisTarget};
use logpipeline_core::record::{LogLevel, LogRecord};
use logpipeline_core::stream::Shards;
use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use tokio::sync::{Notify, Semaphore, broadcast, watch};
use tokio_util::sync::CancellationToken;
use tracing::warn;
use utoipa::IntoParams;

use crate::auth::Principal;
use crate::error::{Error, ErrorBody, Result};
use crate::read::filter::{Subject, parse_levels, terms};
use crate::state::AppState;

/// Logs the broadcast ring holds: how far a subscriber may fall behind before it misses
/// logs.
pub const RING: usize = 16_384;
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
    ring: broadcast::Sender<Arc<TailLog>>,
    subscribers: Arc<Semaphore>,
    max_subscribers: usize,
    /// Wakes idle readers when someone subscribes.
    wake: Arc<Notify>,
    /// Each reader's: whether it holds a position it keeps while anyone subscribes.
    positioned: Vec<watch::Receiver<bool>>,
    shutdown: CancellationToken,
}

impl Tail {
    /// Starts a reader for each of `shards` on `target`; they read while anyone
    /// subscribes (at most `max_subscribers` at once), and stop with `shutdown`, as do
    /// the subscriptions.
    pub fn start(
        target: &RedisTarget,
        shards: &Shards,
        max_subscribers: usize,
        shutdown: CancellationToken,
    ) -> Self {
        let (ring, _) = broadcast::channel(RING);
        let wake = Arc::new(Notify::new());
        let positioned = shards
            .keys()
            .iter()
            .map(|key| {
                let (positioned, watched) = watch::channel(false);
                tokio::spawn(read(
                    target.clone(),
                    key.clone(),
                    Reader {
                        ring: ring.clone(),
                        wake: wake.clone(),
                        positioned,
                    },
                    shutdown.clone(),
                ));
                watched
            })
            .collect();
        Self {
            ring,
            subscribers: Arc::new(Semaphore::new(max_subscribers)),
            max_subscribers,
            wake,
            positioned,
            shutdown,
        }
    }

    /// Subscribes to the ring, and returns once every reader holds a position it keeps
    /// while this subscription lasts (or after [`START`], if Redis is away): every log
    /// accepted after that reaches the receiver.
    async fn subscribe(&self) -> broadcast::Receiver<Arc<TailLog>> {
        let receiver = self.ring.subscribe();
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
        receiver
    }
}

/// What a reader shares with the subscriptions.
struct Reader {
    ring: broadcast::Sender<Arc<TailLog>>,
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

/// Follows the stream `key` from its end while the ring has receivers, and puts every
/// log of every entry on it.
async fn read(target: RedisTarget, key: String, reader: Reader, shutdown: CancellationToken) {
    let Reader {
        ring,
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
        if ring.receiver_count() == 0 {
            // It says it holds no position, then looks again: a subscriber that came
            // before this second look keeps the position, and one that comes after it
            // sees "no" and waits for the next.
            positioned.send_replace(false);
            if ring.receiver_count() == 0 {
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
                // No receiver left is no error: the next round goes idle.
                let _ = ring.send(Arc::new(TailLog {
                    tenant: decoded.tenant.as_str().to_owned(),
                    message_id,
                    record,
                    created_at: decoded.received_at,
                    json: OnceLock::new(),
                }));
            }
        }
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

/// The key's tenant's logs as the pipeline accepts them, live, as Server-Sent Events:
/// an event `log` per log (JSON, as the queries return it, with its `message_id`), and
/// an event `missed` with how many logs went by while the subscriber read too slowly.
/// Read from the Redis Stream, never from PostgreSQL.
#[utoipa::path(
    get,
    path = "/api/logs/tail",
    tag = "query",
    params(TailParams),
    security(("bearer" = ["read"]), ("api_key" = ["read"])),
    responses(
        (status = 200, description = "A stream of events `log` and `missed`", content_type = "text/event-stream", body = String),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `read` scope", body = ErrorBody),
        (status = 422, description = "An invalid parameter", body = ErrorBody),
        (status = 429, description = "The api has as many tail subscribers as it takes", body = ErrorBody),
    )
)]
pub async fn tail(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    RawQuery(query): RawQuery,
) -> Result<Sse<impl Stream<Item = std::result::Result<Event, Infallible>>>> {
    let filter = Filter::parse(principal.tenant.as_str(), query.as_deref())?;
    let tail = &state.tail;
    let permit = tail
        .subscribers
        .clone()
        .try_acquire_owned()
        .map_err(|_| Error::TailFull {
            limit: tail.max_subscribers,
        })?;
    let receiver = tail.subscribe().await;
    let events = futures::stream::unfold(
        (receiver, filter, permit),
        |(mut receiver, filter, permit)| async move {
            loop {
                let event = match receiver.recv().await {
                    // A log always serializes; were it not to, the subscriber is told
                    // it missed one.
                    Ok(log) if filter.matches(&log) => match log.json() {
                        Some(json) => Event::default().event("log").data(json),
                        None => Event::default().event("missed").data("1"),
                    },
                    Ok(_) => continue,
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        Event::default().event("missed").data(missed.to_string())
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                };
                return Some((Ok(event), (receiver, filter, permit)));
            }
        },
    );
    let shutdown = tail.shutdown.clone();
    Ok(Sse::new(futures::StreamExt::take_until(
        events,
        shutdown.cancelled_owned(),
    ))
    .keep_alive(KeepAlive::default()))
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

    #[test]
    fn unknown_parameters_are_refused() {
        let error = Filter::parse("acme", Some("regex=(a%2B)%2B"))
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `regex`"), "{error}");
    }
}

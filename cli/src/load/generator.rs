//! Sending the requests: one task per connection, each a raw HTTP/1.1 client
//! connection (hyper, no pool) or a gRPC channel of its own (one HTTP/2 connection),
//! taking the next request number from a counter shared with the others.
//!
//! With several stream shards in open loop, the connections are split into one lane a
//! shard, and each takes only the requests of its shard's devices (as devices, each on a
//! connection of its own, would send): a shard whose requests wait, or are retried, holds
//! only its own lane's connections, and the others' latency still measures their shards.
//!
//! In open loop a request waits for its intended send time; its latency is measured
//! from that time, so requests delayed because every connection was busy count the
//! delay. When the connection was idle and the task slept, latency is measured from the
//! wake-up instead, so the timer's own granularity is not charged to the server.
//! By default nothing is retried: the generator measures the api's answers, and a retry
//! would mix two requests into one latency. With `--retry` it is a careful client
//! instead: each request carries an `Idempotency-Key` (`<run>-<n>`), and one whose logs
//! may or may not be stored is sent again with the same key until it is accepted or
//! refused, its latency running from its intended send time to the last answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, RETRY_AFTER};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use logpipeline_proto::v1::log_service_client::LogServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use prost::Message;
use serde::Deserialize;
use serde::de::IgnoredAny;
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use super::body::Bodies;
use super::ledger::Fate;
use super::phases::{Finished, Phases};
use super::plan::{Plan, Protocol, Target};
use super::schedule::Schedule;

/// Causes of a request without a usable answer, as named in the report.
pub const FAILURE_CAUSES: [&str; 4] = ["timeout", "connect", "io", "bad_answer"];

/// What happened to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// 200 with the expected number of message ids.
    Accepted,
    /// Any other status.
    Answered {
        status: StatusCode,
        /// The seconds of its `Retry-After`, when it has one.
        retry_after: Option<u32>,
    },
    /// No usable answer; the index into [`FAILURE_CAUSES`].
    Failed(usize),
}

const TIMEOUT: usize = 0;
const CONNECT: usize = 1;
const IO: usize = 2;
const BAD_ANSWER: usize = 3;

/// Running totals, shared by the connection tasks.
#[derive(Debug)]
pub struct Counters {
    requests: AtomicU64,
    accepted: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
    retries: AtomicU64,
    statuses: Box<[AtomicU64]>,
    failures: [AtomicU64; FAILURE_CAUSES.len()],
    last_accepted_micros: AtomicU64,
}

/// A snapshot of the [`Counters`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Requests sent.
    pub requests: u64,
    /// Requests answered 200.
    pub accepted_requests: u64,
    /// Requests answered 503 with `Retry-After`.
    pub refused_requests: u64,
    /// Requests that failed otherwise.
    pub errors: u64,
    /// Attempts sent again (with `--retry`), beyond each request's first.
    pub retries: u64,
    /// Answers by status code, of every attempt.
    pub statuses: Vec<(u16, u64)>,
    /// Failures by cause, as in [`FAILURE_CAUSES`].
    pub failures: Vec<(&'static str, u64)>,
    /// When the last 200 came, since the start; `None` if none did.
    pub last_accepted: Option<Duration>,
}

impl Counters {
    fn new() -> Self {
        Self {
            requests: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            statuses: (0..1000).map(|_| AtomicU64::new(0)).collect(),
            failures: std::array::from_fn(|_| AtomicU64::new(0)),
            last_accepted_micros: AtomicU64::new(0),
        }
    }

    /// Counts `outcome` of a request answered `since_start` after the run began, and
    /// returns its fate unless it was accepted.
    fn count(&self, outcome: Outcome, since_start: Duration) -> Option<Fate> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Accepted => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                self.statuses[200].fetch_add(1, Ordering::Relaxed);
                self.last_accepted_micros
                    .fetch_max(since_start.as_micros() as u64, Ordering::Relaxed);
                None
            }
            Outcome::Answered {
                status,
                retry_after,
            } => {
                self.count_answer(status);
                if status == StatusCode::SERVICE_UNAVAILABLE && retry_after.is_some() {
                    self.refused.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.errors.fetch_add(1, Ordering::Relaxed);
                }
                Some(if status.is_client_error() {
                    Fate::Rejected
                } else {
                    Fate::Unconfirmed
                })
            }
            Outcome::Failed(cause) => {
                self.failures[cause].fetch_add(1, Ordering::Relaxed);
                self.errors.fetch_add(1, Ordering::Relaxed);
                Some(Fate::Unconfirmed)
            }
        }
    }

    /// Counts an attempt that is sent again: its answer, and the retry.
    fn count_retried(&self, outcome: Outcome) {
        self.retries.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Accepted => self.count_answer(StatusCode::OK),
            Outcome::Answered { status, .. } => self.count_answer(status),
            Outcome::Failed(cause) => {
                self.failures[cause].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn count_answer(&self, status: StatusCode) {
        if let Some(count) = self.statuses.get(usize::from(status.as_u16())) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The totals now.
    pub fn tally(&self) -> Tally {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let accepted_requests = load(&self.accepted);
        Tally {
            requests: load(&self.requests),
            accepted_requests,
            refused_requests: load(&self.refused),
            errors: load(&self.errors),
            retries: load(&self.retries),
            statuses: (0..self.statuses.len())
                .filter_map(|code| {
                    let count = load(&self.statuses[code]);
                    (count > 0).then_some((code as u16, count))
                })
                .collect(),
            failures: FAILURE_CAUSES
                .iter()
                .zip(&self.failures)
                .map(|(cause, count)| (*cause, load(count)))
                .filter(|(_, count)| *count > 0)
                .collect(),
            last_accepted: (accepted_requests > 0)
                .then(|| Duration::from_micros(load(&self.last_accepted_micros))),
        }
    }
}

/// Latencies in microseconds, from 1 µs to an hour (longer is recorded as an hour).
///
/// One histogram for all connections: recording is a few nanoseconds under an
/// uncontended lock, where a histogram per connection would cost a merge of hundreds of
/// them for every progress line.
#[derive(Debug)]
pub struct Latencies(Mutex<Histogram<u64>>);

impl Latencies {
    fn new() -> anyhow::Result<Self> {
        Ok(Self(Mutex::new(Histogram::new_with_bounds(
            1,
            3_600_000_000,
            3,
        )?)))
    }

    fn record(&self, latency: Duration) {
        self.lock()
            .saturating_record(latency.as_micros().try_into().unwrap_or(u64::MAX));
    }

    /// A copy of the histogram so far.
    pub fn snapshot(&self) -> Histogram<u64> {
        self.lock().clone()
    }

    /// The `quantile` of the latencies so far, in microseconds.
    pub fn quantile(&self, quantile: f64) -> u64 {
        self.lock().value_at_quantile(quantile)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Histogram<u64>> {
        // Recording cannot leave the histogram half-updated: a poisoned lock is usable.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What every connection task shares.
struct Shared {
    plan: Plan,
    schedule: Schedule,
    bodies: Bodies,
    lanes: Vec<Lane>,
    counters: Arc<Counters>,
    latencies: Arc<Latencies>,
    phases: Option<Arc<Phases>>,
}

/// A run in progress: the connection tasks and what they measure.
pub struct Generator {
    /// The connection tasks; each returns the fates of its requests that were not
    /// accepted.
    pub tasks: JoinSet<Vec<(u64, Fate)>>,
    /// Their totals.
    pub counters: Arc<Counters>,
    /// Their latencies.
    pub latencies: Arc<Latencies>,
    /// Their figures by phase, when the plan has phases.
    pub phases: Option<Arc<Phases>>,
    shared: Arc<Shared>,
}

impl Generator {
    /// Starts `plan`'s connections on the current runtime, sending from now on.
    pub fn start(plan: &Plan) -> anyhow::Result<Self> {
        let counters = Arc::new(Counters::new());
        let latencies = Arc::new(Latencies::new()?);
        let phases = match plan.phase {
            Some(length) => Some(Arc::new(Phases::new(length, plan.shards())?)),
            None => None,
        };
        let shared = Arc::new(Shared {
            plan: plan.clone(),
            schedule: Schedule::new(Instant::now(), plan.stop, plan.requests_per_sec),
            bodies: Bodies::new(&plan.run, plan.logs_per_request, plan.message_bytes),
            lanes: Lane::of(plan),
            counters: counters.clone(),
            latencies: latencies.clone(),
            phases: phases.clone(),
        });
        let mut tasks = JoinSet::new();
        for index in 0..plan.connections as usize {
            tasks.spawn(connection(shared.clone(), index % shared.lanes.len()));
        }
        Ok(Self {
            tasks,
            counters,
            latencies,
            phases,
            shared,
        })
    }

    /// When sending began.
    pub fn start_time(&self) -> Instant {
        self.shared.schedule.start()
    }

    /// Once every connection has ended, a bound on the requests of the run: every
    /// request below it was sent or has a fate, and none at or above it was sent.
    pub fn issued(&self) -> u64 {
        match self.shared.lanes.as_slice() {
            // Every number below the counter was handed out; those past the end have
            // the fate `NotSent`.
            [all] => all.taken.load(Ordering::Relaxed),
            // A lane sends its requests in order up to the first past the end, and in
            // open loop whether a request is past the end depends on its number only:
            // the first any lane found past the end is the first of the run.
            lanes => lanes
                .iter()
                .map(|lane| lane.ended.load(Ordering::Relaxed))
                .min()
                .unwrap_or(0),
        }
    }
}

/// The requests some of the connections take in turn, each number once.
struct Lane {
    /// The devices whose requests the lane sends, in order; empty for every device.
    devices: Vec<u64>,
    /// The run's devices.
    of: u64,
    /// Numbers taken so far.
    taken: AtomicU64,
    /// The least request found past the end of the run.
    ended: AtomicU64,
}

impl Lane {
    /// One lane of every request; or, with several shards in open loop and a connection
    /// at least for each, a lane a shard that has devices.
    fn of(plan: &Plan) -> Vec<Self> {
        let lane = |devices| Self {
            devices,
            of: plan.devices,
            taken: AtomicU64::new(0),
            ended: AtomicU64::new(u64::MAX),
        };
        let by_shard: Vec<Vec<u64>> = (0..plan.shards())
            .map(|shard| {
                (0..plan.devices)
                    .filter(|&device| plan.device_shards.get(device as usize) == Some(&shard))
                    .collect()
            })
            .filter(|devices: &Vec<u64>| !devices.is_empty())
            .collect();
        let open_loop = plan.requests_per_sec.is_some();
        if open_loop && by_shard.len() > 1 && by_shard.len() <= plan.connections as usize {
            by_shard.into_iter().map(lane).collect()
        } else {
            vec![lane(Vec::new())]
        }
    }

    /// The lane's next request number.
    fn take(&self) -> u64 {
        let taken = self.taken.fetch_add(1, Ordering::Relaxed);
        if self.devices.is_empty() {
            return taken;
        }
        let per_round = self.devices.len() as u64;
        taken / per_round * self.of + self.devices[(taken % per_round) as usize]
    }
}

/// Sends requests on one connection until the schedule ends; returns the fates of the
/// requests that were not accepted.
async fn connection(shared: Arc<Shared>, lane: usize) -> Vec<(u64, Fate)> {
    let lane = &shared.lanes[lane];
    let mut fates = Vec::new();
    let mut sender = match shared.plan.target.protocol {
        Protocol::Http | Protocol::Otlp => Sender::Http(None),
        Protocol::Grpc => match grpc_channel(&shared.plan.target) {
            Ok(client) => Sender::Grpc(client),
            Err(_) => Sender::Http(None),
        },
    };
    loop {
        let n = lane.take();
        let Some(due) = shared.schedule.due(n, Instant::now()) else {
            lane.ended.fetch_min(n, Ordering::Relaxed);
            fates.push((n, Fate::NotSent));
            return fates;
        };
        let mut measured_from = due;
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
            measured_from = Instant::now();
        }
        let (device, first_seq) = shared.plan.logs_of(n);
        let idempotency_key = shared
            .plan
            .retry_for
            .map(|_| format!("{}-{n}", shared.plan.run));
        let mut retries = 0;
        let mut backoff = backoff();
        let outcome = loop {
            let outcome = attempt(
                &shared,
                &mut sender,
                device,
                first_seq,
                idempotency_key.as_deref(),
            )
            .await;
            let again = shared
                .plan
                .retry_for
                .zip(retry_delay(outcome, &mut backoff))
                .filter(|&(window, delay)| Instant::now() + delay < due + window);
            let Some((_, delay)) = again else {
                break outcome;
            };
            shared.counters.count_retried(outcome);
            retries += 1;
            tokio::time::sleep(delay).await;
        };
        let answered = Instant::now();
        let latency = answered.saturating_duration_since(measured_from);
        if due >= shared.schedule.start() + shared.plan.warmup {
            shared.latencies.record(latency);
        }
        if let Some(phases) = &shared.phases {
            let finished = Finished {
                due: due.saturating_duration_since(shared.schedule.start()),
                latency,
                retries,
                accepted: outcome == Outcome::Accepted,
                shard: shared.plan.device_shards.get(device as usize).copied(),
            };
            phases.record(finished);
        }
        let since_start = answered.saturating_duration_since(shared.schedule.start());
        if let Some(fate) = shared.counters.count(outcome, since_start) {
            fates.push((n, fate));
        }
        if matches!(outcome, Outcome::Failed(CONNECT)) {
            // Do not spin while the server is unreachable.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Sends request `n`'s logs once on `sender`, within the plan's timeout.
async fn attempt(
    shared: &Shared,
    sender: &mut Sender,
    device: u64,
    first_seq: u64,
    idempotency_key: Option<&str>,
) -> Outcome {
    let expected_ids = shared.plan.logs_per_request as usize;
    let target = &shared.plan.target;
    let outcome = match sender {
        Sender::Http(http) => {
            let body = match target.protocol {
                Protocol::Otlp => shared.bodies.otlp_request(device, first_seq),
                _ => shared.bodies.request(device, first_seq),
            };
            let exchange = exchange(http, target, body, idempotency_key, expected_ids);
            tokio::time::timeout(shared.plan.timeout, exchange).await
        }
        Sender::Grpc(client) => {
            let mut request = shared.bodies.grpc_request(device, first_seq);
            if let Some(key) = idempotency_key {
                key.clone_into(&mut request.idempotency_key);
            }
            let exchange = grpc_exchange(client, target, request, expected_ids);
            tokio::time::timeout(shared.plan.timeout, exchange).await
        }
    }
    .unwrap_or(Outcome::Failed(TIMEOUT));
    if matches!(outcome, Outcome::Failed(_))
        && let Sender::Http(http) = sender
    {
        // The connection's state is unknown: open a new one for the next request.
        *http = None;
    }
    outcome
}

/// A careful client's waits between one request's tries when the api names none:
/// exponential from 100 ms to 800 ms, each plus up to as much again at random (so that
/// clients refused together do not come back together), for as long as it retries.
fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_millis(800))
        .with_jitter()
        .without_max_times()
        .build()
}

/// How long a careful client waits before sending again what `outcome` answered: the
/// `Retry-After` of a 5xx or 429 (at most 5 s), else the next of `backoff`; `None` when
/// it must not (accepted, or refused for good).
fn retry_delay(outcome: Outcome, backoff: &mut impl Iterator<Item = Duration>) -> Option<Duration> {
    match outcome {
        Outcome::Accepted => None,
        Outcome::Answered {
            status,
            retry_after: Some(secs),
        } if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => {
            Some(Duration::from_secs(u64::from(secs)).min(Duration::from_secs(5)))
        }
        Outcome::Answered { status, .. } if !status.is_server_error() => None,
        Outcome::Answered { .. } | Outcome::Failed(_) => backoff.next(),
    }
}

/// A connection task's way to the api.
enum Sender {
    /// An HTTP/1.1 connection, opened when needed.
    Http(Option<SendRequest<Full<Bytes>>>),
    /// A gRPC channel: one HTTP/2 connection, which reconnects by itself.
    Grpc(LogServiceClient<Channel>),
}

/// A gRPC client of `target` on a channel of its own.
fn grpc_channel(target: &Target) -> anyhow::Result<LogServiceClient<Channel>> {
    let channel = Channel::from_shared(format!("http://{}", target.authority))?
        .tcp_nodelay(true)
        .connect_lazy();
    Ok(LogServiceClient::new(channel))
}

/// Sends one `BatchWriteLogs` on `client`.
async fn grpc_exchange(
    client: &mut LogServiceClient<Channel>,
    target: &Target,
    request: logpipeline_proto::v1::BatchWriteLogsRequest,
    expected_ids: usize,
) -> Outcome {
    let mut request = tonic::Request::new(request);
    if let Some(authorization) = &target.authorization
        && let Ok(value) = authorization.parse()
    {
        request.metadata_mut().insert("authorization", value);
    }
    match client.batch_write_logs(request).await {
        Ok(answer) => {
            let answer = answer.into_inner();
            if usize::try_from(answer.success_count) == Ok(expected_ids) {
                Outcome::Accepted
            } else {
                Outcome::Failed(BAD_ANSWER)
            }
        }
        Err(status) => grpc_outcome(&status),
    }
}

/// The outcome of a gRPC error, under the HTTP status of the same meaning, so that the
/// report counts both protocols alike.
fn grpc_outcome(status: &tonic::Status) -> Outcome {
    use tonic::Code;
    let retry_after = status
        .metadata()
        .contains_key("grpc-status-details-bin")
        .then_some(1);
    let status = match status.code() {
        Code::InvalidArgument => StatusCode::UNPROCESSABLE_ENTITY,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        // Refusals with a delay to retry after, as a 503 with Retry-After is.
        Code::ResourceExhausted | Code::Unavailable if retry_after.is_some() => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => return Outcome::Failed(CONNECT),
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Cancelled | Code::Unknown => return Outcome::Failed(IO),
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Outcome::Answered {
        status,
        retry_after,
    }
}

/// Sends one request on `sender`, connecting first when there is none.
async fn exchange(
    sender: &mut Option<SendRequest<Full<Bytes>>>,
    target: &Target,
    body: Bytes,
    idempotency_key: Option<&str>,
    expected_ids: usize,
) -> Outcome {
    if sender.as_ref().is_none_or(SendRequest::is_closed) {
        match connect(target).await {
            Ok(connected) => *sender = Some(connected),
            Err(_) => return Outcome::Failed(CONNECT),
        }
    }
    let Some(sender) = sender.as_mut() else {
        return Outcome::Failed(CONNECT);
    };
    let mut request = Request::post(target.path.as_str())
        .header(HOST, target.authority.as_str())
        .header(CONTENT_TYPE, content_type(target.protocol));
    if let Some(authorization) = &target.authorization {
        request = request.header(AUTHORIZATION, authorization.as_str());
    }
    if let Some(key) = idempotency_key {
        request = request.header("idempotency-key", key);
    }
    let Ok(request) = request.body(Full::new(body)) else {
        return Outcome::Failed(IO);
    };
    if sender.ready().await.is_err() {
        return Outcome::Failed(IO);
    }
    let Ok(response) = sender.send_request(request).await else {
        return Outcome::Failed(IO);
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get(RETRY_AFTER)
        .and_then(|value| value.to_str().ok()?.trim().parse().ok());
    let Ok(answer) = response.into_body().collect().await else {
        return Outcome::Failed(IO);
    };
    if status != StatusCode::OK {
        return Outcome::Answered {
            status,
            retry_after,
        };
    }
    let accepted = match target.protocol {
        Protocol::Otlp => ExportLogsServiceResponse::decode(answer.to_bytes())
            .is_ok_and(|answer| answer.partial_success.is_none()),
        _ => message_ids(&answer.to_bytes()) == Some(expected_ids),
    };
    if accepted {
        Outcome::Accepted
    } else {
        Outcome::Failed(BAD_ANSWER)
    }
}

/// The content type of `protocol`'s HTTP bodies.
fn content_type(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Otlp => "application/x-protobuf",
        _ => "application/json",
    }
}

/// The ids in an answer of the api (`message_id` or `message_ids`), without copying them.
#[derive(Deserialize)]
struct Answer {
    message_id: Option<IgnoredAny>,
    #[serde(default)]
    message_ids: Vec<IgnoredAny>,
}

/// How many message ids an answer holds, or `None` when it is not an answer.
fn message_ids(answer: &[u8]) -> Option<usize> {
    let answer: Answer = serde_json::from_slice(answer).ok()?;
    Some(usize::from(answer.message_id.is_some()) + answer.message_ids.len())
}

async fn connect(target: &Target) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(target.authority.as_str()).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    // The connection ends when the sender is dropped or the server closes it; either
    // way the next request notices through the sender.
    tokio::spawn(connection);
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_counted_by_their_message_ids() {
        assert_eq!(
            message_ids(br#"{"status":"received","message_id":"1-0","received_at":"x"}"#),
            Some(1)
        );
        assert_eq!(
            message_ids(br#"{"status":"received","count":2,"message_ids":["1-0.0","1-0.1"]}"#),
            Some(2)
        );
        assert_eq!(message_ids(b"<html>"), None);
    }

    #[test]
    fn a_careful_client_retries_only_what_may_not_be_stored() {
        let answered = |status, retry_after| Outcome::Answered {
            status,
            retry_after,
        };
        let backoff = || [Duration::from_millis(150)].into_iter();
        assert_eq!(retry_delay(Outcome::Accepted, &mut backoff()), None);
        assert_eq!(
            retry_delay(
                answered(StatusCode::UNPROCESSABLE_ENTITY, None),
                &mut backoff()
            ),
            None
        );
        assert_eq!(
            retry_delay(
                answered(StatusCode::TOO_MANY_REQUESTS, None),
                &mut backoff()
            ),
            None
        );
        assert_eq!(
            retry_delay(
                answered(StatusCode::TOO_MANY_REQUESTS, Some(1)),
                &mut backoff()
            ),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            retry_delay(
                answered(StatusCode::SERVICE_UNAVAILABLE, Some(60)),
                &mut backoff()
            ),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            retry_delay(answered(StatusCode::GATEWAY_TIMEOUT, None), &mut backoff()),
            Some(Duration::from_millis(150))
        );
        assert_eq!(
            retry_delay(Outcome::Failed(TIMEOUT), &mut backoff()),
            Some(Duration::from_millis(150))
        );
    }

    #[test]
    fn lanes_take_each_request_of_their_shards_devices_once_in_order() {
        let args = [
            "--devices",
            "8",
            "--stream-shards",
            "3",
            "--connections",
            "6",
        ];
        let open =
            crate::load::plan::tests::plan(&[&args[..], &["--rate", "1000"]].concat()).unwrap();
        let lanes = Lane::of(&open);
        let shards: std::collections::BTreeSet<usize> =
            open.device_shards.iter().copied().collect();
        assert!(shards.len() > 1, "{:?}", open.device_shards);
        assert_eq!(lanes.len(), shards.len());
        let mut taken = std::collections::BTreeSet::new();
        for lane in &lanes {
            let numbers: Vec<u64> = (0..40).map(|_| lane.take()).collect();
            assert!(numbers.is_sorted(), "{numbers:?}");
            let lane_shards: std::collections::BTreeSet<usize> = numbers
                .iter()
                .map(|&n| open.device_shards[open.logs_of(n).0 as usize])
                .collect();
            assert_eq!(lane_shards.len(), 1, "{numbers:?}");
            taken.extend(numbers);
        }
        assert_eq!(taken.len(), 40 * lanes.len(), "a number taken twice");
        // Below the least number any lane reached, every number was taken.
        let reached = lanes.iter().map(|lane| lane.take()).min().unwrap();
        assert!((0..reached).all(|n| taken.contains(&n)));
        assert!(reached >= 40);

        // In closed loop the time a request is past the end does not follow its number:
        // one lane.
        let closed = crate::load::plan::tests::plan(&args).unwrap();
        assert_eq!(Lane::of(&closed).len(), 1);
        let few_connections = crate::load::plan::tests::plan(&[
            "--devices",
            "8",
            "--stream-shards",
            "3",
            "--connections",
            "1",
            "--rate",
            "1000",
        ])
        .unwrap();
        assert_eq!(Lane::of(&few_connections).len(), 1);
    }

    #[test]
    fn a_careful_clients_backoff_grows_to_its_bound_and_never_ends() {
        let delays: Vec<Duration> = backoff().take(50).collect();
        assert_eq!(delays.len(), 50);
        assert!(delays[0] >= Duration::from_millis(100) && delays[0] < Duration::from_millis(200));
        for delay in &delays[3..] {
            assert!(*delay >= Duration::from_millis(800) && *delay < Duration::from_millis(1600));
        }
    }

    #[test]
    fn refusals_errors_and_acceptances_are_counted_apart() {
        let counters = Counters::new();
        let at = Duration::from_millis(1500);
        assert_eq!(counters.count(Outcome::Accepted, at), None);
        let refused = Outcome::Answered {
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: Some(1),
        };
        assert_eq!(counters.count(refused, at), Some(Fate::Unconfirmed));
        let invalid = Outcome::Answered {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            retry_after: None,
        };
        assert_eq!(counters.count(invalid, at), Some(Fate::Rejected));
        assert_eq!(
            counters.count(Outcome::Failed(TIMEOUT), at),
            Some(Fate::Unconfirmed)
        );
        let tally = counters.tally();
        assert_eq!(
            (
                tally.requests,
                tally.accepted_requests,
                tally.refused_requests,
                tally.errors
            ),
            (4, 1, 1, 2)
        );
        assert_eq!(tally.statuses, vec![(200, 1), (422, 1), (503, 1)]);
        assert_eq!(tally.failures, vec![("timeout", 1)]);
        assert_eq!(tally.last_accepted, Some(at));
    }
}

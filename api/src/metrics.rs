//! The api's Prometheus metrics and the middleware that records HTTP requests.

use std::sync::Arc;
use std::time::Instant;

use std::time::Duration;

use axum::extract::State;
use axum::http::{Method, header};
use axum::response::{IntoResponse, Response};
use logpipeline_core::record::LogLevel;
use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::error::ErrorCode;

/// Latency buckets, in seconds: 100 µs to 10 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The ingest endpoint a log arrived through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `POST /api/log`.
    Log,
    /// `POST /api/logs/batch`.
    Batch,
    /// `POST /api/v1/logs/write`.
    V1Write,
    /// `POST /api/v1/logs/batch`.
    V1Batch,
    /// `POST /api/v1/logs/concurrent-test`, the logs it writes.
    V1ConcurrentTest,
    /// gRPC `LogService/WriteLog`.
    GrpcWrite,
    /// gRPC `LogService/BatchWriteLogs`.
    GrpcBatch,
    /// OTLP/HTTP `POST /v1/logs`.
    OtlpHttp,
    /// OTLP/gRPC `LogsService/Export`.
    OtlpGrpc,
}

impl Endpoint {
    const ALL: [Self; 9] = [
        Self::Log,
        Self::Batch,
        Self::V1Write,
        Self::V1Batch,
        Self::V1ConcurrentTest,
        Self::GrpcWrite,
        Self::GrpcBatch,
        Self::OtlpHttp,
        Self::OtlpGrpc,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::Batch => "batch",
            Self::V1Write => "v1_write",
            Self::V1Batch => "v1_batch",
            Self::V1ConcurrentTest => "v1_concurrent_test",
            Self::GrpcWrite => "grpc_write",
            Self::GrpcBatch => "grpc_batch",
            Self::OtlpHttp => "otlp_http",
            Self::OtlpGrpc => "otlp_grpc",
        }
    }
}

/// A dependency the api checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dependency {
    /// The stream and the cache.
    Redis,
    /// The stored logs.
    Postgres,
}

impl Dependency {
    const ALL: [Self; 2] = [Self::Redis, Self::Postgres];

    fn label(self) -> &'static str {
        match self {
            Self::Redis => "redis",
            Self::Postgres => "postgres",
        }
    }
}

/// The api's metrics, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    http_requests: IntCounterVec,
    http_duration: HistogramVec,
    http_in_flight: IntGaugeVec,
    /// Per endpoint, then per level, in the order of `Endpoint::ALL` and `LogLevel::ALL`.
    logs_accepted: Vec<IntCounter>,
    rejected: IntCounterVec,
    cache_lookups: IntCounterVec,
    redis_duration: HistogramVec,
    postgres_duration: HistogramVec,
    stream_capacity: IntGauge,
    dependency_up: IntGaugeVec,
    connections_open: IntGauge,
    connections_refused: IntCounterVec,
    grpc_requests: IntCounterVec,
    grpc_duration: HistogramVec,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let http_requests = IntCounterVec::new(
            Opts::new(
                "logpipeline_api_http_requests_total",
                "HTTP requests answered, by route, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "logpipeline_api_http_request_duration_seconds",
                "Time to answer HTTP requests, by route and method",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "method"],
        )?;
        let http_in_flight = IntGaugeVec::new(
            Opts::new(
                "logpipeline_api_http_requests_in_flight",
                "HTTP requests routed and not answered yet, by route",
            ),
            &["route"],
        )?;
        let accepted = IntCounterVec::new(
            Opts::new(
                "logpipeline_api_logs_accepted_total",
                "Logs accepted onto the stream, by level and ingest endpoint",
            ),
            &["level", "endpoint"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "logpipeline_api_requests_rejected_total",
                "Requests refused, by reason (the `error` code of the answer)",
            ),
            &["reason"],
        )?;
        let cache_lookups = IntCounterVec::new(
            Opts::new(
                "logpipeline_api_cache_lookups_total",
                "Query cache lookups, by result (hit or miss)",
            ),
            &["result"],
        )?;
        let redis_duration = HistogramVec::new(
            HistogramOpts::new(
                "logpipeline_api_redis_command_duration_seconds",
                "Time of Redis calls, by command",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["command"],
        )?;
        let postgres_duration = HistogramVec::new(
            HistogramOpts::new(
                "logpipeline_api_postgres_query_duration_seconds",
                "Time of PostgreSQL queries, by query",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["query"],
        )?;
        let stream_capacity = IntGauge::new(
            "logpipeline_api_stream_capacity_entries",
            "Most unprocessed entries the stream may hold before the api answers 503",
        )?;
        let dependency_up = IntGaugeVec::new(
            Opts::new(
                "logpipeline_api_dependency_up",
                "1 when the dependency answered the api's last check, else 0",
            ),
            &["dependency"],
        )?;
        let connections_open =
            IntGauge::new("logpipeline_api_connections_open", "HTTP connections open")?;
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "logpipeline_api_connections_refused_total",
                "Connections closed on arrival, by the limit they reached (total or per_address)",
            ),
            &["limit"],
        )?;
        for limit in ["total", "per_address"] {
            connections_refused.with_label_values(&[limit]);
        }
        let grpc_requests = IntCounterVec::new(
            Opts::new(
                "logpipeline_api_grpc_requests_total",
                "gRPC calls answered, by method and status code",
            ),
            &["method", "code"],
        )?;
        let grpc_duration = HistogramVec::new(
            HistogramOpts::new(
                "logpipeline_api_grpc_request_duration_seconds",
                "Time to answer gRPC calls, by method",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["method"],
        )?;
        registry.register(Box::new(grpc_requests.clone()))?;
        registry.register(Box::new(grpc_duration.clone()))?;
        registry.register(Box::new(connections_open.clone()))?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(stream_capacity.clone()))?;
        registry.register(Box::new(dependency_up.clone()))?;
        logpipeline_core::metrics::register_process(&registry, env!("CARGO_PKG_VERSION"))?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(http_in_flight.clone()))?;
        registry.register(Box::new(accepted.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(cache_lookups.clone()))?;
        registry.register(Box::new(redis_duration.clone()))?;
        registry.register(Box::new(postgres_duration.clone()))?;
        // Series exported from the start, at 0, so alerts and rates see them.
        for result in ["hit", "miss"] {
            cache_lookups.with_label_values(&[result]);
        }
        for dependency in Dependency::ALL {
            dependency_up.with_label_values(&[dependency.label()]);
        }
        let logs_accepted = Endpoint::ALL
            .iter()
            .flat_map(|endpoint| {
                LogLevel::ALL
                    .iter()
                    .map(|level| accepted.with_label_values(&[level.as_str(), endpoint.label()]))
            })
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                registry,
                http_requests,
                http_duration,
                http_in_flight,
                logs_accepted,
                rejected,
                cache_lookups,
                redis_duration,
                postgres_duration,
                stream_capacity,
                dependency_up,
                connections_open,
                connections_refused,
                grpc_requests,
                grpc_duration,
            }),
        })
    }

    /// Records a gRPC call of `method` answered with `code` after `took`.
    pub fn grpc_request(&self, method: &'static str, code: &'static str, took: Duration) {
        self.inner
            .grpc_requests
            .with_label_values(&[method, code])
            .inc();
        self.inner
            .grpc_duration
            .with_label_values(&[method])
            .observe(took.as_secs_f64());
    }

    /// Counts a request refused with error `code` (HTTP answers are counted by
    /// [`track`]).
    pub fn request_rejected(&self, code: &'static str) {
        self.inner.rejected.with_label_values(&[code]).inc();
    }

    /// Counts a connection opened (`+1`) or closed (`-1`).
    pub fn connections_open(&self, change: i64) {
        self.inner.connections_open.add(change);
    }

    /// Counts a connection closed on arrival because it reached `limit`.
    pub fn connection_refused(&self, limit: &'static str) {
        self.inner
            .connections_refused
            .with_label_values(&[limit])
            .inc();
    }

    /// Counts one log of `level` accepted through `endpoint`.
    pub fn log_accepted(&self, level: LogLevel, endpoint: Endpoint) {
        let index = endpoint as usize * LogLevel::ALL.len() + level as usize;
        if let Some(counter) = self.inner.logs_accepted.get(index) {
            counter.inc();
        }
    }

    /// Records the stream capacity the api enforces.
    pub fn set_stream_capacity(&self, entries: u64) {
        self.inner
            .stream_capacity
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// Records whether `dependency` answered the last check.
    pub fn set_dependency_up(&self, dependency: Dependency, up: bool) {
        self.inner
            .dependency_up
            .with_label_values(&[dependency.label()])
            .set(i64::from(up));
    }

    /// Counts a cache lookup.
    pub fn cache_lookup(&self, hit: bool) {
        let result = if hit { "hit" } else { "miss" };
        self.inner.cache_lookups.with_label_values(&[result]).inc();
    }

    /// Records the time of a Redis call.
    pub fn redis_call(&self, command: &str, took: Duration) {
        self.inner
            .redis_duration
            .with_label_values(&[command])
            .observe(took.as_secs_f64());
    }

    /// Records the time of a PostgreSQL query.
    pub fn postgres_query(&self, query: &str, took: Duration) {
        self.inner
            .postgres_duration
            .with_label_values(&[query])
            .observe(took.as_secs_f64());
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        logpipeline_core::metrics::render(&self.inner.registry)
    }
}

/// One request counted in flight until it is answered or dropped (a client that goes
/// away cancels the handler), then counted and timed by [`Tracked::finish`].
pub struct Tracked<'a> {
    metrics: &'a Metrics,
    in_flight: IntGauge,
    route: &'a str,
    method: &'static str,
}

impl Metrics {
    /// Counts a request to `route` in flight until the returned guard is finished or
    /// dropped.
    pub fn request_started<'a>(&'a self, route: &'a str, method: &Method) -> Tracked<'a> {
        let in_flight = self.inner.http_in_flight.with_label_values(&[route]);
        in_flight.inc();
        Tracked {
            metrics: self,
            in_flight,
            route,
            method: method_label(method),
        }
    }
}

impl Tracked<'_> {
    /// Counts the request answered with `response`, started at `started`.
    pub fn finish(self, response: &Response, started: Instant) {
        let inner = &self.metrics.inner;
        inner
            .http_duration
            .with_label_values(&[self.route, self.method])
            .observe(started.elapsed().as_secs_f64());
        inner
            .http_requests
            .with_label_values(&[self.route, self.method, response.status().as_str()])
            .inc();
        if let Some(ErrorCode(code)) = response.extensions().get::<ErrorCode>() {
            inner.rejected.with_label_values(&[*code]).inc();
        }
    }
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        self.in_flight.dec();
    }
}

/// The `method` label of a request: one of the standard methods, or `other`. Clients
/// choose the method, so any other value would let them add series without bound.
fn method_label(method: &Method) -> &'static str {
    const STANDARD: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    STANDARD
        .iter()
        .find(|standard| *standard == method)
        .map_or("other", Method::as_str)
}

/// The api's metrics in Prometheus' text format.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain"))
)]
pub async fn endpoint(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        metrics.render(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_standard_methods_become_labels() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::OPTIONS), "OPTIONS");
        for invented in ["PURGE", "X1", "get"] {
            let method = Method::from_bytes(invented.as_bytes()).unwrap();
            assert_eq!(method_label(&method), "other", "{invented}");
        }
    }
}

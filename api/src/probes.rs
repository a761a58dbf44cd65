//! Kubernetes probes and the metrics endpoint.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::metrics::Metrics;
use crate::queue::Queue;

/// `GET /livez`: the process serves HTTP. Independent of Redis and PostgreSQL, so a
/// dependency outage never gets the pod restarted.
pub async fn livez() -> &'static str {
    "ok"
}

/// `GET /readyz`: the api can accept logs, which needs Redis. PostgreSQL is not needed
/// to accept logs, so its outage does not take the api out of its Service.
pub async fn readyz(State(queue): State<Queue>) -> impl IntoResponse {
    if queue.ping().await {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "redis unavailable")
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        metrics.render(),
    )
}

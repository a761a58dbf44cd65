//! The worker's HTTP endpoints: `/metrics`, `/livez`, `/readyz`.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::metrics::Metrics;
use crate::store::Store;
use crate::stream::Stream;

/// What the endpoints need.
#[derive(Clone)]
pub struct OpsState {
    /// The worker's metrics.
    pub metrics: Metrics,
    /// For the Redis readiness check.
    pub stream: Stream,
    /// For the PostgreSQL readiness check.
    pub store: Store,
}

/// The routes.
pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        state.metrics.render(),
    )
}

/// Ready when both Redis and PostgreSQL answer.
async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    let redis = state.stream.clone().ping().await;
    let postgres = state.store.ping().await;
    match (redis, postgres) {
        (true, true) => (StatusCode::OK, "ok"),
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "redis unavailable"),
        (_, false) => (StatusCode::SERVICE_UNAVAILABLE, "postgres unavailable"),
    }
}

//! Health: `GET /health` for people and monitors, `/livez` and `/readyz` for Kubernetes.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;

use crate::metrics::Dependency;
use crate::state::AppState;

/// How long a dependency may take to answer a health check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The state of the service and each dependency.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `healthy` when every dependency answers, else `unhealthy`.
    pub status: Status,
    /// Redis: the stream and the cache.
    pub redis: Status,
    /// PostgreSQL: the stored logs.
    pub postgres: Status,
    /// This api's version.
    pub version: &'static str,
    /// When the checks ran.
    #[serde(with = "time::serde::rfc3339")]
    pub timestamp: OffsetDateTime,
}

/// Whether something answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// It answers.
    Healthy,
    /// It does not.
    Unhealthy,
}

impl Status {
    fn of(up: bool) -> Self {
        if up { Self::Healthy } else { Self::Unhealthy }
    }
}

/// Checks Redis and PostgreSQL; 503 when either is down.
#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses(
        (status = 200, description = "Redis and PostgreSQL answer", body = Health),
        (status = 503, description = "A dependency does not answer", body = Health),
    )
)]
pub async fn health(State(state): State<AppState>) -> impl IntoResponse {
    let (redis, postgres) = check(&state).await;
    let healthy = redis && postgres;
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Health {
            status: Status::of(healthy),
            redis: Status::of(redis),
            postgres: Status::of(postgres),
            version: env!("CARGO_PKG_VERSION"),
            timestamp: OffsetDateTime::now_utc(),
        }),
    )
}

/// Whether Redis and PostgreSQL answer, each within [`CHECK_TIMEOUT`]; also recorded in
/// `logpipeline_api_dependency_up`.
async fn check(state: &AppState) -> (bool, bool) {
    let redis = tokio::time::timeout(CHECK_TIMEOUT, state.queue.ping());
    let postgres = tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("select 1").execute(&state.db));
    let (redis, postgres) = tokio::join!(redis, postgres);
    let redis = redis.unwrap_or(false);
    let postgres = matches!(postgres, Ok(Ok(_)));
    state.metrics.set_dependency_up(Dependency::Redis, redis);
    state
        .metrics
        .set_dependency_up(Dependency::Postgres, postgres);
    (redis, postgres)
}

/// Checks the dependencies every `every` until `shutdown`, so the metrics say whether
/// they answer even when nobody asks `/health`.
pub async fn watch(state: AppState, every: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = shutdown.cancelled() => return,
        }
        check(&state).await;
    }
}

/// The process serves HTTP. Independent of Redis and PostgreSQL, so an outage of a
/// dependency never gets the pod restarted.
#[utoipa::path(get, path = "/livez", tag = "operations", responses((status = 200, description = "Alive", body = String)))]
pub async fn livez() -> &'static str {
    "ok"
}

/// The api can accept logs, which needs Redis only: PostgreSQL being down does not stop
/// ingestion, so it does not take the api out of its Service.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "Redis answers (with its replicas in sync, under replicated acceptance)", body = String),
        (status = 503, description = "Redis does not answer, or replicated acceptance has fewer replicas in sync than it needs: the reason", body = String),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if !tokio::time::timeout(CHECK_TIMEOUT, state.queue.ping())
        .await
        .unwrap_or(false)
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "redis unavailable".to_owned(),
        );
    }
    let short = state.queue.short_of_replicas();
    if short.is_empty() {
        return (StatusCode::OK, "ok".to_owned());
    }
    let shards: Vec<String> = short
        .iter()
        .map(|(shard, in_sync)| format!("shard {shard} has {in_sync}"))
        .collect();
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "redis replicas missing: replicated acceptance needs more replicas in sync ({})",
            shards.join(", ")
        ),
    )
}

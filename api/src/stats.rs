//! `GET /api/stats`: totals, counts by level and the most active devices.
//!
//! The numbers come from `log_count_totals` (the counters in `log_counts` and the counts
//! waiting to be folded into them), which the worker keeps in the same transaction
//! as its inserts, so they are exact and cost the same at ten million logs as at ten;
//! the answer is cached briefly, as the seed did.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::extract::State;
use axum::{Extension, Json};
use logpipeline_core::tenant::Tenant;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::auth::Principal;
use crate::error::{Error, ErrorBody, Result};
use crate::state::AppState;

/// Devices listed as most active.
const TOP_DEVICES: i64 = 10;

/// System statistics.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Stats {
    /// Logs stored.
    pub total_logs: i64,
    /// Logs stored per level.
    pub logs_by_level: BTreeMap<String, i64>,
    /// The ids of the most active devices, most logs first (the seed's field).
    pub recent_devices: Vec<String>,
    /// The most active devices with their counts, most logs first.
    pub most_active_devices: Vec<DeviceActivity>,
    /// When these numbers were read.
    #[serde(with = "time::serde::rfc3339")]
    pub generated_at: OffsetDateTime,
}

/// A device's activity.
#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct DeviceActivity {
    /// The device.
    pub device_id: String,
    /// Logs stored.
    pub count: i64,
    /// When its newest log was received.
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_log_at: Option<OffsetDateTime>,
}

/// Statistics of the key's tenant's stored logs, cached briefly.
#[utoipa::path(
    get,
    path = "/api/stats",
    tag = "query",
    security(("bearer" = ["read"]), ("api_key" = ["read"])),
    responses(
        (status = 200, description = "Statistics", body = Stats),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `read` scope", body = ErrorBody),
        (status = 429, description = "A rate limit is reached; retry after `Retry-After` seconds", body = ErrorBody,
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 503, description = "PostgreSQL is unavailable", body = ErrorBody),
    )
)]
pub async fn get_stats(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Stats>> {
    let tenant = &principal.tenant;
    let key = state.cache.key("stats", &(tenant.as_str(), TOP_DEVICES));
    if let Some(cached) = state.cache.get(&key).await
        && let Ok(stats) = serde_json::from_slice::<Stats>(&cached)
    {
        return Ok(Json(stats));
    }
    let stats = read(&state, tenant).await?;
    if let Ok(cached) = serde_json::to_vec(&stats) {
        state.cache.put(&key, &cached, state.stats_cache_ttl).await;
    }
    Ok(Json(stats))
}

async fn read(state: &AppState, tenant: &Tenant) -> Result<Stats> {
    let started = Instant::now();
    // Counts per level, summed over devices and stripes.
    let by_level: Vec<(String, i64)> = sqlx::query_as(
        "select log_level, sum(count)::bigint from log_count_totals where tenant = $1 \
         group by log_level order by log_level",
    )
    .bind(tenant.as_str())
    .fetch_all(&state.db)
    .await
    .map_err(Error::DatabaseUnavailable)?;
    // The devices with the most logs.
    let devices: Vec<DeviceActivity> = sqlx::query_as(
        "select device_id, sum(count)::bigint as count, max(last_at) as last_log_at \
         from log_count_totals where tenant = $1 group by device_id \
         order by count desc, device_id limit $2",
    )
    .bind(tenant.as_str())
    .bind(TOP_DEVICES)
    .fetch_all(&state.db)
    .await
    .map_err(Error::DatabaseUnavailable)?;
    state.metrics.postgres_query("stats", started.elapsed());
    Ok(Stats {
        total_logs: by_level.iter().map(|(_, count)| count).sum(),
        logs_by_level: by_level.into_iter().collect(),
        recent_devices: devices
            .iter()
            .map(|device| device.device_id.clone())
            .collect(),
        most_active_devices: devices,
        generated_at: OffsetDateTime::now_utc(),
    })
}

//! `POST /api/log` and `POST /api/logs/batch`: validate, put on the stream, answer.
//!
//! The answer comes once Redis holds the entry, never waiting for PostgreSQL. The logs
//! are stored in the stream as the JSON text the device sent (after validation), so the
//! hot path parses each body once to check it and never re-serialises it.

use axum::extract::State;
use axum::{Extension, Json};
use logpipeline_core::codec;
use logpipeline_core::record::{LogBatch, LogRecord, MAX_BATCH_LOGS};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::auth::Principal;
use crate::error::{Error, ErrorBody, Result};
use crate::extract::{JsonBody, parse};
use crate::metrics::Endpoint;
use crate::state::AppState;

/// The answer to `POST /api/log`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogAccepted {
    /// Always `received`.
    pub status: String,
    /// The log's stable id.
    pub message_id: String,
    /// When the API received it (RFC 3339, UTC); stored as the log's `created_at`.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub received_at: OffsetDateTime,
}

/// The answer to `POST /api/logs/batch`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchAccepted {
    /// Always `received`.
    pub status: String,
    /// How many logs were accepted: all of them.
    pub count: usize,
    /// The logs' stable ids, in the order sent.
    pub message_ids: Vec<String>,
    /// When the API received them (RFC 3339, UTC).
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub received_at: OffsetDateTime,
}

const RECEIVED: &str = "received";

/// Accepts one log of the key's tenant. The answer comes once Redis holds it.
#[utoipa::path(
    post,
    path = "/api/log",
    tag = "ingest",
    request_body = LogRecord,
    security(("bearer" = ["write"]), ("api_key" = ["write"])),
    responses(
        (status = 200, description = "Accepted", body = LogAccepted),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `write` scope", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON in UTF-8, or is compressed otherwise than with gzip", body = ErrorBody),
        (status = 422, description = "A field breaks a rule", body = ErrorBody),
        (status = 429, description = "A rate limit is reached; retry after `Retry-After` seconds", body = ErrorBody,
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 503, description = "The queue is full or unavailable: nothing was accepted; retry after `Retry-After` seconds", body = ErrorBody,
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 504, description = "Redis did not confirm in time: the logs may or may not have been accepted", body = ErrorBody,
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub async fn create_log(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    JsonBody(body): JsonBody,
) -> Result<Json<LogAccepted>> {
    let received_at = now();
    let log: LogRecord = parse(&body)?;
    let mut logs_json = Vec::with_capacity(body.len() + 2);
    logs_json.push(b'[');
    logs_json.extend_from_slice(&body);
    logs_json.push(b']');
    let entry_id = state
        .queue
        .publish(received_at, &principal.tenant, &logs_json)
        .await?;
    state.metrics.log_accepted(log.log_level, Endpoint::Log);
    Ok(Json(LogAccepted {
        status: RECEIVED.into(),
        message_id: codec::log_id(&entry_id, 0, 1),
        received_at,
    }))
}

/// The batch body with its logs left as text, to store them as sent.
#[derive(Deserialize)]
struct RawBatch<'a> {
    #[serde(borrow)]
    logs: &'a RawValue,
}

/// Accepts 1 to 1000 logs of the key's tenant, all or none. The answer comes once Redis
/// holds them.
#[utoipa::path(
    post,
    path = "/api/logs/batch",
    tag = "ingest",
    request_body = LogBatch,
    security(("bearer" = ["write"]), ("api_key" = ["write"])),
    responses(
        (status = 200, description = "Accepted", body = BatchAccepted),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `write` scope", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON in UTF-8, or is compressed otherwise than with gzip", body = ErrorBody),
        (status = 422, description = "A field breaks a rule, or there are not 1 to 1000 logs", body = ErrorBody),
        (status = 429, description = "A rate limit is reached; retry after `Retry-After` seconds", body = ErrorBody,
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 503, description = "The queue is full or unavailable: nothing was accepted; retry after `Retry-After` seconds", body = ErrorBody,
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 504, description = "Redis did not confirm in time: the logs may or may not have been accepted", body = ErrorBody,
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
    )
)]
pub async fn create_batch(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    JsonBody(body): JsonBody,
) -> Result<Json<BatchAccepted>> {
    let received_at = now();
    let raw: RawBatch<'_> = parse(&body)?;
    let logs: Vec<LogRecord> = parse(raw.logs.get().as_bytes()).map_err(|error| match error {
        Error::InvalidLog(detail) if detail.starts_with('[') => {
            Error::InvalidLog(format!("logs{detail}"))
        }
        Error::InvalidLog(detail) => Error::InvalidLog(format!("logs: {detail}")),
        other => other,
    })?;
    let count = logs.len();
    if !(1..=MAX_BATCH_LOGS).contains(&count) {
        return Err(Error::InvalidLog(format!(
            "logs: must hold 1 to {MAX_BATCH_LOGS} logs, got {count}"
        )));
    }
    let entry_id = state
        .queue
        .publish(received_at, &principal.tenant, raw.logs.get().as_bytes())
        .await?;
    for log in &logs {
        state.metrics.log_accepted(log.log_level, Endpoint::Batch);
    }
    Ok(Json(BatchAccepted {
        status: RECEIVED.into(),
        count,
        message_ids: codec::log_ids(&entry_id, count),
        received_at,
    }))
}

/// The current time at the precision the pipeline keeps (microseconds).
fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1000 * 1000)
        .unwrap_or(now)
}

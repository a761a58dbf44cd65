//! `POST /api/log` and `POST /api/logs/batch`: validate, put on the stream, answer.
//!
//! The answer comes once Redis holds the entry, never waiting for PostgreSQL. The logs
//! are stored in the stream as the JSON text the device sent (after validation), so the
//! hot path parses each body once to check it and never re-serialises it.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::{Extension, Json};
use logpipeline_core::record::{LogBatch, LogLevel, LogRecord, LogView, MAX_BATCH_LOGS};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::accept::{Checked, accept, now};
use crate::auth::Principal;
use crate::error::{Error, ErrorBody, Result};
use crate::extract::{JsonBody, parse};
use crate::idempotency::IdempotencyKey;
use crate::metrics::Endpoint;
use crate::state::AppState;

/// The answer to `POST /api/log`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogAccepted {
    /// `received`, or `duplicate` when a request with the same `Idempotency-Key` was
    /// accepted before: the log is stored once, under the first answer's id.
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
    /// `received`, or `duplicate` when a request with the same `Idempotency-Key` was
    /// accepted before: the logs are stored once, under the first answer's ids.
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

/// The `status` of an answer.
fn status(duplicate: bool) -> String {
    if duplicate { "duplicate" } else { "received" }.into()
}

/// Accepts one log of the key's tenant. The answer comes once Redis holds it.
#[utoipa::path(
    post,
    path = "/api/log",
    tag = "ingest",
    request_body = LogRecord,
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$",
            description = "A key of the client's choosing (1 to 255 visible ASCII characters, e.g. a UUID) that makes a retry safe: \
                           a request whose key was accepted within the idempotency window (one hour by default) is not accepted again, \
                           and the answer repeats the first one with `status: duplicate`. Scoped to the API key's tenant.")),
    security(("bearer" = ["write"]), ("api_key" = ["write"])),
    responses(
        (status = 200, description = "Accepted", body = LogAccepted),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `write` scope", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON in UTF-8, or is compressed otherwise than with gzip", body = ErrorBody),
        (status = 422, description = "A field breaks a rule, or the idempotency key came before with another log", body = ErrorBody),
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
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Json<LogAccepted>> {
    let received_at = now();
    let key = IdempotencyKey::from_headers(&headers)?;
    let checked = match checked(&body, false) {
        Some(checked) => checked,
        None => Checked::of(&[parse::<LogRecord>(&body)?]),
    };
    let mut logs_json = Vec::with_capacity(body.len() + 2);
    logs_json.push(b'[');
    logs_json.extend_from_slice(&body);
    logs_json.push(b']');
    let accepted = accept(
        &state,
        &principal,
        received_at,
        &logs_json,
        &checked,
        Endpoint::Log,
        key.as_ref(),
    )
    .await?;
    Ok(Json(LogAccepted {
        status: status(accepted.duplicate),
        message_id: accepted.entry_id.clone(),
        received_at: accepted.received_at,
    }))
}

/// The logs in `json` (an array of them when `array`, else one), when every log follows
/// the rules: checked in place ([`LogView`]), without copying their text. None when
/// something is wrong, which the callers then parse again to say what.
fn checked(json: &[u8], array: bool) -> Option<Checked> {
    let views: Vec<LogView<'_>> = if array {
        serde_json::from_slice(json).ok()?
    } else {
        vec![serde_json::from_slice(json).ok()?]
    };
    let levels = views
        .iter()
        .map(|view| view.check().ok())
        .collect::<Option<Vec<LogLevel>>>()?;
    Some(Checked {
        levels,
        device: views.first()?.device_id().to_owned(),
    })
}

/// The batch's logs, or what is wrong with them, naming the log and field.
#[cold]
fn checked_or_problem(json: &[u8]) -> Result<Checked> {
    let logs: Vec<LogRecord> = parse(json).map_err(|error| match error {
        Error::InvalidLog(detail) if detail.starts_with('[') => {
            Error::InvalidLog(format!("logs{detail}"))
        }
        Error::InvalidLog(detail) => Error::InvalidLog(format!("logs: {detail}")),
        other => other,
    })?;
    Ok(Checked::of(&logs))
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
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$",
            description = "A key of the client's choosing (1 to 255 visible ASCII characters, e.g. a UUID) that makes a retry safe: \
                           a request whose key was accepted within the idempotency window (one hour by default) is not accepted again, \
                           and the answer repeats the first one with `status: duplicate`. Scoped to the API key's tenant.")),
    security(("bearer" = ["write"]), ("api_key" = ["write"])),
    responses(
        (status = 200, description = "Accepted", body = BatchAccepted),
        (status = 400, description = "The body is not JSON", body = ErrorBody),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `write` scope", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON in UTF-8, or is compressed otherwise than with gzip", body = ErrorBody),
        (status = 422, description = "A field breaks a rule, there are not 1 to 1000 logs, or the idempotency key came before with other logs", body = ErrorBody),
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
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Json<BatchAccepted>> {
    let received_at = now();
    let key = IdempotencyKey::from_headers(&headers)?;
    let raw: RawBatch<'_> = parse(&body)?;
    let checked = match checked(raw.logs.get().as_bytes(), true) {
        Some(checked) => checked,
        None => checked_or_problem(raw.logs.get().as_bytes())?,
    };
    let count = checked.levels.len();
    if !(1..=MAX_BATCH_LOGS).contains(&count) {
        return Err(Error::InvalidLog(format!(
            "logs: must hold 1 to {MAX_BATCH_LOGS} logs, got {count}"
        )));
    }
    let accepted = accept(
        &state,
        &principal,
        received_at,
        raw.logs.get().as_bytes(),
        &checked,
        Endpoint::Batch,
        key.as_ref(),
    )
    .await?;
    Ok(Json(BatchAccepted {
        status: status(accepted.duplicate),
        count,
        message_ids: accepted.log_ids(),
        received_at: accepted.received_at,
    }))
}

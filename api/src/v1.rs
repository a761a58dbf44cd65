//! System B's REST front, with its paths and shapes: `POST /api/v1/logs/write`,
//! `POST /api/v1/logs/batch`, `GET /api/v1/logs/health`, and `GET /` describing the
//! service. Logs go the way every ingest path's go ([`crate::accept`]).
//!
//! Answers keep the seed's fields (`success`, `log_id`, `error_message`; the batch's
//! counts and per-entry results) with real HTTP statuses, and error answers carry both
//! the seed's fields and LogPipeline's (`error`, `detail`), so clients of either read
//! them.

use std::sync::atomic::Ordering;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use axum::{Extension, Json};
use logpipeline_core::record::{LogRecord, MAX_BATCH_LOGS};
use logpipeline_core::seed::{RawFields, SeedLog};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::accept::{accept_records, now};
use crate::auth::Principal;
use crate::error::{Error, Result, reshape_errors};
use crate::extract::{JsonBody, parse};
use crate::idempotency::IdempotencyKey;
use crate::metrics::Endpoint;
use crate::state::AppState;

/// One log, as system B's client sends it.
#[derive(Debug, ToSchema)]
#[schema(example = json!({"message": "FastAPI异步测试日志", "service_name": "test-service", "level": "INFO",
    "trace_id": "trace-001", "adv_id": 1234567, "metadata": {"user_id": "user123"}}))]
pub struct WriteLogBody {
    /// The text: 1 to 5000 characters, no NUL.
    #[schema(min_length = 1, max_length = 5000, pattern = "^[^\\u0000]*$")]
    pub message: String,
    /// The service that wrote it, up to 100 characters, not only whitespace, no control
    /// characters; `unknown_service` when absent or empty.
    #[serde(default)]
    #[schema(
        max_length = 100,
        pattern = "^$|^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub service_name: Option<String>,
    /// DEBUG, INFO, WARNING, ERROR or CRITICAL in any case (WARN, FATAL, TRACE too);
    /// INFO when absent or empty.
    #[serde(default)]
    #[schema(
        pattern = "^$|^([Dd][Ee][Bb][Uu][Gg]|[Ii][Nn][Ff][Oo]|[Ww][Aa][Rr][Nn]([Ii][Nn][Gg])?|[Ee][Rr][Rr][Oo][Rr]|[Cc][Rr][Ii][Tt][Ii][Cc][Aa][Ll]|[Ff][Aa][Tt][Aa][Ll]|[Tt][Rr][Aa][Cc][Ee])$"
    )]
    pub level: Option<String>,
    /// The trace it belongs to: up to 64 visible ASCII characters.
    #[serde(default)]
    #[schema(max_length = 64, pattern = "^[!-~]*$")]
    pub trace_id: Option<String>,
    /// The span: up to 64 visible ASCII characters.
    #[serde(default)]
    #[schema(max_length = 64, pattern = "^[!-~]*$")]
    pub span_id: Option<String>,
    /// The device, up to 50 characters, not only whitespace, no control characters; the
    /// service's name (its first 50 characters) when absent or empty.
    #[serde(default)]
    #[schema(
        max_length = 50,
        pattern = "^$|^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\u0000-\\u001f\\u007f-\\u009f]*$"
    )]
    pub device_id: Option<String>,
    /// More fields for `log_data`.
    #[serde(default)]
    #[schema(value_type = Option<logpipeline_core::record::LogData>)]
    pub metadata: Option<RawFields>,
    /// Any other field (the seed client's keyword arguments, such as `adv_id`) goes
    /// into `log_data` as well.
    #[serde(flatten)]
    #[schema(value_type = logpipeline_core::record::LogData)]
    pub fields: RawFields,
}

/// Read by hand, and the `serde` attributes above only describe the shape to the OpenAPI
/// document: the named fields as their types, and every other one as its exact JSON text.
/// A flattened map would read values through serde's buffer, which holds numbers as
/// 64-bit floats, so `0.1111…` of 20,000 digits would be stored rounded.
impl<'de> Deserialize<'de> for WriteLogBody {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(WriteLogVisitor)
    }
}

struct WriteLogVisitor;

impl<'de> Visitor<'de> for WriteLogVisitor {
    type Value = WriteLogBody;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a log: an object with a message")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<WriteLogBody, A::Error> {
        /// Reads a named field's value, once.
        fn once<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
            map: &mut A,
            slot: &mut Option<T>,
            name: &'static str,
        ) -> Result<(), A::Error> {
            if slot.is_some() {
                return Err(de::Error::duplicate_field(name));
            }
            *slot = Some(map.next_value()?);
            Ok(())
        }
        let mut message = None;
        let (mut service_name, mut level, mut trace_id, mut span_id, mut device_id) =
            (None, None, None, None, None);
        let mut metadata = None;
        let mut fields = RawFields::new();
        while let Some(name) = map.next_key::<String>()? {
            match name.as_str() {
                "message" => once(&mut map, &mut message, "message")?,
                "service_name" => once(&mut map, &mut service_name, "service_name")?,
                "level" => once(&mut map, &mut level, "level")?,
                "trace_id" => once(&mut map, &mut trace_id, "trace_id")?,
                "span_id" => once(&mut map, &mut span_id, "span_id")?,
                "device_id" => once(&mut map, &mut device_id, "device_id")?,
                "metadata" => once(&mut map, &mut metadata, "metadata")?,
                _ => {
                    fields.insert(name, map.next_value()?);
                }
            }
        }
        Ok(WriteLogBody {
            message: message.ok_or_else(|| de::Error::missing_field("message"))?,
            service_name: service_name.flatten(),
            level: level.flatten(),
            trace_id: trace_id.flatten(),
            span_id: span_id.flatten(),
            device_id: device_id.flatten(),
            metadata: metadata.flatten(),
            fields,
        })
    }
}

impl From<WriteLogBody> for SeedLog {
    fn from(body: WriteLogBody) -> Self {
        let mut fields = body.fields;
        let mut shadowed = RawFields::new();
        for (name, value) in body.metadata.unwrap_or_default() {
            if let Some(replaced) = fields.insert(name.clone(), value) {
                shadowed.insert(name, replaced);
            }
        }
        Self {
            message: body.message,
            service_name: body.service_name,
            level: body.level,
            trace_id: body.trace_id,
            span_id: body.span_id,
            device_id: body.device_id,
            fields,
            shadowed,
        }
    }
}

/// The answer for one log.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WriteLogResult {
    /// True: Redis holds the log.
    pub success: bool,
    /// Its stable id (its `message_id`); empty when refused.
    pub log_id: String,
    /// Why it was refused; empty on success.
    pub error_message: String,
    /// True when a request with the same `Idempotency-Key` was accepted before: the log
    /// is stored once, under this id.
    pub duplicate: bool,
}

/// The body of `POST /api/v1/logs/batch`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct BatchBody {
    /// 1 to 1000 logs.
    #[schema(min_items = 1, max_items = 1000)]
    pub log_entries: Vec<WriteLogBody>,
}

/// An entry of a batch that was refused.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EntryError {
    /// Its position in `log_entries`.
    pub index: usize,
    /// Why, naming the field.
    pub error_message: String,
}

/// The answer to `POST /api/v1/logs/batch`: the entries that follow the rules are
/// accepted, those that do not are reported.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchResult {
    /// True when every entry was accepted.
    pub success: bool,
    /// Entries sent.
    pub total_count: usize,
    /// Entries accepted.
    pub success_count: usize,
    /// Entries refused.
    pub error_count: usize,
    /// The refused entries and why.
    pub errors: Vec<EntryError>,
    /// One result per entry, in order.
    pub results: Vec<WriteLogResult>,
    /// True when a request with the same `Idempotency-Key` was accepted before.
    pub duplicate: bool,
}

/// An error answer of the `/api/v1` front: the seed's fields and LogPipeline's.
#[derive(Debug, Serialize, ToSchema)]
pub struct V1ErrorBody {
    /// Always false.
    pub success: bool,
    /// Always empty.
    pub log_id: String,
    /// What went wrong.
    pub error_message: String,
    /// LogPipeline's error code (see `ErrorBody`).
    pub error: &'static str,
    /// What went wrong, as `error_message`.
    pub detail: String,
}

/// Answers every error of the `/api/v1` routes (from the handlers, the body extractor
/// or the key and rate checks) in the `/api/v1` shape: LogPipeline's `error` and
/// `detail`, plus the seed's `success`, `log_id` and `error_message`. Status and headers
/// (such as `Retry-After`) stay as they are.
pub async fn seed_error_shape(request: Request, next: Next) -> Response {
    reshape_errors(next.run(request).await, |mut fields| {
        let detail = fields.get("detail").cloned().unwrap_or_default();
        fields.insert("success".into(), false.into());
        fields.insert("log_id".into(), "".into());
        fields.insert("error_message".into(), detail);
        (None, serde_json::to_vec(&fields).unwrap_or_default())
    })
    .await
}

/// Accepts one log of system B's client. The answer comes once Redis holds it.
#[utoipa::path(
    post,
    path = "/api/v1/logs/write",
    tag = "system B",
    request_body = WriteLogBody,
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$",
            description = "Makes a retry safe, as on `POST /api/log`")),
    security(("bearer" = ["write"]), ("api_key" = ["write"])),
    responses(
        (status = 200, description = "Accepted", body = WriteLogResult),
        (status = 400, description = "The body is not JSON", body = V1ErrorBody),
        (status = 401, description = "No valid API key", body = V1ErrorBody),
        (status = 403, description = "The key lacks the `write` scope", body = V1ErrorBody),
        (status = 413, description = "The body is too large", body = V1ErrorBody),
        (status = 415, description = "The body is not JSON in UTF-8", body = V1ErrorBody),
        (status = 422, description = "A field breaks a rule", body = V1ErrorBody),
        (status = 429, description = "A rate limit is reached; retry after `Retry-After` seconds", body = V1ErrorBody),
        (status = 503, description = "Nothing was accepted; retry after `Retry-After` seconds", body = V1ErrorBody),
        (status = 504, description = "The outcome is unknown; retry with the same `Idempotency-Key`", body = V1ErrorBody),
    )
)]
pub async fn write(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Json<WriteLogResult>> {
    let received_at = now();
    let key = IdempotencyKey::from_headers(&headers)?;
    let body: WriteLogBody = parse(&body)?;
    let record = SeedLog::from(body)
        .into_record()
        .map_err(Error::InvalidLog)?;
    let accepted = accept_records(
        &state,
        &principal,
        received_at,
        std::slice::from_ref(&record),
        Endpoint::V1Write,
        key.as_ref(),
    )
    .await?;
    Ok(Json(WriteLogResult {
        success: true,
        log_id: accepted.entry_id,
        error_message: String::new(),
        duplicate: accepted.duplicate,
    }))
}

/// Accepts up to 1000 logs of system B's client: those that follow the rules go onto
/// the stream as one entry, the others are reported by position. 422 when none does.
#[utoipa::path(
    post,
    path = "/api/v1/logs/batch",
    tag = "system B",
    request_body = BatchBody,
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$",
            description = "Makes a retry safe, as on `POST /api/logs/batch`")),
    security(("bearer" = ["write"]), ("api_key" = ["write"])),
    responses(
        (status = 200, description = "The valid entries were accepted", body = BatchResult),
        (status = 400, description = "The body is not JSON", body = V1ErrorBody),
        (status = 401, description = "No valid API key", body = V1ErrorBody),
        (status = 403, description = "The key lacks the `write` scope", body = V1ErrorBody),
        (status = 413, description = "The body is too large", body = V1ErrorBody),
        (status = 415, description = "The body is not JSON in UTF-8", body = V1ErrorBody),
        (status = 422, description = "Not 1 to 1000 entries, or none follows the rules", body = V1ErrorBody),
        (status = 429, description = "A rate limit is reached; retry after `Retry-After` seconds", body = V1ErrorBody),
        (status = 503, description = "Nothing was accepted; retry after `Retry-After` seconds", body = V1ErrorBody),
        (status = 504, description = "The outcome is unknown; retry with the same `Idempotency-Key`", body = V1ErrorBody),
    )
)]
pub async fn batch(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    JsonBody(body): JsonBody,
) -> Result<Json<BatchResult>> {
    let received_at = now();
    let key = IdempotencyKey::from_headers(&headers)?;
    let body: BatchBody = parse(&body)?;
    let logs = body.log_entries.into_iter().map(SeedLog::from).collect();
    let sorted = Sorted::of(logs, "log_entries")?;
    let accepted = accept_records(
        &state,
        &principal,
        received_at,
        &sorted.valid,
        Endpoint::V1Batch,
        key.as_ref(),
    )
    .await?;
    let results = sorted.results(accepted.log_ids(), accepted.duplicate);
    let errors: Vec<EntryError> = sorted
        .problems
        .iter()
        .map(|(index, why)| EntryError {
            index: *index,
            error_message: why.clone(),
        })
        .collect();
    Ok(Json(BatchResult {
        success: errors.is_empty(),
        total_count: results.len(),
        success_count: accepted.count,
        error_count: errors.len(),
        errors,
        results,
        duplicate: accepted.duplicate,
    }))
}

/// The entries of a batch, sorted into the records to accept and the refused ones.
pub struct Sorted {
    /// The records of the valid entries, in order.
    pub valid: Vec<LogRecord>,
    /// Each refused entry's position and why.
    pub problems: Vec<(usize, String)>,
}

impl Sorted {
    /// Sorts `logs`, which `field` holds (for error messages): 1 to 1000 of them, at
    /// least one valid.
    pub fn of(logs: Vec<SeedLog>, field: &str) -> Result<Self> {
        let count = logs.len();
        if !(1..=MAX_BATCH_LOGS).contains(&count) {
            return Err(Error::InvalidLog(format!(
                "{field}: must hold 1 to {MAX_BATCH_LOGS} logs, got {count}"
            )));
        }
        let mut valid = Vec::with_capacity(count);
        let mut problems = Vec::new();
        for (index, log) in logs.into_iter().enumerate() {
            match log.into_record() {
                Ok(record) => valid.push(record),
                Err(why) => problems.push((index, format!("{field}[{index}].{why}"))),
            }
        }
        if valid.is_empty() {
            let first = problems
                .first()
                .map(|(_, why)| why.as_str())
                .unwrap_or_default();
            return Err(Error::InvalidLog(format!(
                "no entry follows the rules; the first: {first}"
            )));
        }
        Ok(Self { valid, problems })
    }

    /// One result per entry, in order: the accepted ones with their `ids`, each marked
    /// `duplicate` as the whole request is.
    pub fn results(&self, ids: Vec<String>, duplicate: bool) -> Vec<WriteLogResult> {
        let total = self.valid.len() + self.problems.len();
        let mut problems = self.problems.iter().peekable();
        let mut ids = ids.into_iter();
        (0..total)
            .map(|index| match problems.next_if(|(at, _)| *at == index) {
                Some((_, why)) => WriteLogResult {
                    success: false,
                    log_id: String::new(),
                    error_message: why.clone(),
                    duplicate: false,
                },
                None => WriteLogResult {
                    success: true,
                    log_id: ids.next().unwrap_or_default(),
                    error_message: String::new(),
                    duplicate,
                },
            })
            .collect()
    }
}

/// What `GET /api/v1/logs/health` says of the service the client writes to.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FrontHealth {
    /// `healthy` when logs can be accepted (Redis answers), else `unhealthy`.
    pub status: String,
    /// When this was checked.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: OffsetDateTime,
    /// Whether the gRPC service is serving.
    pub grpc_connection: bool,
    /// About the service.
    pub service_info: ServiceInfo,
}

/// About the service, in the seed's terms.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ServiceInfo {
    /// `LogPipeline`.
    pub name: String,
    /// The api's version.
    pub version: String,
    /// Where gRPC is served.
    pub grpc_server: String,
    /// Most writers of a concurrent test (0 when the test is off).
    pub max_workers: u32,
    /// Most logs per batch.
    pub max_batch_size: usize,
}

/// The seed client's health check: 200 when logs can be accepted, else 503.
#[utoipa::path(
    get,
    path = "/api/v1/logs/health",
    operation_id = "v1_health",
    tag = "system B",
    responses(
        (status = 200, description = "Logs can be accepted", body = FrontHealth),
        (status = 503, description = "Redis does not answer", body = FrontHealth),
    )
)]
pub async fn health(State(state): State<AppState>) -> (StatusCode, Json<FrontHealth>) {
    let redis = state.queue.ping().await;
    let info = &state.front;
    let health = FrontHealth {
        status: if redis { "healthy" } else { "unhealthy" }.into(),
        timestamp: OffsetDateTime::now_utc(),
        grpc_connection: info.grpc_serving.load(Ordering::Relaxed),
        service_info: ServiceInfo {
            name: "LogPipeline".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            grpc_server: info.grpc_listen.to_string(),
            max_workers: info.concurrent_test.map_or(0, |limits| limits.max_workers),
            max_batch_size: MAX_BATCH_LOGS,
        },
    };
    let status = if redis {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(health))
}

/// What `GET /` says.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct About {
    /// `LogPipeline`.
    pub name: String,
    /// The api's version.
    pub version: String,
    /// What it does.
    pub description: String,
    /// Where things are: documents, health, the ingest endpoints.
    #[schema(value_type = Object)]
    pub links: Map<String, Value>,
    /// The gRPC service: its address and services.
    #[schema(value_type = Object)]
    pub grpc: Value,
}

/// Describes the service, as the seed's root did.
#[utoipa::path(
    get,
    path = "/",
    tag = "operations",
    responses((status = 200, description = "The service", body = About))
)]
pub async fn about(State(state): State<AppState>) -> Json<About> {
    let links = [
        ("docs", "/docs"),
        ("redoc", "/redoc"),
        ("openapi", "/openapi.json"),
        ("health", "/health"),
        ("v1_health", "/api/v1/logs/health"),
        ("v1_write", "/api/v1/logs/write"),
        ("v1_batch", "/api/v1/logs/batch"),
        ("log", "/api/log"),
        ("batch", "/api/logs/batch"),
        ("metrics", "/metrics"),
    ]
    .into_iter()
    .map(|(name, path)| (name.to_owned(), Value::from(path)))
    .collect();
    Json(About {
        name: "LogPipeline".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        description:
            "Log collection: logs accepted onto a Redis Stream in microseconds, stored in \
                      PostgreSQL exactly once, served back through a cache that is never stale."
                .into(),
        links,
        grpc: serde_json::json!({
            "address": state.front.grpc_listen.to_string(),
            "serving": state.front.grpc_serving.load(Ordering::Relaxed),
            "services": ["logpipeline.v1.LogService", "grpc.health.v1.Health",
                         "grpc.reflection.v1.ServerReflection"],
        }),
    })
}

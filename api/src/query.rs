//! `GET /api/logs/{device_id}`, `GET /api/services/{service_name}/logs` and
//! `GET /api/traces/{trace_id}/logs`: the logs of a device, a service or a trace, newest
//! first, filtered and paginated, from the never-stale cache when it has them.

use std::time::Instant;

use axum::Extension;
use axum::Json;
use axum::extract::{RawQuery, State};
use logpipeline_core::generations::Kind;
use logpipeline_core::origin::{ServiceName, TraceId};
use logpipeline_core::record::{DeviceId, LogLevel};
use logpipeline_core::tenant::Tenant;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::{FromRow, Postgres, QueryBuilder};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Principal;
use crate::error::{Error, ErrorBody, Result};
use crate::extract::PathParam;
use crate::state::AppState;

/// Logs per page when `limit` is not given.
const DEFAULT_LIMIT: u32 = 100;
/// Most logs per page.
const MAX_LIMIT: u32 = 1000;

/// The query string of the log queries.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogsParams {
    /// Logs per page, 1 to 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 100)]
    limit: Option<String>,
    /// Only these levels: repeat the parameter (`level=ERROR&level=CRITICAL`) or separate
    /// them with commas (`level=ERROR,CRITICAL`).
    #[param(value_type = Option<Vec<LogLevel>>, style = Form, explode = true)]
    #[serde(default)]
    level: Vec<String>,
    /// Only logs received at or after this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime, example = "2026-11-21T00:00:00Z")]
    since: Option<String>,
    /// Only logs received before this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<String>,
    /// Where to continue: the `next` of the previous page.
    #[param(
        pattern = r"^-?[0-9]{1,17}\.[0-9a-f]{1,16}$",
        example = "1795308807997201.1f"
    )]
    cursor: Option<String>,
}

/// Whose logs a query reads, checked by the rules of its field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Subject {
    /// A device's.
    Device(String),
    /// A service's.
    Service(String),
    /// A trace's, across services.
    Trace(String),
}

impl Subject {
    /// `name` as a device id.
    pub fn device(name: String) -> Result<Self> {
        let id =
            DeviceId::try_from(name).map_err(|error| Error::InvalidQuery(error.to_string()))?;
        Ok(Self::Device(id.into()))
    }

    /// `name` as a service name.
    pub fn service(name: String) -> Result<Self> {
        let name =
            ServiceName::try_from(name).map_err(|error| Error::InvalidQuery(error.to_string()))?;
        Ok(Self::Service(name.into()))
    }

    /// `id` as a trace id.
    pub fn trace(id: String) -> Result<Self> {
        let id = TraceId::try_from(id).map_err(|error| Error::InvalidQuery(error.to_string()))?;
        Ok(Self::Trace(id.into()))
    }

    /// The subjects a filter names, each optional: a device, a service, a trace.
    pub(crate) fn those_given(
        device: Option<String>,
        service: Option<String>,
        trace: Option<String>,
    ) -> Result<Vec<Self>> {
        [
            device.map(Self::device),
            service.map(Self::service),
            trace.map(Self::trace),
        ]
        .into_iter()
        .flatten()
        .collect()
    }

    /// The generation its cached pages depend on, and the name within it.
    fn generation(&self) -> (Kind, &str) {
        match self {
            Self::Device(name) => (Kind::Device, name),
            Self::Service(name) => (Kind::Service, name),
            Self::Trace(id) => (Kind::Trace, id),
        }
    }

    /// The `query` label of its PostgreSQL metrics.
    fn query_label(&self) -> &'static str {
        match self {
            Self::Device(_) => "logs",
            Self::Service(_) => "service_logs",
            Self::Trace(_) => "trace_logs",
        }
    }

    /// The column it is found by, and the value.
    pub(crate) fn column(&self) -> (&'static str, &str) {
        match self {
            Self::Device(name) => ("device_id", name),
            Self::Service(name) => ("service_name", name),
            Self::Trace(id) => ("trace_id", id),
        }
    }
}

/// A validated query: what a page holds, and the identity of its cached copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogQuery {
    tenant: String,
    subject: Subject,
    limit: u32,
    levels: Vec<LogLevel>,
    #[serde(with = "time::serde::rfc3339::option")]
    since: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    until: Option<OffsetDateTime>,
    cursor: Option<Cursor>,
}

/// A position in a device's logs: the last log of a page, by (`created_at`, `id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cursor {
    /// `created_at` in µs since the epoch.
    pub(crate) micros: i64,
    /// `id`.
    pub(crate) id: i64,
}

impl Cursor {
    /// `<micros>.<id in hexadecimal>`: every text of that form is a position (the schema's
    /// pattern says so), so a client can only be refused a cursor for its form.
    pub(crate) fn encode(self) -> String {
        format!("{}.{:x}", self.micros, self.id as u64)
    }

    fn decode(text: &str) -> Option<Self> {
        let (micros, id) = text.split_once('.')?;
        let digits = micros.strip_prefix('-').unwrap_or(micros);
        let decimal =
            (1..=17).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
        let hex = (1..=16).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !decimal || !hex {
            return None;
        }
        Some(Self {
            micros: micros.parse().ok()?,
            id: u64::from_str_radix(id, 16).ok()? as i64,
        })
    }

    pub(crate) fn at(self) -> Option<OffsetDateTime> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.micros) * 1000).ok()
    }
}

impl LogQuery {
    /// Checks the query string of a request of `tenant` for the logs of `subject`;
    /// errors name the parameter.
    pub fn parse(tenant: &Tenant, subject: Subject, query: Option<&str>) -> Result<Self> {
        let params: LogsParams = match query {
            Some(query) => serde_html_form::from_str(query).map_err(|error| {
                Error::InvalidQuery(format!("the query string is invalid: {error}"))
            })?,
            None => LogsParams::default(),
        };
        let limit = parse_limit(params.limit.as_deref())?;
        let levels = parse_levels(&params.level)?;
        let since = parse_time("since", params.since.as_deref())?;
        let until = parse_time("until", params.until.as_deref())?;
        let cursor = parse_cursor(params.cursor.as_deref())?;
        Ok(Self {
            tenant: tenant.as_str().to_owned(),
            subject,
            limit,
            levels,
            since,
            until,
            cursor,
        })
    }
}

/// `limit`: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent.
pub(crate) fn parse_limit(limit: Option<&str>) -> Result<u32> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(limit) => limit
            .parse()
            .ok()
            .filter(|limit| (1..=MAX_LIMIT).contains(limit))
            .ok_or_else(|| {
                Error::InvalidQuery(format!(
                    "limit must be a whole number from 1 to {MAX_LIMIT}, got {limit:?}"
                ))
            }),
    }
}

/// `level`, repeated or comma-separated: sorted and without repeats, so that the same
/// filter is the same cache entry.
pub(crate) fn parse_levels(levels: &[String]) -> Result<Vec<LogLevel>> {
    let mut levels = levels
        .iter()
        .flat_map(|levels| levels.split(','))
        .map(|level| {
            level
                .parse()
                .map_err(|error| Error::InvalidQuery(format!("level: {error}")))
        })
        .collect::<Result<Vec<LogLevel>>>()?;
    levels.sort_unstable();
    levels.dedup();
    Ok(levels)
}

/// A time parameter `name` in RFC 3339.
pub(crate) fn parse_time(name: &str, value: Option<&str>) -> Result<Option<OffsetDateTime>> {
    value
        .map(|text| {
            OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
                Error::InvalidQuery(format!(
                    "{name} must be an RFC 3339 time such as 2026-11-21T08:00:00Z, got {text:?}"
                ))
            })
        })
        .transpose()
}

/// `cursor`: the `next` of a previous page.
pub(crate) fn parse_cursor(cursor: Option<&str>) -> Result<Option<Cursor>> {
    cursor
        .map(|text| {
            Cursor::decode(text)
                .filter(|cursor| cursor.at().is_some())
                .ok_or_else(|| {
                    Error::InvalidQuery(
                        "cursor must be the `next` of a previous page, such as 1795308807997201.1f"
                            .into(),
                    )
                })
        })
        .transpose()
}

/// A stored log, as queries return it.
#[derive(Debug, Serialize, Deserialize, FromRow, ToSchema)]
pub struct StoredLog {
    /// Row id, increasing in insertion order.
    pub id: i64,
    /// The id the api answered when it accepted the log (absent on rows the seed system
    /// wrote).
    pub message_id: Option<String>,
    /// The device.
    pub device_id: String,
    /// The service that wrote it, if it said.
    pub service_name: Option<String>,
    /// Its trace, if any.
    pub trace_id: Option<String>,
    /// Its span, if any.
    pub span_id: Option<String>,
    /// The level.
    pub log_level: String,
    /// The message.
    pub message: Option<String>,
    /// The structured data.
    #[schema(value_type = Option<Object>)]
    #[sqlx(try_from = "Option<String>")]
    pub log_data: JsonText,
    /// When the api received it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub created_at: Option<OffsetDateTime>,
}

/// JSON text from PostgreSQL (`null` for SQL NULL), passed through without being parsed.
#[derive(Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JsonText(Box<RawValue>);

impl TryFrom<Option<String>> for JsonText {
    type Error = serde_json::Error;

    fn try_from(text: Option<String>) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text.unwrap_or_else(|| "null".into())).map(Self)
    }
}

/// Where a page came from.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The Redis cache.
    Cache,
    /// PostgreSQL.
    Database,
}

/// A page of logs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogPage {
    /// Logs on this page.
    pub total: usize,
    /// Where the page came from.
    pub source: Source,
    /// The logs.
    #[schema(value_type = Vec<StoredLog>)]
    pub data: Box<RawValue>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next: Option<String>,
}

/// A page as cached.
#[derive(Serialize, Deserialize)]
pub(crate) struct CachedPage {
    pub(crate) total: usize,
    pub(crate) data: Box<RawValue>,
    pub(crate) next: Option<String>,
}

/// A device's logs, newest first: those of the key's tenant.
#[utoipa::path(
    get,
    path = "/api/logs/{device_id}",
    tag = "query",
    params(("device_id" = DeviceId, Path, description = "The device: 1 to 50 characters, not only whitespace, no control characters"), LogsParams),
    security(("bearer" = ["read"]), ("api_key" = ["read"])),
    responses(
        (status = 200, description = "A page of logs", body = LogPage),
        (status = 400, description = "The path is not valid UTF-8", body = ErrorBody),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `read` scope", body = ErrorBody),
        (status = 422, description = "An invalid parameter", body = ErrorBody),
        (status = 429, description = "A rate limit is reached; retry after `Retry-After` seconds", body = ErrorBody,
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 503, description = "PostgreSQL is unavailable", body = ErrorBody),
    )
)]
pub async fn get_logs(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(device): PathParam,
    RawQuery(query): RawQuery,
) -> Result<Json<LogPage>> {
    page(
        &state,
        &principal,
        Subject::device(device)?,
        query.as_deref(),
    )
    .await
}

/// The logs of the device named `batch`, as `GET /api/logs/{device_id}` would give them:
/// the batch ingest's path is also that device's.
#[utoipa::path(
    get,
    path = "/api/logs/batch",
    tag = "query",
    params(LogsParams),
    security(("bearer" = ["read"]), ("api_key" = ["read"])),
    responses(
        (status = 200, description = "A page of logs", body = LogPage),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `read` scope", body = ErrorBody),
        (status = 422, description = "An invalid parameter", body = ErrorBody),
        (status = 429, description = "A rate limit is reached; retry after `Retry-After` seconds", body = ErrorBody,
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 503, description = "PostgreSQL is unavailable", body = ErrorBody),
    )
)]
pub async fn get_batch_device_logs(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    RawQuery(query): RawQuery,
) -> Result<Json<LogPage>> {
    page(
        &state,
        &principal,
        Subject::device("batch".to_owned())?,
        query.as_deref(),
    )
    .await
}

/// A service's logs, newest first: those of the key's tenant whose `service_name` is the
/// service's.
#[utoipa::path(
    get,
    path = "/api/services/{service_name}/logs",
    tag = "query",
    params(("service_name" = ServiceName, Path, description = "The service: 1 to 100 characters, not only whitespace, no control characters"), LogsParams),
    security(("bearer" = ["read"]), ("api_key" = ["read"])),
    responses(
        (status = 200, description = "A page of logs", body = LogPage),
        (status = 400, description = "The path is not valid UTF-8", body = ErrorBody),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `read` scope", body = ErrorBody),
        (status = 422, description = "An invalid parameter", body = ErrorBody),
        (status = 429, description = "A rate limit is reached; retry after `Retry-After` seconds", body = ErrorBody,
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 503, description = "PostgreSQL is unavailable", body = ErrorBody),
    )
)]
pub async fn get_service_logs(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(service): PathParam,
    RawQuery(query): RawQuery,
) -> Result<Json<LogPage>> {
    page(
        &state,
        &principal,
        Subject::service(service)?,
        query.as_deref(),
    )
    .await
}

/// The logs of one trace across every service and device, newest first: those of the
/// key's tenant.
#[utoipa::path(
    get,
    path = "/api/traces/{trace_id}/logs",
    tag = "query",
    params(("trace_id" = TraceId, Path, description = "The trace: 1 to 64 visible ASCII characters"), LogsParams),
    security(("bearer" = ["read"]), ("api_key" = ["read"])),
    responses(
        (status = 200, description = "A page of logs", body = LogPage),
        (status = 400, description = "The path is not valid UTF-8", body = ErrorBody),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `read` scope", body = ErrorBody),
        (status = 422, description = "An invalid parameter", body = ErrorBody),
        (status = 429, description = "A rate limit is reached; retry after `Retry-After` seconds", body = ErrorBody,
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 503, description = "PostgreSQL is unavailable", body = ErrorBody),
    )
)]
pub async fn get_trace_logs(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    PathParam(trace): PathParam,
    RawQuery(query): RawQuery,
) -> Result<Json<LogPage>> {
    page(&state, &principal, Subject::trace(trace)?, query.as_deref()).await
}

/// A page of `subject`'s logs as `query` asks, from the cache when it has it.
async fn page(
    state: &AppState,
    principal: &Principal,
    subject: Subject,
    query: Option<&str>,
) -> Result<Json<LogPage>> {
    let query = LogQuery::parse(&principal.tenant, subject, query)?;
    // Read the generation before the database, so a result cached under it can only be
    // older than a commit that bumped it after.
    let (kind, name) = query.subject.generation();
    let generation = state.cache.generation(&principal.tenant, kind, name).await;
    let key = generation.map(|generation| state.cache.key("logs", &(generation, &query)));
    if let Some(key) = &key
        && let Some(cached) = state.cache.get(key).await
        && let Ok(page) = serde_json::from_slice::<CachedPage>(&cached)
    {
        return Ok(Json(LogPage {
            total: page.total,
            source: Source::Cache,
            data: page.data,
            next: page.next,
        }));
    }
    let page = fetch(state, &query).await?;
    if let (Some(key), Ok(cached)) = (&key, serde_json::to_vec(&page)) {
        state.cache.put(key, &cached, state.query_cache_ttl).await;
    }
    Ok(Json(LogPage {
        total: page.total,
        source: Source::Database,
        data: page.data,
        next: page.next,
    }))
}

/// The columns of a [`StoredLog`], as its queries select them.
pub(crate) const STORED_LOG_COLUMNS: &str = "select id, message_id, device_id, service_name, \
     trace_id, span_id, log_level, message, log_data::text as log_data, created_at";

async fn fetch(state: &AppState, query: &LogQuery) -> Result<CachedPage> {
    let mut sql = QueryBuilder::<Postgres>::new(STORED_LOG_COLUMNS);
    sql.push(" from logs where tenant = ");
    sql.push_bind(&query.tenant);
    let (column, value) = query.subject.column();
    sql.push(format_args!(" and {column} = ")).push_bind(value);
    if !query.levels.is_empty() {
        let levels: Vec<&str> = query.levels.iter().map(|level| level.as_str()).collect();
        sql.push(" and log_level = any(")
            .push_bind(levels)
            .push(")");
    }
    if let Some(since) = query.since {
        sql.push(" and created_at >= ").push_bind(since);
    }
    if let Some(until) = query.until {
        sql.push(" and created_at < ").push_bind(until);
    }
    if let Some((cursor, at)) = query.cursor.and_then(|cursor| Some((cursor, cursor.at()?))) {
        // The first condition lets the (tenant, <column>, created_at) index bound the
        // scan.
        sql.push(" and created_at <= ").push_bind(at);
        sql.push(" and (created_at, id) < (")
            .push_bind(at)
            .push(", ")
            .push_bind(cursor.id)
            .push(")");
    }
    // One more than asked tells whether there is a next page.
    sql.push(" order by created_at desc, id desc limit ")
        .push_bind(i64::from(query.limit) + 1);
    let started = Instant::now();
    let rows: Vec<StoredLog> = sql
        .build_query_as()
        .fetch_all(&state.db)
        .await
        .map_err(Error::DatabaseUnavailable)?;
    state
        .metrics
        .postgres_query(query.subject.query_label(), started.elapsed());
    page_of(rows, query.limit)
}

/// The page of a query that asked for one row more than `limit`: the first `limit` of
/// `rows`, and the cursor after them when there are more.
pub(crate) fn page_of(mut rows: Vec<StoredLog>, limit: u32) -> Result<CachedPage> {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = rows.last().filter(|_| more).and_then(|last| {
        Some(
            Cursor {
                micros: logpipeline_core::codec::unix_micros(last.created_at?),
                id: last.id,
            }
            .encode(),
        )
    });
    let data = serde_json::value::to_raw_value(&rows)
        .map_err(|error| Error::Internal(error.to_string()))?;
    Ok(CachedPage {
        total: rows.len(),
        data,
        next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(query: &str) -> Result<LogQuery> {
        LogQuery::parse(&Tenant::default(), device("device-1"), Some(query))
    }

    fn device(name: &str) -> Subject {
        Subject::device(name.into()).unwrap()
    }

    #[test]
    fn defaults_apply_without_a_query_string() {
        let query = LogQuery::parse(&Tenant::default(), device("device-1"), None).unwrap();
        assert_eq!(query.limit, 100);
        assert!(query.levels.is_empty() && query.since.is_none() && query.cursor.is_none());
    }

    #[test]
    fn levels_repeat_or_are_comma_separated_in_any_order() {
        let repeated = parse("level=ERROR&level=CRITICAL").unwrap();
        let commas = parse("level=CRITICAL,ERROR").unwrap();
        assert_eq!(repeated.levels, [LogLevel::Error, LogLevel::Critical]);
        assert_eq!(repeated, commas, "the same filter is the same cache entry");
    }

    #[test]
    fn bad_parameters_name_themselves() {
        for (query, expected) in [
            ("limit=0", "limit must be"),
            ("limit=1001", "limit must be"),
            ("limit=ten", "limit must be"),
            ("level=LOUD", "level: unknown log level `LOUD`"),
            ("level=", "level: unknown log level ``"),
            ("level=ERROR,", "level: unknown log level ``"),
            ("since=yesterday", "since must be an RFC 3339 time"),
            ("until=2026-13-01T00:00:00Z", "until must be"),
            (
                "cursor=nonsense",
                "cursor must be the `next` of a previous page",
            ),
            ("cursor=", "cursor must be"),
            ("cursor=12.FF", "cursor must be"),
            ("cursor=123456789012345678.1", "cursor must be"),
            ("cursor=1.12345678901234567", "cursor must be"),
        ] {
            let error = parse(query).unwrap_err().to_string();
            assert!(error.contains(expected), "{query}: {error}");
        }
        let long = Subject::device("x".repeat(51)).unwrap_err().to_string();
        assert!(long.contains("device_id must be 1 to 50"), "{long}");
        let service = Subject::service(" ".into()).unwrap_err().to_string();
        assert!(
            service.contains("service_name must not be only"),
            "{service}"
        );
        let trace = Subject::trace("a b".into()).unwrap_err().to_string();
        assert!(
            trace.contains("trace_id must hold visible ASCII"),
            "{trace}"
        );
    }

    #[test]
    fn cursors_round_trip() {
        let cursor = Cursor {
            micros: 1_795_308_807_997_201,
            id: 42,
        };
        assert_eq!(cursor.encode(), "1795308807997201.2a");
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        // Ids past i64::MAX in hexadecimal wrap as the database's bigint does.
        let negative = Cursor { micros: -5, id: -1 };
        assert_eq!(Cursor::decode(&negative.encode()), Some(negative));
        let query = parse(&format!("cursor={}", cursor.encode())).unwrap();
        assert_eq!(query.cursor, Some(cursor));
    }
}

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
use time::OffsetDateTime;
use utoipa::IntoParams;

use crate::auth::Principal;
use crate::error::{Error, ErrorBody, Result};
use crate::extract::PathParam;
use crate::read::filter::{Filter, Subject, parse_levels, parse_limit, parse_time};
use crate::read::page::{CachedPage, Cursor, LogPage, Order, Source, page_of, parse_cursor};
use crate::state::AppState;

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

/// The generation `subject`'s cached pages depend on, and the name within it.
fn generation(subject: &Subject) -> (Kind, &str) {
    match subject {
        Subject::Device(name) => (Kind::Device, name),
        Subject::Service(name) => (Kind::Service, name),
        Subject::Trace(id) => (Kind::Trace, id),
    }
}

/// The `query` label of `subject`'s PostgreSQL metrics.
fn query_label(subject: &Subject) -> &'static str {
    match subject {
        Subject::Device(_) => "logs",
        Subject::Service(_) => "service_logs",
        Subject::Trace(_) => "trace_logs",
    }
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
    let (kind, name) = generation(&query.subject);
    let generation = state.cache.generation(&principal.tenant, kind, name).await;
    let key = generation.map(|generation| state.cache.key("logs", &(generation, &query)));
    if let Some(key) = &key
        && let Some(cached) = state.cache.get(key).await
        && let Ok(page) = serde_json::from_slice::<CachedPage>(&cached)
    {
        return Ok(Json(page.served_from(Source::Cache)));
    }
    let page = fetch(state, &query).await?;
    if let (Some(key), Ok(cached)) = (&key, serde_json::to_vec(&page)) {
        state.cache.put(key, &cached, state.query_cache_ttl).await;
    }
    Ok(Json(page.served_from(Source::Database)))
}

async fn fetch(state: &AppState, query: &LogQuery) -> Result<CachedPage> {
    let filter = Filter {
        subjects: vec![query.subject.clone()],
        levels: query.levels.clone(),
        since: query.since,
        until: query.until,
        ..Filter::of(&query.tenant)
    };
    let started = Instant::now();
    let mut snapshot = state.shelf.snapshot(None).await?;
    // One more than asked tells whether there is a next page.
    let logs = snapshot
        .page(
            &filter,
            Order::NewestFirst,
            query.cursor,
            query.limit as usize + 1,
        )
        .await?;
    snapshot.end().await?;
    state
        .metrics
        .postgres_query(query_label(&query.subject), started.elapsed());
    page_of(logs, query.limit)
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
    fn a_cursor_is_read_with_the_query() {
        let cursor = parse_cursor(Some("1795308807997201.2a")).unwrap();
        let query = parse("cursor=1795308807997201.2a").unwrap();
        assert_eq!(query.cursor, cursor);
    }
}

//! `GET /api/logs` and `GET /api/logs/histogram`: fleet-wide search over a tenant's logs,
//! by device, service, trace, level, time, words of the message and fields of
//! `log_data`, in cursor pages newest or oldest first, and counted per time bucket.
//!
//! # The filters
//!
//! - `device_id`, `service_name`, `trace_id`, `level`: as the per-device queries have
//!   them, each optional.
//! - `q`: words and "quoted phrases" the message must all hold, case-insensitively
//!   (`q=pressure "valve 3"`). They are matched as plain text (`ILIKE` with `%`, `_` and
//!   `\` escaped), never as a pattern, so no query can make the matcher backtrack. The
//!   trigram index on `message` serves them where there is one
//!   (`LOGPIPELINE_MESSAGE_INDEX`); without it a rare word reads the whole time range.
//! - `data.<path>`: a field of `log_data`, a dotted path into nested objects
//!   (`data.firmware=2.4.1`, `data.motor.rpm=>=1200`). A value is equal as text, number,
//!   boolean or null alike (`data.code=42` finds `42` and `"42"`), by `@>`, which the
//!   GIN index on `log_data` serves where there is one (`LOGPIPELINE_LOG_DATA_INDEX`);
//!   `>`, `>=`, `<` and `<=` before a number compare numbers, and a field that is no
//!   number never matches them.
//! - `since`, `until`: the time range. Without `until` it ends now; without `since` it
//!   is the hour before `until`. A search not bounded by a device, service or trace may
//!   span at most [`MAX_FLEET_RANGE_DAYS`] days.
//!
//! Every search runs within a budget (`LOGPIPELINE_SEARCH_TIMEOUT_MS`, 5 s); one that
//! would read more is stopped by PostgreSQL and answered 422 `search_too_broad`, so no
//! query can hold the database. Searches are not cached: a fleet-wide result has no generation to keep it
//! fresh by, and the rule that a read is never stale comes first.

use std::time::Instant;

use axum::Extension;
use axum::Json;
use axum::extract::{RawQuery, State};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{Postgres, QueryBuilder};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Principal;
use crate::error::{Error, ErrorBody, Result};
use crate::query::{
    Cursor, LogPage, STORED_LOG_COLUMNS, Source, StoredLog, Subject, page_of, parse_cursor,
    parse_levels, parse_limit, parse_time,
};
use crate::state::AppState;
use logpipeline_core::record::LogLevel;

/// Longest time range of a search not bounded by a device, service or trace.
pub const MAX_FLEET_RANGE_DAYS: i64 = 31;
/// Most words and phrases in `q`, and most `data.` filters.
const MAX_TERMS: usize = 16;
/// Longest word or phrase of `q`, and longest field value, in characters.
const MAX_TERM_CHARS: usize = 200;
/// Most segments of a `data.` path, and longest segment.
const MAX_PATH_SEGMENTS: usize = 8;
const MAX_SEGMENT_CHARS: usize = 64;
/// Most buckets of a histogram.
const MAX_BUCKETS: i64 = 2000;

/// The query string of a search (besides `data.<path>` filters).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Only this device's logs.
    device_id: Option<String>,
    /// Only this service's logs.
    service_name: Option<String>,
    /// Only this trace's logs.
    trace_id: Option<String>,
    /// Words and "quoted phrases" the message must all hold, case-insensitively.
    #[param(example = "pressure \"valve 3\"")]
    q: Option<String>,
    /// Only these levels: repeat the parameter or separate them with commas.
    #[param(value_type = Option<Vec<LogLevel>>, style = Form, explode = true)]
    #[serde(default)]
    level: Vec<String>,
    /// Only logs received at or after this time (RFC 3339); default an hour before
    /// `until`.
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<String>,
    /// Only logs received before this time (RFC 3339); default now.
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<String>,
    /// `newest` (default) or `oldest` first.
    #[param(value_type = Option<String>, pattern = "^(newest|oldest)$")]
    order: Option<String>,
    /// Logs per page, 1 to 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000, default = 100)]
    limit: Option<String>,
    /// Where to continue: the `next` of the previous page.
    cursor: Option<String>,
    /// The histogram's bucket width: `1m`, `5m`, `15m`, `1h` or `1d` (histogram only).
    #[param(value_type = Option<String>, pattern = "^(1m|5m|15m|1h|1d)$")]
    interval: Option<String>,
}

/// Which way a page runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    NewestFirst,
    OldestFirst,
}

/// A comparison of a `data.` filter.
#[derive(Debug, Clone, PartialEq)]
enum Comparison {
    /// Equal as text, number, boolean or null.
    Equals(String),
    /// A numeric comparison (`>`, `>=`, `<`, `<=`) with a number.
    Numeric(&'static str, f64),
}

/// A filter on a field of `log_data`.
#[derive(Debug, Clone, PartialEq)]
struct FieldFilter {
    path: Vec<String>,
    comparison: Comparison,
}

impl FieldFilter {
    fn parse(path: &str, value: &str) -> Result<Self> {
        let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
        let valid = segments.len() <= MAX_PATH_SEGMENTS
            && segments.iter().all(|segment| {
                !segment.is_empty()
                    && segment.chars().count() <= MAX_SEGMENT_CHARS
                    && !segment.chars().any(char::is_control)
            });
        if !valid {
            return Err(Error::InvalidQuery(format!(
                "data.{path}: a field is a dotted path of 1 to {MAX_PATH_SEGMENTS} names of 1 to {MAX_SEGMENT_CHARS} characters, such as data.motor.rpm"
            )));
        }
        if value.chars().count() > MAX_TERM_CHARS || value.chars().any(char::is_control) {
            return Err(Error::InvalidQuery(format!(
                "data.{path}: a value has at most {MAX_TERM_CHARS} characters and no control characters"
            )));
        }
        let operator = [">=", "<=", ">", "<"]
            .into_iter()
            .find(|operator| value.starts_with(operator));
        let comparison = match operator {
            Some(operator) => {
                let number = value[operator.len()..]
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|number| number.is_finite())
                    .ok_or_else(|| {
                        Error::InvalidQuery(format!(
                            "data.{path}: {operator} compares with a number, such as data.{path}={operator}40, got {value:?}"
                        ))
                    })?;
                Comparison::Numeric(operator, number)
            }
            None => Comparison::Equals(value.to_owned()),
        };
        Ok(Self {
            path: segments,
            comparison,
        })
    }

    /// The `log_data` documents that contain the value at the path, one per JSON type
    /// the text can be: `@>` with any of them finds the field, through the GIN index on
    /// `log_data` where there is one.
    fn containments(&self, value: &str) -> Vec<Value> {
        let mut candidates = vec![Value::String(value.to_owned())];
        if let Ok(number) = value.parse::<serde_json::Number>() {
            candidates.push(Value::Number(number));
        }
        match value {
            "true" => candidates.push(Value::Bool(true)),
            "false" => candidates.push(Value::Bool(false)),
            "null" => candidates.push(Value::Null),
            _ => {}
        }
        candidates
            .into_iter()
            .map(|leaf| {
                self.path
                    .iter()
                    .rev()
                    .fold(leaf, |inner, name| json!({ name: inner }))
            })
            .collect()
    }
}

/// A word or phrase of `q`, as an `ILIKE` pattern that matches it anywhere, literally.
fn like_pattern(term: &str) -> String {
    let mut pattern = String::with_capacity(term.len() + 2);
    pattern.push('%');
    for c in term.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The words and "quoted phrases" of `q`. A NUL is refused: no stored message holds one
/// (ingest refuses it, as PostgreSQL does), and PostgreSQL refuses it in a pattern too.
pub(crate) fn terms(q: &str) -> Result<Vec<String>> {
    if q.contains('\0') {
        return Err(Error::InvalidQuery(
            "q must not contain NUL characters, which no message holds".into(),
        ));
    }
    let mut terms = Vec::new();
    let mut rest = q.trim();
    while !rest.is_empty() {
        let (term, after) = match rest.strip_prefix('"') {
            Some(quoted) => match quoted.split_once('"') {
                Some((phrase, after)) => (phrase, after),
                None => {
                    return Err(Error::InvalidQuery(
                        "q: a phrase opened with \" must be closed with \"".into(),
                    ));
                }
            },
            None => rest.split_once(char::is_whitespace).unwrap_or((rest, "")),
        };
        if !term.trim().is_empty() {
            terms.push(term.to_owned());
        }
        rest = after.trim_start();
    }
    if terms.len() > MAX_TERMS {
        return Err(Error::InvalidQuery(format!(
            "q: at most {MAX_TERMS} words and phrases"
        )));
    }
    if let Some(long) = terms
        .iter()
        .find(|term| term.chars().count() > MAX_TERM_CHARS)
    {
        return Err(Error::InvalidQuery(format!(
            "q: a word or phrase has at most {MAX_TERM_CHARS} characters, one has {}",
            long.chars().count()
        )));
    }
    Ok(terms)
}

/// A checked search.
#[derive(Debug, Clone)]
pub struct Search {
    tenant: String,
    subjects: Vec<Subject>,
    terms: Vec<String>,
    fields: Vec<FieldFilter>,
    levels: Vec<LogLevel>,
    since: OffsetDateTime,
    until: OffsetDateTime,
    order: Order,
    limit: u32,
    cursor: Option<Cursor>,
    /// The histogram's bucket width in seconds, when asked for.
    interval: Option<i64>,
}

impl Search {
    /// Checks the query string of a search by `tenant` at `now`; errors name the
    /// parameter.
    pub fn parse(tenant: &str, query: Option<&str>, now: OffsetDateTime) -> Result<Self> {
        let pairs: Vec<(String, String)> = match query {
            Some(query) => serde_html_form::from_str(query).map_err(|error| {
                Error::InvalidQuery(format!("the query string is invalid: {error}"))
            })?,
            None => Vec::new(),
        };
        let mut fields = Vec::new();
        let mut known = Vec::new();
        for (name, value) in pairs {
            match name.strip_prefix("data.") {
                Some(path) => fields.push(FieldFilter::parse(path, &value)?),
                None => known.push((name, value)),
            }
        }
        if fields.len() > MAX_TERMS {
            return Err(Error::InvalidQuery(format!(
                "at most {MAX_TERMS} data. filters"
            )));
        }
        let encoded = serde_html_form::to_string(&known)
            .map_err(|error| Error::Internal(error.to_string()))?;
        let params: SearchParams = serde_html_form::from_str(&encoded).map_err(|error| {
            Error::InvalidQuery(format!("the query string is invalid: {error}"))
        })?;
        if let Some((unknown, _)) = known.iter().find(|(name, _)| !is_parameter(name)) {
            return Err(Error::InvalidQuery(format!(
                "unknown parameter {unknown:?}: a search takes device_id, service_name, trace_id, q, level, since, until, order, limit, cursor, interval and data.<field>"
            )));
        }
        let subjects =
            Subject::those_given(params.device_id, params.service_name, params.trace_id)?;
        let until = parse_time("until", params.until.as_deref())?.unwrap_or(now);
        let since =
            parse_time("since", params.since.as_deref())?.unwrap_or(until - time::Duration::HOUR);
        if since >= until {
            return Err(Error::InvalidQuery("since must be before until".to_owned()));
        }
        if subjects.is_empty() && until - since > time::Duration::days(MAX_FLEET_RANGE_DAYS) {
            return Err(Error::InvalidQuery(format!(
                "a search without device_id, service_name or trace_id spans at most {MAX_FLEET_RANGE_DAYS} days; narrow since and until"
            )));
        }
        let order = match params.order.as_deref() {
            None | Some("newest") => Order::NewestFirst,
            Some("oldest") => Order::OldestFirst,
            Some(other) => {
                return Err(Error::InvalidQuery(format!(
                    "order must be newest or oldest, got {other:?}"
                )));
            }
        };
        let interval = params
            .interval
            .as_deref()
            .map(|asked| {
                INTERVALS
                    .iter()
                    .find(|(name, _)| *name == asked)
                    .map(|(_, seconds)| *seconds)
                    .ok_or_else(|| {
                        Error::InvalidQuery(format!(
                            "interval must be 1m, 5m, 15m, 1h or 1d, got {asked:?}"
                        ))
                    })
            })
            .transpose()?;
        if let Some(seconds) = interval {
            let buckets = buckets(since, until, seconds);
            if buckets > MAX_BUCKETS {
                return Err(Error::InvalidQuery(format!(
                    "the interval makes {buckets} buckets of the time range, more than {MAX_BUCKETS}; take a longer interval"
                )));
            }
        }
        Ok(Self {
            tenant: tenant.to_owned(),
            subjects,
            terms: params
                .q
                .as_deref()
                .map(terms)
                .transpose()?
                .unwrap_or_default(),
            fields,
            levels: parse_levels(&params.level)?,
            since,
            until,
            order,
            limit: parse_limit(params.limit.as_deref())?,
            cursor: parse_cursor(params.cursor.as_deref())?,
            interval,
        })
    }

    /// `where …` of every filter but the cursor.
    fn push_filters(&self, sql: &mut QueryBuilder<Postgres>) {
        sql.push(" from logs where tenant = ")
            .push_bind(&self.tenant);
        for subject in &self.subjects {
            let (column, value) = subject.column();
            sql.push(format_args!(" and {column} = ")).push_bind(value);
        }
        if !self.levels.is_empty() {
            let levels: Vec<&str> = self.levels.iter().map(|level| level.as_str()).collect();
            sql.push(" and log_level = any(")
                .push_bind(levels)
                .push(")");
        }
        sql.push(" and created_at >= ").push_bind(self.since);
        sql.push(" and created_at < ").push_bind(self.until);
        for term in &self.terms {
            sql.push(" and message ilike ")
                .push_bind(like_pattern(term));
        }
        for field in &self.fields {
            match &field.comparison {
                Comparison::Equals(value) => {
                    sql.push(" and (");
                    for (index, document) in field.containments(value).into_iter().enumerate() {
                        if index > 0 {
                            sql.push(" or ");
                        }
                        sql.push("log_data @> ").push_bind(document);
                    }
                    sql.push(")");
                }
                Comparison::Numeric(operator, number) => {
                    // CASE decides before the cast, so a field that is no number never
                    // reaches it.
                    sql.push(" and case when jsonb_typeof(log_data #> ")
                        .push_bind(field.path.clone())
                        .push(") = 'number' then (log_data #>> ")
                        .push_bind(field.path.clone())
                        .push(format_args!(")::numeric end {operator} "))
                        .push_bind(*number)
                        .push("::numeric");
                }
            }
        }
    }

    /// Runs `sql` within the budget, in a transaction of its own.
    async fn fetch<T>(state: &AppState, sql: &mut QueryBuilder<Postgres>) -> Result<Vec<T>>
    where
        T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        let mut transaction = state.db.begin().await.map_err(Error::DatabaseUnavailable)?;
        sqlx::query("select set_config('statement_timeout', $1, true)")
            .bind(state.search_timeout.as_millis().to_string())
            .execute(&mut *transaction)
            .await
            .map_err(Error::DatabaseUnavailable)?;
        let rows = sql
            .build_query_as()
            .fetch_all(&mut *transaction)
            .await
            .map_err(|error| match &error {
                sqlx::Error::Database(database) if database.code().as_deref() == Some("57014") => {
                    Error::SearchTooBroad {
                        budget: state.search_timeout,
                    }
                }
                _ => Error::DatabaseUnavailable(error),
            })?;
        transaction
            .commit()
            .await
            .map_err(Error::DatabaseUnavailable)?;
        Ok(rows)
    }
}

/// The histogram's bucket widths, by name, in seconds.
const INTERVALS: [(&str, i64); 5] = [
    ("1m", 60),
    ("5m", 300),
    ("15m", 900),
    ("1h", 3600),
    ("1d", 86_400),
];

/// Buckets of `seconds` that the range from `since` to `until` spans.
fn buckets(since: OffsetDateTime, until: OffsetDateTime, seconds: i64) -> i64 {
    (until - since).whole_seconds() / seconds + 1
}

fn is_parameter(name: &str) -> bool {
    matches!(
        name,
        "device_id"
            | "service_name"
            | "trace_id"
            | "q"
            | "level"
            | "since"
            | "until"
            | "order"
            | "limit"
            | "cursor"
            | "interval"
    )
}

/// Searches the logs of the key's tenant across every device: by device, service, trace,
/// level, time, words of the message (`q`) and fields of `log_data` (`data.<path>`,
/// for example `data.firmware=2.4.1` or `data.motor.rpm=>=1200`), newest or oldest
/// first, in cursor pages. See docs/search.md for the syntax.
#[utoipa::path(
    get,
    path = "/api/logs",
    tag = "query",
    params(SearchParams,
           ("data.{path}" = Option<String>, Query, description = "A field of log_data by dotted path: a value finds it equal (as text, number, boolean or null); >, >=, < or <= before a number compare numbers. Repeat for several fields.")),
    security(("bearer" = ["read"]), ("api_key" = ["read"])),
    responses(
        (status = 200, description = "A page of logs", body = LogPage),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `read` scope", body = ErrorBody),
        (status = 422, description = "An invalid parameter, or a search too broad for its time budget (`search_too_broad`)", body = ErrorBody),
        (status = 429, description = "A rate limit is reached; retry after `Retry-After` seconds", body = ErrorBody,
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 503, description = "PostgreSQL is unavailable", body = ErrorBody),
    )
)]
pub async fn search(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    RawQuery(query): RawQuery,
) -> Result<Json<LogPage>> {
    let search = Search::parse(
        principal.tenant.as_str(),
        query.as_deref(),
        OffsetDateTime::now_utc(),
    )?;
    let mut sql = QueryBuilder::<Postgres>::new(STORED_LOG_COLUMNS);
    search.push_filters(&mut sql);
    let (comparison, direction) = match search.order {
        Order::NewestFirst => ("<", "desc"),
        Order::OldestFirst => (">", "asc"),
    };
    if let Some((cursor, at)) = search
        .cursor
        .and_then(|cursor| Some((cursor, cursor.at()?)))
    {
        sql.push(format_args!(" and (created_at, id) {comparison} ("))
            .push_bind(at)
            .push(", ")
            .push_bind(cursor.id)
            .push(")");
    }
    sql.push(format_args!(
        " order by created_at {direction}, id {direction} limit "
    ))
    .push_bind(i64::from(search.limit) + 1);
    let started = Instant::now();
    let rows: Vec<StoredLog> = Search::fetch(&state, &mut sql).await?;
    state.metrics.postgres_query("search", started.elapsed());
    let page = page_of(rows, search.limit)?;
    Ok(Json(LogPage {
        total: page.total,
        source: Source::Database,
        data: page.data,
        next: page.next,
    }))
}

/// How many logs of a search fall in each bucket of its time range.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Histogram {
    /// The bucket width.
    pub interval: String,
    /// The time range searched.
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub until: OffsetDateTime,
    /// Every bucket that holds a log, oldest first.
    pub buckets: Vec<Bucket>,
    /// Logs in all of them.
    pub total: i64,
}

/// One bucket of a histogram.
#[derive(Debug, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Bucket {
    /// Its start.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Logs in it.
    pub count: i64,
}

/// How many logs a search finds per time bucket, to draw over its results: `interval`
/// wide, or without it the narrowest of 1m, 5m, 15m, 1h and 1d that draws the range in
/// at most 2000 buckets. The filters are those of `GET /api/logs`.
#[utoipa::path(
    get,
    path = "/api/logs/histogram",
    tag = "query",
    params(SearchParams,
           ("data.{path}" = Option<String>, Query, description = "As in GET /api/logs")),
    security(("bearer" = ["read"]), ("api_key" = ["read"])),
    responses(
        (status = 200, description = "Counts per bucket", body = Histogram),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `read` scope", body = ErrorBody),
        (status = 422, description = "An invalid parameter, too many buckets, or a search too broad for its time budget", body = ErrorBody),
        (status = 429, description = "A rate limit is reached; retry after `Retry-After` seconds", body = ErrorBody,
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 503, description = "PostgreSQL is unavailable", body = ErrorBody),
    )
)]
pub async fn histogram(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    RawQuery(query): RawQuery,
) -> Result<Json<Histogram>> {
    let search = Search::parse(
        principal.tenant.as_str(),
        query.as_deref(),
        OffsetDateTime::now_utc(),
    )?;
    // Without an interval, the narrowest that draws the range in at most MAX_BUCKETS.
    let (name, seconds) = match search.interval {
        Some(seconds) => INTERVALS
            .into_iter()
            .find(|(_, width)| *width == seconds)
            .unwrap_or(INTERVALS[0]),
        None => INTERVALS
            .into_iter()
            .find(|(_, width)| buckets(search.since, search.until, *width) <= MAX_BUCKETS)
            .ok_or_else(|| {
                Error::InvalidQuery(format!(
                    "the time range spans more than {MAX_BUCKETS} days; narrow since and until"
                ))
            })?,
    };
    let mut sql = QueryBuilder::<Postgres>::new(format!(
        "select date_bin('{seconds} seconds', created_at, timestamptz '2000-01-01') as at, count(*) as count"
    ));
    search.push_filters(&mut sql);
    sql.push(" group by 1 order by 1");
    let started = Instant::now();
    let buckets: Vec<Bucket> = Search::fetch(&state, &mut sql).await?;
    state.metrics.postgres_query("histogram", started.elapsed());
    Ok(Json(Histogram {
        interval: name.to_owned(),
        since: search.since,
        until: search.until,
        total: buckets.iter().map(|bucket| bucket.count).sum(),
        buckets,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn parse(query: &str) -> Result<Search> {
        Search::parse("acme", Some(query), now())
    }

    #[test]
    fn words_and_phrases_are_terms() {
        assert_eq!(
            terms(r#"pressure  "valve 3" high"#).unwrap(),
            ["pressure", "valve 3", "high"]
        );
        assert!(terms(r#""open"#).is_err());
        assert!(terms(&"w ".repeat(17)).is_err());
        assert!(terms(&"x".repeat(201)).is_err());
        assert!(terms("valve\0").is_err());
    }

    #[test]
    fn like_patterns_match_literally() {
        assert_eq!(like_pattern("50%_a\\b"), r"%50\%\_a\\b%");
    }

    #[test]
    fn field_filters_compare_as_asked() {
        let search = parse("data.firmware=2.4.1&data.motor.rpm=>=1200&data.ok=true").unwrap();
        assert_eq!(search.fields.len(), 3);
        assert_eq!(search.fields[1].path, ["motor", "rpm"]);
        assert_eq!(
            search.fields[1].comparison,
            Comparison::Numeric(">=", 1200.0)
        );
        let firmware = &search.fields[0];
        assert_eq!(
            firmware.containments("2.4.1"),
            [json!({"firmware": "2.4.1"})]
        );
        assert_eq!(
            FieldFilter::parse("a.b", "42").unwrap().containments("42"),
            [json!({"a": {"b": "42"}}), json!({"a": {"b": 42}})]
        );
        assert_eq!(
            search.fields[2].containments("true"),
            [json!({"ok": "true"}), json!({"ok": true})]
        );
    }

    #[test]
    fn the_range_defaults_to_the_last_hour() {
        let search = parse("q=pressure").unwrap();
        assert_eq!(search.until, now());
        assert_eq!(search.since, now() - time::Duration::HOUR);
    }

    #[test]
    fn bad_searches_name_their_parameter() {
        for (query, expected) in [
            ("data.=1", "a field is a dotted path"),
            ("data.a..b=1", "a field is a dotted path"),
            ("data.rpm=>fast", "compares with a number"),
            ("data.rpm=<NaN", "compares with a number"),
            ("q=\"open", "must be closed"),
            (
                "since=2026-01-01T00:00:00Z&until=2025-01-01T00:00:00Z",
                "since must be before until",
            ),
            (
                "since=2016-01-01T00:00:00Z&until=2026-01-01T00:00:00Z",
                "spans at most 31 days",
            ),
            ("order=sideways", "order must be newest or oldest"),
            ("limit=1000000000", "limit must be"),
            ("interval=7m", "interval must be"),
            (
                "since=2026-01-01T00:00:00Z&until=2026-01-31T00:00:00Z&interval=1m",
                "more than 2000",
            ),
            ("device=pump-7", "unknown parameter \"device\""),
            ("level=LOUD", "level: unknown log level"),
        ] {
            let error = parse(query).unwrap_err().to_string();
            assert!(error.contains(expected), "{query}: {error}");
        }
        // A device bounds the scan through its index: a long range is fine then.
        assert!(
            parse("device_id=pump-7&since=2016-01-01T00:00:00Z&until=2026-01-01T00:00:00Z").is_ok()
        );
    }
}

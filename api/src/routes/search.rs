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
//! Every search runs within a budget (`LOGPIPELINE_SEARCH_TIMEOUT_MS`, 5 s, all its
//! statements together); one that would read more is stopped in PostgreSQL at the budget
//! and answered 422 `search_too_broad`, so no query can hold the database. At most
//! `LOGPIPELINE_SEARCH_CONCURRENCY` searches run at once in an api process, and
//! `LOGPIPELINE_SEARCH_CONCURRENCY_PER_TENANT` of one tenant, on connections of their own;
//! more are answered 429 `search_busy` ([`crate::read::admission`]). Searches are not cached: a fleet-wide result has no generation to keep it
//! fresh by, and the rule that a read is never stale comes first.

use std::collections::BTreeMap;
use std::time::Instant;

use axum::Extension;
use axum::Json;
use axum::extract::{RawQuery, State};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Principal;
use crate::error::{Error, ErrorBody, Result};
use crate::read::filter::{
    FieldFilter, Filter, MAX_TERMS, Subject, parse_levels, parse_limit, parse_time, terms,
};
use crate::read::page::{Cursor, LogPage, Order, Source, page_of, parse_cursor};
use crate::state::AppState;
use logpipeline_core::record::LogLevel;

/// Longest time range of a search not bounded by a device, service or trace.
pub const MAX_FLEET_RANGE_DAYS: i64 = 31;
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

/// A checked search.
#[derive(Debug, Clone)]
pub struct Search {
    /// Which logs; its time range is always bounded.
    filter: Filter,
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
        let filter = Filter {
            subjects,
            levels: parse_levels(&params.level)?,
            since: Some(since),
            until: Some(until),
            terms: params
                .q
                .as_deref()
                .map(terms)
                .transpose()?
                .unwrap_or_default(),
            fields,
            ..Filter::of(tenant)
        };
        Ok(Self {
            filter,
            since,
            until,
            order,
            limit: parse_limit(params.limit.as_deref())?,
            cursor: parse_cursor(params.cursor.as_deref())?,
            interval,
        })
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
        (status = 429, description = "A rate limit is reached, or as many searches run as may (`search_busy`); retry after `Retry-After` seconds", body = ErrorBody,
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 503, description = "PostgreSQL is unavailable (`database_unavailable`), or its connections for searches are all busy (`database_busy`)", body = ErrorBody),
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
    let _running = state.search_gate.admit(principal.tenant.as_str())?;
    let started = Instant::now();
    let mut snapshot = state
        .search_shelf
        .snapshot(Some(state.search_timeout))
        .await?;
    // One more than asked tells whether there is a next page.
    let logs = snapshot
        .page(
            &search.filter,
            search.order,
            search.cursor,
            search.limit as usize + 1,
        )
        .await?;
    snapshot.end().await?;
    state.metrics.postgres_query("search", started.elapsed());
    let page = page_of(logs, search.limit)?;
    Ok(Json(page.served_from(Source::Database)))
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
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Bucket {
    /// Its start.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Logs in it.
    pub count: i64,
    /// Logs in it per level, for the levels it has (`{"ERROR": 2, "INFO": 17}`).
    pub levels: BTreeMap<String, i64>,
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
        (status = 429, description = "A rate limit is reached, or as many searches run as may (`search_busy`); retry after `Retry-After` seconds", body = ErrorBody,
         headers(("Retry-After" = u32, description = "Seconds to wait"))),
        (status = 503, description = "PostgreSQL is unavailable (`database_unavailable`), or its connections for searches are all busy (`database_busy`)", body = ErrorBody),
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
    let _running = state.search_gate.admit(principal.tenant.as_str())?;
    let started = Instant::now();
    let mut snapshot = state
        .search_shelf
        .snapshot(Some(state.search_timeout))
        .await?;
    let counts = snapshot.histogram(&search.filter, seconds).await?;
    snapshot.end().await?;
    state.metrics.postgres_query("histogram", started.elapsed());
    let buckets: Vec<Bucket> = counts
        .into_iter()
        .map(|(at, levels)| Bucket {
            at,
            count: levels.values().sum(),
            levels,
        })
        .collect();
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
    use crate::read::filter::Comparison;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn parse(query: &str) -> Result<Search> {
        Search::parse("acme", Some(query), now())
    }

    #[test]
    fn field_filters_are_read_from_data_parameters() {
        let search = parse("data.firmware=2.4.1&data.motor.rpm=>=1200&data.ok=true").unwrap();
        let fields = &search.filter.fields;
        assert_eq!(fields.len(), 3);
        assert_eq!(fields[1].path, ["motor", "rpm"]);
        assert_eq!(fields[1].comparison, Comparison::Numeric(">=", 1200.0));
        assert_eq!(fields[0].comparison, Comparison::Equals("2.4.1".into()));
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

//! What a read asks for: whose logs (a tenant and a device, service or trace), which
//! levels, which time range, which words of the message and which fields of `log_data`;
//! the rules of each parameter; and the conditions that pick the logs, written once for
//! the rows of `logs`, for the logs of chunks and for the chunks' index.

use logpipeline_core::chunk::{bloom, tokens};
use logpipeline_core::codec::unix_micros;
use logpipeline_core::origin::{ServiceName, TraceId};
use logpipeline_core::record::{DeviceId, LogLevel};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sqlx::{Postgres, QueryBuilder};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{Error, Result};

/// Logs per page when `limit` is not given.
const DEFAULT_LIMIT: u32 = 100;
/// Most logs per page.
const MAX_LIMIT: u32 = 1000;
/// Most words and phrases in `q`, and most `data.` filters.
pub const MAX_TERMS: usize = 16;
/// Longest word or phrase of `q`, and longest field value, in characters.
const MAX_TERM_CHARS: usize = 200;
/// Most segments of a `data.` path, and longest segment.
const MAX_PATH_SEGMENTS: usize = 8;
const MAX_SEGMENT_CHARS: usize = 64;

/// Whose logs a read is about, checked by the rules of its field.
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
    pub fn those_given(
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

    /// The column it is found by, and the value.
    pub fn column(&self) -> (&'static str, &str) {
        match self {
            Self::Device(name) => ("device_id", name),
            Self::Service(name) => ("service_name", name),
            Self::Trace(id) => ("trace_id", id),
        }
    }

    /// Whether a log of `device`, `service` and `trace` is this subject's.
    pub fn holds(&self, device: &str, service: Option<&str>, trace: Option<&str>) -> bool {
        match self {
            Self::Device(name) => device == name,
            Self::Service(name) => service == Some(name.as_str()),
            Self::Trace(id) => trace == Some(id.as_str()),
        }
    }
}

/// `limit`: 1 to [`MAX_LIMIT`], [`DEFAULT_LIMIT`] when absent.
pub fn parse_limit(limit: Option<&str>) -> Result<u32> {
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
pub fn parse_levels(levels: &[String]) -> Result<Vec<LogLevel>> {
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
pub fn parse_time(name: &str, value: Option<&str>) -> Result<Option<OffsetDateTime>> {
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

/// The words and "quoted phrases" of `q`. A NUL is refused: no stored message holds one
/// (ingest refuses it, as PostgreSQL does), and PostgreSQL refuses it in a pattern too.
pub fn terms(q: &str) -> Result<Vec<String>> {
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

/// A comparison of a `data.` filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Comparison {
    /// Equal as text, number, boolean or null.
    Equals(String),
    /// A numeric comparison (`>`, `>=`, `<`, `<=`) with a number.
    Numeric(&'static str, f64),
}

/// A filter on a field of `log_data`.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldFilter {
    /// The names leading to the field.
    pub path: Vec<String>,
    /// What it must be.
    pub comparison: Comparison,
}

impl FieldFilter {
    /// The filter `data.<path>=<value>`.
    pub fn parse(path: &str, value: &str) -> Result<Self> {
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

    /// The JSON values an equality filter's text can be, one per type: `@>` with any of
    /// them at the path finds the field.
    fn leaves(value: &str) -> Vec<Value> {
        let mut leaves = vec![Value::String(value.to_owned())];
        if let Ok(number) = value.parse::<serde_json::Number>() {
            leaves.push(Value::Number(number));
        }
        match value {
            "true" => leaves.push(Value::Bool(true)),
            "false" => leaves.push(Value::Bool(false)),
            "null" => leaves.push(Value::Null),
            _ => {}
        }
        leaves
    }

    /// The `log_data` documents that contain the value at the path, one per JSON type
    /// the text can be: `@>` with any of them finds the field, through the GIN index on
    /// `log_data` where there is one.
    pub fn containments(&self, value: &str) -> Vec<Value> {
        Self::leaves(value)
            .into_iter()
            .map(|leaf| {
                self.path
                    .iter()
                    .rev()
                    .fold(leaf, |inner, name| json!({ name: inner }))
            })
            .collect()
    }

    /// The tokens of a chunk's `fields` filter that a matching log would have put there:
    /// any one of them (for an equality, one per type the value can be), or all of them
    /// for a comparison's one (the path holds a number).
    fn tokens(&self) -> Vec<Vec<u8>> {
        match &self.comparison {
            Comparison::Equals(value) => Self::leaves(value)
                .iter()
                .filter_map(|leaf| {
                    let raw = RawValue::from_string(leaf.to_string()).ok()?;
                    tokens::value_token(&self.path, &raw)
                })
                .collect(),
            Comparison::Numeric(..) => vec![tokens::number_token(&self.path)],
        }
    }

    /// The condition on column `log_data`.
    fn push_condition(&self, sql: &mut QueryBuilder<Postgres>) {
        match &self.comparison {
            Comparison::Equals(value) => {
                sql.push(" and (");
                for (index, document) in self.containments(value).into_iter().enumerate() {
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
                    .push_bind(self.path.clone())
                    .push(") = 'number' then (log_data #>> ")
                    .push_bind(self.path.clone())
                    .push(format_args!(")::numeric end {operator} "))
                    .push_bind(*number)
                    .push("::numeric");
            }
        }
    }
}

/// Which logs a read returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Filter {
    /// The key's tenant's.
    pub tenant: String,
    /// Of these device, service and trace, all of them.
    pub subjects: Vec<Subject>,
    /// Of these levels (any, when empty).
    pub levels: Vec<LogLevel>,
    /// Received at or after this time.
    #[serde(with = "time::serde::rfc3339::option")]
    pub since: Option<OffsetDateTime>,
    /// Received before this time.
    #[serde(with = "time::serde::rfc3339::option")]
    pub until: Option<OffsetDateTime>,
    /// Words and phrases the message holds, all of them, case-insensitively.
    pub terms: Vec<String>,
    /// Fields of `log_data`, all of them.
    #[serde(skip)]
    pub fields: Vec<FieldFilter>,
}

impl Filter {
    /// Every log of `tenant`.
    pub fn of(tenant: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
            subjects: Vec::new(),
            levels: Vec::new(),
            since: None,
            until: None,
            terms: Vec::new(),
            fields: Vec::new(),
        }
    }

    /// Whether it asks about the message or `log_data`, which PostgreSQL decides.
    pub fn has_content(&self) -> bool {
        !self.terms.is_empty() || !self.fields.is_empty()
    }

    /// `where …` over the rows of `logs`: every condition.
    pub fn push_rows_where(&self, sql: &mut QueryBuilder<Postgres>) {
        sql.push(" where tenant = ").push_bind(self.tenant.clone());
        for subject in &self.subjects {
            let (column, value) = subject.column();
            sql.push(format_args!(" and {column} = "))
                .push_bind(value.to_owned());
        }
        if !self.levels.is_empty() {
            let levels: Vec<&str> = self.levels.iter().map(|level| level.as_str()).collect();
            sql.push(" and log_level = any(")
                .push_bind(levels)
                .push(")");
        }
        if let Some(since) = self.since {
            sql.push(" and created_at >= ").push_bind(since);
        }
        if let Some(until) = self.until {
            sql.push(" and created_at < ").push_bind(until);
        }
        self.push_content(sql);
    }

    /// ` and …` of the conditions on the message and `log_data` (columns `message` and
    /// `log_data`): the same on a row and on a log of a chunk.
    pub fn push_content(&self, sql: &mut QueryBuilder<Postgres>) {
        for term in &self.terms {
            sql.push(" and message ilike ")
                .push_bind(like_pattern(term));
        }
        for field in &self.fields {
            field.push_condition(sql);
        }
    }

    /// ` and …` over `log_chunks c`: the chunks that can hold a log this filter picks by
    /// their headers (the tenant's, the device's, of the time range, with a level asked
    /// for). Their Bloom filters are tested apart ([`Filter::chunk_tokens`]).
    pub fn push_chunk_conditions(&self, sql: &mut QueryBuilder<Postgres>) {
        sql.push(" and c.tenant = ").push_bind(self.tenant.clone());
        for subject in &self.subjects {
            if let Subject::Device(device) = subject {
                sql.push(" and c.device_id = ").push_bind(device.clone());
            }
        }
        if let Some(since) = self.since {
            sql.push(" and c.last_at >= ").push_bind(since);
        }
        if let Some(until) = self.until {
            sql.push(" and c.first_at < ").push_bind(until);
        }
        if !self.levels.is_empty() {
            sql.push(" and (");
            for (index, level) in self.levels.iter().enumerate() {
                if index > 0 {
                    sql.push(" + ");
                }
                // Arrays count from 1; a level's place is its rank among the five.
                sql.push(format_args!("c.levels[{}]", *level as usize + 1));
            }
            sql.push(") > 0");
        }
    }

    /// The tokens a chunk's Bloom filters hold if it holds a log this filter picks: the
    /// trigrams of the words, and one token of each field, service and trace.
    pub fn chunk_tokens(&self) -> ChunkTokens {
        let mut fields: Vec<Vec<(i64, i64)>> = self
            .subjects
            .iter()
            .filter_map(|subject| match subject {
                Subject::Device(_) => None,
                Subject::Service(service) => Some(tokens::service_token(service)),
                Subject::Trace(trace) => Some(tokens::trace_token(trace)),
            })
            .map(|token| vec![bloom::hashes(&token)])
            .collect();
        fields.extend(self.fields.iter().map(|field| {
            field
                .tokens()
                .iter()
                .map(|token| bloom::hashes(token))
                .collect()
        }));
        ChunkTokens {
            grams: tokens::search_grams(&self.terms)
                .iter()
                .map(|gram| bloom::hashes(gram))
                .collect(),
            fields,
        }
    }

    /// Whether a log of `device` with this level, service, trace and time (µs since the
    /// epoch) passes the conditions other than those on its message and `log_data`.
    /// Times compare in whole microseconds, as PostgreSQL gets the bounds.
    pub fn admits(
        &self,
        device: &str,
        level: &str,
        service: Option<&str>,
        trace: Option<&str>,
        at: i64,
    ) -> bool {
        self.subjects
            .iter()
            .all(|subject| subject.holds(device, service, trace))
            && (self.levels.is_empty() || self.levels.iter().any(|l| l.as_str() == level))
            && self.since.is_none_or(|since| at >= unix_micros(since))
            && self.until.is_none_or(|until| at < unix_micros(until))
    }
}

/// What a chunk's Bloom filters must hold to hold a log a filter picks.
#[derive(Debug, Default)]
pub struct ChunkTokens {
    /// Every one of these trigrams (their hashes), in `grams`.
    pub grams: Vec<(i64, i64)>,
    /// For each group, one of its tokens, in `fields`.
    pub fields: Vec<Vec<(i64, i64)>>,
}

impl ChunkTokens {
    /// Whether it asks nothing of the filters.
    pub fn is_empty(&self) -> bool {
        self.grams.is_empty() && self.fields.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let firmware = FieldFilter::parse("firmware", "2.4.1").unwrap();
        assert_eq!(
            firmware.containments("2.4.1"),
            [json!({"firmware": "2.4.1"})]
        );
        let rpm = FieldFilter::parse("motor.rpm", ">=1200").unwrap();
        assert_eq!(rpm.path, ["motor", "rpm"]);
        assert_eq!(rpm.comparison, Comparison::Numeric(">=", 1200.0));
        assert_eq!(
            FieldFilter::parse("a.b", "42").unwrap().containments("42"),
            [json!({"a": {"b": "42"}}), json!({"a": {"b": 42}})]
        );
        assert_eq!(
            FieldFilter::parse("ok", "true")
                .unwrap()
                .containments("true"),
            [json!({"ok": "true"}), json!({"ok": true})]
        );
    }

    #[test]
    fn a_field_filter_asks_for_the_tokens_its_matches_have() {
        let mut stored = Vec::new();
        tokens::field_tokens(r#"{"a": {"b": 42.0}, "s": "42", "n": 7}"#, &mut stored);
        let equal = FieldFilter::parse("a.b", "42").unwrap().tokens();
        assert!(equal.iter().any(|token| stored.contains(token)));
        let text = FieldFilter::parse("s", "42").unwrap().tokens();
        assert!(text.iter().any(|token| stored.contains(token)));
        let compared = FieldFilter::parse("n", ">3").unwrap().tokens();
        assert!(compared.iter().all(|token| stored.contains(token)));
        let absent = FieldFilter::parse("a.b", "43").unwrap().tokens();
        assert!(!absent.iter().any(|token| stored.contains(token)));
    }

    #[test]
    fn a_log_is_admitted_by_its_subject_level_and_time() {
        let at = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let filter = Filter {
            subjects: vec![Subject::Service("checkout".into())],
            levels: vec![LogLevel::Error],
            since: Some(at),
            until: Some(at + time::Duration::SECOND),
            ..Filter::of("acme")
        };
        let micros = unix_micros(at);
        assert!(filter.admits("d", "ERROR", Some("checkout"), None, micros));
        assert!(!filter.admits("d", "INFO", Some("checkout"), None, micros));
        assert!(!filter.admits("d", "ERROR", None, None, micros));
        assert!(!filter.admits("d", "ERROR", Some("checkout"), None, micros + 1_000_000));
        // A bound finer than a microsecond counts in whole microseconds, as PostgreSQL
        // gets it: a log at its microsecond is not before it.
        let bounded = Filter {
            until: Some(at + time::Duration::nanoseconds(900)),
            ..Filter::of("acme")
        };
        assert!(!bounded.admits("d", "INFO", None, None, micros));
    }
}

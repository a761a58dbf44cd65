//! The log record devices send, with the seed's field rules enforced while parsing.
//!
//! Every field type checks its own rule in `TryFrom`, so a [`LogRecord`] that exists is
//! valid: the API rejects bad input with the field's path in the message, and the worker,
//! which decodes the same types from the stream, can never insert a record that breaks a
//! rule. Besides the seed's rules, what PostgreSQL cannot store (NUL characters, unpaired
//! UTF-16 surrogate escapes in JSON, numbers beyond its `numeric`) is refused up front
//! rather than failing later in the worker.

use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AnyOfBuilder, ArrayBuilder, ObjectBuilder, Ref, Schema, Type};

pub use crate::field::FieldError;
use crate::numeric;
use crate::origin::{
    MAX_SERVICE_NAME_CHARS, ServiceName, SpanId, TraceId, check_identifier, check_name,
};

/// Most logs one batch request may carry.
pub const MAX_BATCH_LOGS: usize = 1000;
/// Longest `device_id`, in characters.
pub const MAX_DEVICE_ID_CHARS: usize = 50;
/// Longest `message`, in characters.
pub const MAX_MESSAGE_CHARS: usize = 5000;
/// Deepest nesting of objects and arrays in `log_data`, the object itself being level 1.
/// PostgreSQL parses `jsonb` recursively and refuses deep documents with "stack depth
/// limit exceeded" (a few thousand levels, depending on its `max_stack_depth`); the cap
/// keeps every accepted log storable, and far below serde_json's own recursion limit of
/// 128, which reads the logs back.
pub const MAX_LOG_DATA_DEPTH: usize = 64;

/// One log as devices send it and as it travels through the stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"device_id": "pump-7", "log_level": "ERROR", "message": "pressure low", "log_data": {"bar": 0.4}}))]
pub struct LogRecord {
    /// The device or service that wrote the log.
    pub device_id: DeviceId,
    /// Its severity.
    pub log_level: LogLevel,
    /// The text of the log.
    pub message: Message,
    /// Structured data attached to the log: a JSON object, kept byte for byte, whose
    /// objects and arrays nest at most 64 levels deep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_data: Option<LogData>,
    /// The service that wrote the log, if it says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_name: Option<ServiceName>,
    /// The trace the log belongs to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<TraceId>,
    /// The span within the trace, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub span_id: Option<SpanId>,
}

/// A log checked where it lies, borrowing its text from the request body: the rules of
/// [`LogRecord`], applied by the same functions, without building one. The ingest paths
/// that keep the body as sent check with it, and build a [`LogRecord`] only to say what
/// is wrong with a log that fails.
#[derive(Debug, Deserialize)]
pub struct LogView<'a> {
    #[serde(borrow)]
    device_id: Cow<'a, str>,
    log_level: LogLevel,
    #[serde(borrow)]
    message: Cow<'a, str>,
    #[serde(borrow, default)]
    log_data: Option<&'a RawValue>,
    #[serde(borrow, default)]
    service_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    trace_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    span_id: Option<Cow<'a, str>>,
}

impl LogView<'_> {
    /// The device that sent it.
    pub fn device_id(&self) -> &str {
        &self.device_id
    }

    /// Whether the log follows every rule of [`LogRecord`]; its level if it does.
    pub fn check(&self) -> Result<LogLevel, FieldError> {
        check_name("device_id", &self.device_id, MAX_DEVICE_ID_CHARS)?;
        check_text("message", &self.message, MAX_MESSAGE_CHARS)?;
        if let Some(data) = self.log_data {
            check_log_data(data.get())?;
        }
        if let Some(name) = &self.service_name {
            check_name("service_name", name, MAX_SERVICE_NAME_CHARS)?;
        }
        if let Some(id) = &self.trace_id {
            check_identifier("trace_id", id)?;
        }
        if let Some(id) = &self.span_id {
            check_identifier("span_id", id)?;
        }
        Ok(self.log_level)
    }
}

/// The body of `POST /api/logs/batch`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct LogBatch {
    /// 1 to 1000 logs, accepted all or none.
    #[schema(min_items = 1, max_items = 1000)]
    pub logs: Vec<LogRecord>,
}

/// Severity of a log, as the seed accepts it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum LogLevel {
    /// Detailed diagnostics.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that was handled.
    Warning,
    /// A failure.
    Error,
    /// A failure that needs attention now.
    Critical,
}

impl LogLevel {
    /// Every level, least severe first.
    pub const ALL: [Self; 5] = [
        Self::Debug,
        Self::Info,
        Self::Warning,
        Self::Error,
        Self::Critical,
    ];

    /// The level as stored and sent: `DEBUG`, `INFO`, …
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debug => "DEBUG",
            Self::Info => "INFO",
            Self::Warning => "WARNING",
            Self::Error => "ERROR",
            Self::Critical => "CRITICAL",
        }
    }
}

impl LogLevel {
    /// A level as other logging systems name it: any case, and `WARN`, `FATAL` and
    /// `TRACE` as well (read as WARNING, CRITICAL and DEBUG). The gRPC service and the
    /// `/api/v1` front accept these; the seed's device endpoints keep the exact names.
    pub fn parse_lenient(level: &str) -> Result<Self, FieldError> {
        match level.to_ascii_uppercase().as_str() {
            "WARN" => Ok(Self::Warning),
            "FATAL" => Ok(Self::Critical),
            "TRACE" => Ok(Self::Debug),
            upper => upper.parse().map_err(|_| {
                FieldError::new(format!(
                    "unknown log level `{level}`, expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL (any case; WARN, FATAL and TRACE also)"
                ))
            }),
        }
    }
}

impl std::str::FromStr for LogLevel {
    type Err = FieldError;

    fn from_str(level: &str) -> Result<Self, FieldError> {
        Self::ALL
            .into_iter()
            .find(|candidate| candidate.as_str() == level)
            .ok_or_else(|| {
                FieldError::new(format!(
                    "unknown log level `{level}`, expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL"
                ))
            })
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Text without NUL, as a JSON Schema pattern (also [`Message`]'s).
const NO_NUL_PATTERN: &str = "^[^\\u0000]*$";

/// A device id: 1 to 50 characters, not only whitespace, without control characters
/// (Unicode category Cc).
// The schema's pattern says the same: no Cc character, and one at least that is not
// Unicode White_Space either (the set of `char::is_whitespace`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[schema(value_type = String, min_length = 1, max_length = 50, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\u0000-\\u001f\\u007f-\\u009f]*$", example = "device-001")]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

impl DeviceId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for DeviceId {
    type Error = FieldError;

    fn try_from(value: String) -> Result<Self, FieldError> {
        check_name("device_id", &value, MAX_DEVICE_ID_CHARS)?;
        Ok(Self(value))
    }
}

impl From<DeviceId> for String {
    fn from(value: DeviceId) -> Self {
        value.0
    }
}

/// A log message: 1 to 5000 characters, no NUL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(value_type = String, min_length = 1, max_length = 5000, pattern = "^[^\\u0000]*$")]
#[serde(try_from = "String", into = "String")]
pub struct Message(String);

impl Message {
    /// The message as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Message {
    type Error = FieldError;

    fn try_from(value: String) -> Result<Self, FieldError> {
        check_text("message", &value, MAX_MESSAGE_CHARS)?;
        Ok(Self(value))
    }
}

impl From<Message> for String {
    fn from(value: Message) -> Self {
        value.0
    }
}

fn check_text(field: &str, value: &str, max_chars: usize) -> Result<(), FieldError> {
    // The byte length bounds the character count: only long text needs counting.
    let too_long = value.len() > max_chars && value.chars().nth(max_chars).is_some();
    if value.is_empty() || too_long {
        return Err(FieldError::new(format!(
            "{field} must be 1 to {max_chars} characters long"
        )));
    }
    if value.contains('\0') {
        return Err(FieldError::new(format!(
            "{field} must not contain NUL characters"
        )));
    }
    Ok(())
}

/// `log_data`: a JSON object, kept as the exact text the device sent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(try_from = "Box<RawValue>", into = "Box<RawValue>")]
pub struct LogData(Box<RawValue>);

impl LogData {
    /// The object as JSON text.
    pub fn as_json(&self) -> &str {
        self.0.get()
    }

    /// What `value` serialises to, as `log_data`, under the same rules as `log_data` a
    /// device sends. The text is parsed once, by those rules' check.
    pub fn from_serialized(value: &impl Serialize) -> Result<Self, FieldError> {
        let raw = serde_json::value::to_raw_value(value)
            .map_err(|error| FieldError::new(format!("log_data cannot be written: {error}")))?;
        Self::try_from(raw)
    }
}

/// `log_data` in the API's documents: an object of JSON values whose keys and strings
/// hold no NUL, at any depth (`LogValue`, a recursive schema). The depth limit is not
/// expressible in JSON Schema and is stated in the description.
impl utoipa::PartialSchema for LogData {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some(
                "Structured data: a JSON object, kept byte for byte, whose objects and arrays \
                 nest at most 64 levels deep, whose keys and strings hold no NUL, and whose \
                 numbers PostgreSQL's numeric holds (below 1e131072 in magnitude, at most \
                 16383 digits after the point)",
            ))
            .property_names(Some(no_nul_string()))
            .additional_properties(Some(Ref::from_schema_name(LOG_VALUE)))
            .into()
    }
}

impl ToSchema for LogData {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        let object = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property_names(Some(no_nul_string()))
            .additional_properties(Some(Ref::from_schema_name(LOG_VALUE)));
        let array = ArrayBuilder::new().items(Ref::from_schema_name(LOG_VALUE));
        let value = AnyOfBuilder::new()
            .description(Some("A JSON value of `log_data`"))
            .item(no_nul_string())
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .item(ObjectBuilder::new().schema_type(Type::Boolean))
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .item(array)
            .item(object);
        schemas.push((LOG_VALUE.to_owned(), value.into()));
    }
}

/// The schema name of a value inside `log_data`.
const LOG_VALUE: &str = "LogValue";

fn no_nul_string() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(NO_NUL_PATTERN))
}

impl PartialEq for LogData {
    fn eq(&self, other: &Self) -> bool {
        self.as_json() == other.as_json()
    }
}

impl TryFrom<Box<RawValue>> for LogData {
    type Error = FieldError;

    fn try_from(value: Box<RawValue>) -> Result<Self, FieldError> {
        check_log_data(value.get())?;
        Ok(Self(value))
    }
}

impl From<LogData> for Box<RawValue> {
    fn from(value: LogData) -> Self {
        value.0
    }
}

/// The rules of `log_data`, given as valid JSON text.
fn check_log_data(json: &str) -> Result<(), FieldError> {
    if !json.starts_with('{') {
        return Err(FieldError::new("log_data must be a JSON object".into()));
    }
    check_json_escapes(json)?;
    check_json_structure(json)
}

/// Refuses the `\u` escapes of valid JSON text that PostgreSQL's `jsonb` cannot store:
/// `\u0000`, and UTF-16 surrogates that are not a high-low pair.
fn check_json_escapes(json: &str) -> Result<(), FieldError> {
    let bytes = json.as_bytes();
    let mut i = 0;
    // Where the last high surrogate escape ended, while it waits for its low half.
    let mut high_surrogate_end = None;
    while let Some(offset) = bytes[i..].iter().position(|&b| b == b'\\') {
        i += offset;
        let unicode = if bytes.get(i + 1) == Some(&b'u') {
            let hex = json.get(i + 2..i + 6);
            let code = hex.and_then(|hex| u16::from_str_radix(hex, 16).ok());
            Some(code.ok_or_else(|| FieldError::new("log_data has a malformed \\u escape".into()))?)
        } else {
            None
        };
        let pending_high = high_surrogate_end.take();
        match unicode {
            Some(0xDC00..=0xDFFF) if pending_high == Some(i) => {}
            _ if pending_high.is_some() => return Err(unpaired_surrogate()),
            Some(0) => {
                return Err(FieldError::new(
                    "log_data must not contain \\u0000 (PostgreSQL cannot store it)".into(),
                ));
            }
            Some(0xD800..=0xDBFF) => high_surrogate_end = Some(i + 6),
            Some(0xDC00..=0xDFFF) => return Err(unpaired_surrogate()),
            _ => {}
        }
        i += if unicode.is_some() { 6 } else { 2 };
    }
    if high_surrogate_end.is_some() {
        return Err(unpaired_surrogate());
    }
    Ok(())
}

/// Refuses JSON text whose objects and arrays nest deeper than [`MAX_LOG_DATA_DEPTH`],
/// or that holds a number PostgreSQL's `numeric` (which `jsonb` stores numbers as)
/// cannot hold. `json` is valid JSON already, so brackets outside strings are all
/// structure, and a `-` or digit outside a string starts a number.
fn check_json_structure(json: &str) -> Result<(), FieldError> {
    let bytes = json.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => i = string_end(bytes, i + 1),
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_LOG_DATA_DEPTH {
                    return Err(FieldError::new(format!(
                        "log_data must not nest objects and arrays more than {MAX_LOG_DATA_DEPTH} levels deep"
                    )));
                }
                i += 1;
            }
            b'}' | b']' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let end = bytes[i..]
                    .iter()
                    .position(|b| !matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                    .map_or(bytes.len(), |length| i + length);
                numeric::check(&json[i..end]).map_err(|why| {
                    FieldError::new(format!(
                        "log_data has a number PostgreSQL cannot store ({why})"
                    ))
                })?;
                i = end;
            }
            _ => i += 1,
        }
    }
    Ok(())
}

/// Where the JSON string whose text starts at `start` ends: just past its closing quote.
fn string_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start;
    while let Some(offset) = bytes
        .get(i..)
        .and_then(|rest| rest.iter().position(|&b| b == b'"' || b == b'\\'))
    {
        i += offset;
        if bytes[i] == b'"' {
            return i + 1;
        }
        i += 2;
    }
    bytes.len()
}

fn unpaired_surrogate() -> FieldError {
    FieldError::new(
        "log_data has an unpaired UTF-16 surrogate escape (PostgreSQL cannot store it)".into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<LogRecord, String> {
        serde_json::from_str(json).map_err(|error| error.to_string())
    }

    /// The `pattern` of a type's schema, as a regex.
    fn pattern_of<T: utoipa::PartialSchema>() -> regex::Regex {
        let RefOr::T(Schema::Object(object)) = T::schema() else {
            panic!("not an inline object schema");
        };
        regex::Regex::new(&object.pattern.expect("a pattern")).unwrap()
    }

    #[test]
    fn the_documented_patterns_agree_with_the_rules() {
        let device = pattern_of::<DeviceId>();
        for id in [
            "d",
            " d ",
            "日本",
            "a b",
            "\u{a0}x",
            "x\u{3000}",
            "a/b",
            "\u{ad}",
            "\u{200b}",
            " ",
            "\u{a0}",
            "\u{2000}\u{3000}",
            "\t",
            "a\tb",
            "a\u{7f}",
            "\u{85}",
            "a\u{9f}",
            "\u{1b}[31m",
        ] {
            assert_eq!(
                device.is_match(id),
                DeviceId::try_from(id.to_owned()).is_ok(),
                "{id:?}"
            );
        }
        let message = pattern_of::<Message>();
        for text in ["m", "a\tb", "\u{85}", "a\0b", "\0"] {
            assert_eq!(
                message.is_match(text),
                Message::try_from(text.to_owned()).is_ok(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_seed_log_parses() {
        let log = parse(
            r#"{"device_id":"device-001","log_level":"INFO","message":"hi","log_data":{"v": "1.0"}}"#,
        )
        .unwrap();
        assert_eq!(log.device_id.as_str(), "device-001");
        assert_eq!(log.log_level, LogLevel::Info);
        assert_eq!(log.log_data.unwrap().as_json(), r#"{"v": "1.0"}"#);
    }

    #[test]
    fn log_data_is_optional_and_may_be_null() {
        let absent = parse(r#"{"device_id":"d","log_level":"DEBUG","message":"m"}"#).unwrap();
        let null = parse(r#"{"device_id":"d","log_level":"DEBUG","message":"m","log_data":null}"#)
            .unwrap();
        assert_eq!(absent.log_data, None);
        assert_eq!(null.log_data, None);
    }

    #[test]
    fn field_rules_are_enforced() {
        let long_id = "x".repeat(51);
        let cases = [
            (
                r#"{"device_id":"","log_level":"INFO","message":"m"}"#.to_owned(),
                "device_id must be 1 to 50",
            ),
            (
                format!(r#"{{"device_id":"{long_id}","log_level":"INFO","message":"m"}}"#),
                "device_id must be 1 to 50",
            ),
            (
                r#"{"device_id":"   ","log_level":"INFO","message":"m"}"#.to_owned(),
                "device_id must not be only whitespace",
            ),
            (
                r#"{"device_id":"a\tb","log_level":"INFO","message":"m"}"#.to_owned(),
                "device_id must not contain control characters",
            ),
            (
                r#"{"device_id":"a\u007fb","log_level":"INFO","message":"m"}"#.to_owned(),
                "device_id must not contain control characters",
            ),
            (
                r#"{"device_id":"d","log_level":"TRACE","message":"m"}"#.to_owned(),
                "unknown variant `TRACE`",
            ),
            (
                r#"{"device_id":"d","log_level":"info","message":"m"}"#.to_owned(),
                "unknown variant `info`",
            ),
            (
                r#"{"device_id":"d","log_level":"INFO","message":""}"#.to_owned(),
                "message must be 1 to 5000",
            ),
            (
                format!(
                    r#"{{"device_id":"d","log_level":"INFO","message":"{}"}}"#,
                    "é".repeat(5001)
                ),
                "message must be 1 to 5000",
            ),
            (
                r#"{"device_id":"d\u0000","log_level":"INFO","message":"m"}"#.to_owned(),
                "device_id must not contain control characters",
            ),
            (
                r#"{"device_id":"d","log_level":"INFO","message":"m","trace_id":"a b"}"#.to_owned(),
                "trace_id must hold visible ASCII",
            ),
            (
                r#"{"device_id":"d","log_level":"INFO","message":"m","service_name":""}"#
                    .to_owned(),
                "service_name must be 1 to 100",
            ),
            (
                r#"{"device_id":"d","log_level":"INFO","message":"m","log_data":[1]}"#.to_owned(),
                "log_data must be a JSON object",
            ),
            (
                r#"{"device_id":"d","log_level":"INFO","message":"m","log_data":"x"}"#.to_owned(),
                "log_data must be a JSON object",
            ),
            (
                r#"{"device_id":"d","log_level":"INFO"}"#.to_owned(),
                "missing field `message`",
            ),
        ];
        for (json, expected) in cases {
            let error = parse(&json).unwrap_err();
            assert!(error.contains(expected), "{json}: {error}");
        }
    }

    #[test]
    fn a_log_view_follows_the_same_rules_as_a_record() {
        let mut logs = vec![
            r#"{"device_id":"d","log_level":"INFO","message":"m"}"#.to_owned(),
            r#"{"device_id":"d\u00e9","log_level":"INFO","message":"a\"b","log_data":null}"#
                .to_owned(),
            r#"{"device_id":"d","log_level":"INFO","message":"m","log_data":{"n":1e131072}}"#
                .to_owned(),
            r#"{"device_id":"d","log_level":"INFO","message":"m","log_data":{"n":"\u0000"}}"#
                .to_owned(),
            r#"{"device_id":"d","log_level":"INFO","message":"m","span_id":"x y"}"#.to_owned(),
            r#"{"device_id":"d","log_level":"INFO","message":"m","service_name":null}"#.to_owned(),
            r#"{"device_id":"d","log_level":"INFO","message":"m","extra":[1]}"#.to_owned(),
            r#"{"device_id":"d","device_id":"e","log_level":"INFO","message":"m"}"#.to_owned(),
            r#"{"device_id":"d","log_level":"INFO","message":"\u0000"}"#.to_owned(),
        ];
        logs.extend([
            format!(
                r#"{{"device_id":"{}","log_level":"INFO","message":"m"}}"#,
                "x".repeat(51)
            ),
            format!(
                r#"{{"device_id":"d","log_level":"INFO","message":"{}"}}"#,
                "é".repeat(5001)
            ),
            format!(
                r#"{{"device_id":"d","log_level":"INFO","message":"m","trace_id":"{}"}}"#,
                "t".repeat(65)
            ),
        ]);
        for json in logs {
            let view = serde_json::from_str::<LogView<'_>>(&json)
                .ok()
                .and_then(|view| view.check().ok());
            let record = parse(&json).ok().map(|record| record.log_level);
            assert_eq!(view, record, "{json}");
        }
    }

    #[test]
    fn limits_count_characters_not_bytes() {
        let id = "é".repeat(50);
        let message = "日".repeat(5000);
        let json = format!(r#"{{"device_id":"{id}","log_level":"INFO","message":"{message}"}}"#);
        assert!(parse(&json).is_ok());
    }

    #[test]
    fn json_escapes_postgres_cannot_store_are_refused() {
        let refused = [
            r#"{"a":"\u0000"}"#,
            r#"{"a":"\ud800"}"#,
            r#"{"a":"\udc00"}"#,
            r#"{"a":"\ud800x"}"#,
            r#"{"a":"\ud800\n"}"#,
            r#"{"a":"\ud800\ud800"}"#,
            r#"{"\u0000":1}"#,
        ];
        for json in refused {
            assert!(check_json_escapes(json).is_err(), "{json}");
        }
        let accepted = [
            r#"{"a":"\ud83d\ude00"}"#,
            r#"{"a":"\\u0000"}"#,
            r#"{"a":"\u00e9\n\"\\"}"#,
            r#"{"a":"plain"}"#,
        ];
        for json in accepted {
            assert!(check_json_escapes(json).is_ok(), "{json}");
        }
    }

    #[test]
    fn log_data_nests_at_most_the_cap() {
        let nested = |depth: usize| {
            let inner = "[".repeat(depth - 1) + &"]".repeat(depth - 1);
            format!(
                r#"{{"device_id":"d","log_level":"INFO","message":"m","log_data":{{"a":{inner}}}}}"#
            )
        };
        assert!(parse(&nested(MAX_LOG_DATA_DEPTH)).is_ok());
        for depth in [MAX_LOG_DATA_DEPTH + 1, 20_000] {
            let error = parse(&nested(depth)).unwrap_err();
            assert!(
                error.contains("more than 64 levels deep"),
                "{depth}: {error}"
            );
        }
        // Brackets inside strings, escaped quotes included, are text, not structure.
        let text = format!(r#"{{"a":"\"{}"}}"#, "[{".repeat(100));
        assert!(check_json_structure(&text).is_ok());
    }

    #[test]
    fn lenient_levels_take_any_case_and_common_aliases() {
        for (name, level) in [
            ("info", LogLevel::Info),
            ("Warning", LogLevel::Warning),
            ("WARN", LogLevel::Warning),
            ("fatal", LogLevel::Critical),
            ("trace", LogLevel::Debug),
            ("CRITICAL", LogLevel::Critical),
        ] {
            assert_eq!(LogLevel::parse_lenient(name), Ok(level), "{name}");
        }
        let error = LogLevel::parse_lenient("LOUD").unwrap_err().to_string();
        assert!(error.contains("unknown log level `LOUD`"), "{error}");
    }

    #[test]
    fn log_data_from_an_object_follows_the_same_rules() {
        let mut object = serde_json::Map::new();
        object.insert("adv_id".into(), 1234567.into());
        assert_eq!(
            LogData::from_serialized(&object).unwrap().as_json(),
            r#"{"adv_id":1234567}"#
        );
        object.insert("bad".into(), "a\0b".into());
        let error = LogData::from_serialized(&object).unwrap_err().to_string();
        assert!(error.contains("\\u0000"), "{error}");
    }

    #[test]
    fn service_trace_and_span_round_trip() {
        let json = r#"{"device_id":"d","log_level":"INFO","message":"m","service_name":"checkout","trace_id":"t-1","span_id":"s-1"}"#;
        let log = parse(json).unwrap();
        assert_eq!(
            log.service_name.as_ref().map(ServiceName::as_str),
            Some("checkout")
        );
        assert_eq!(serde_json::to_string(&log).unwrap(), json);
    }

    #[test]
    fn levels_parse_from_their_names_only() {
        for level in LogLevel::ALL {
            assert_eq!(level.as_str().parse::<LogLevel>(), Ok(level));
        }
        assert!("info".parse::<LogLevel>().is_err());
        assert!("".parse::<LogLevel>().is_err());
    }

    #[test]
    fn a_record_round_trips_through_json() {
        let json =
            r#"{"device_id":"d","log_level":"CRITICAL","message":"m","log_data":{"k":[1,2]}}"#;
        let log = parse(json).unwrap();
        assert_eq!(serde_json::to_string(&log).unwrap(), json);
    }
}

//! System B's log, as its client sends it (`write_log(message, service_name, level,
//! trace_id, span_id, **fields)`), turned into LogPipeline's record. The `/api/v1` front
//! and the gRPC service both send this way.
//!
//! The mapping:
//! - `device_id` is the service's name unless the log names a device: a service is the
//!   device of its own logs, so `GET /api/logs/{service}` finds them too;
//! - `service_name` defaults to `unknown_service` (OpenTelemetry's name for it);
//! - `level` defaults to INFO, in any case, WARN, FATAL and TRACE included;
//! - empty strings count as absent (protobuf cannot tell them apart);
//! - every other field (the keyword arguments, such as `adv_id`) and the entries of
//!   `metadata` go into `log_data`, `metadata` winning a name both have.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use crate::origin::{ServiceName, SpanId, TraceId};
use crate::record::{DeviceId, FieldError, LogData, LogLevel, LogRecord, Message};

/// Fields of a log for `log_data`, by name, each value kept as the exact JSON text it was
/// sent as: a number keeps every digit, as on the paths that take `log_data` whole.
pub type RawFields = BTreeMap<String, Box<RawValue>>;

/// `object`'s fields as [`RawFields`], for logs built from values rather than sent as
/// text (a gRPC request's `metadata`).
pub fn raw_fields(object: serde_json::Map<String, serde_json::Value>) -> RawFields {
    object
        .into_iter()
        // A JSON value always writes as JSON text: nothing is dropped here.
        .filter_map(|(name, value)| Some((name, serde_json::value::to_raw_value(&value).ok()?)))
        .collect()
}

/// A log of system B's client.
#[derive(Debug, Clone, Default)]
pub struct SeedLog {
    /// The text.
    pub message: String,
    /// The service that wrote it.
    pub service_name: Option<String>,
    /// Its level.
    pub level: Option<String>,
    /// Its trace.
    pub trace_id: Option<String>,
    /// Its span.
    pub span_id: Option<String>,
    /// Its device, when it names one.
    pub device_id: Option<String>,
    /// Its other fields, for `log_data`.
    pub fields: RawFields,
    /// Fields it sent that others of the same name replaced (system B's `metadata` wins
    /// over a top-level field): not stored, and checked as `log_data` all the same, so a
    /// request with a value the rules refuse is refused wherever the value is.
    pub shadowed: RawFields,
}

/// Why a field was refused: the field's name and the rule's words, as
/// `<field>: <why>`.
pub type FieldProblem = String;

impl SeedLog {
    /// The record this log becomes, or why it cannot.
    pub fn into_record(self) -> Result<LogRecord, FieldProblem> {
        let present = |value: Option<String>| value.filter(|value| !value.is_empty());
        let message = Message::try_from(self.message).map_err(|error| checked("message", error))?;
        let service_name = match present(self.service_name) {
            Some(name) => {
                ServiceName::try_from(name).map_err(|error| checked("service_name", error))?
            }
            None => ServiceName::unknown(),
        };
        let log_level = match present(self.level) {
            Some(level) => {
                LogLevel::parse_lenient(&level).map_err(|error| checked("level", error))?
            }
            None => LogLevel::Info,
        };
        let trace_id = present(self.trace_id)
            .map(TraceId::try_from)
            .transpose()
            .map_err(|error| checked("trace_id", error))?;
        let span_id = present(self.span_id)
            .map(SpanId::try_from)
            .transpose()
            .map_err(|error| checked("span_id", error))?;
        let device_id = present(self.device_id)
            .unwrap_or_else(|| truncated(service_name.as_str().trim_start(), 50));
        let device_id =
            DeviceId::try_from(device_id).map_err(|error| checked("device_id", error))?;
        if !self.shadowed.is_empty() {
            LogData::from_serialized(&self.shadowed).map_err(|error| checked("log_data", error))?;
        }
        let log_data = if self.fields.is_empty() {
            None
        } else {
            Some(
                LogData::from_serialized(&self.fields)
                    .map_err(|error| checked("log_data", error))?,
            )
        };
        Ok(LogRecord {
            device_id,
            log_level,
            message,
            log_data,
            service_name: Some(service_name),
            trace_id,
            span_id,
        })
    }
}

/// `error` of `field` as a problem that names the field.
pub fn checked(field: &str, error: FieldError) -> FieldProblem {
    let why = error.to_string();
    if why.starts_with(field) {
        why
    } else {
        format!("{field}: {why}")
    }
}

/// The first `chars` characters of `text`: a service name may be longer than a device id.
/// Cut after its leading whitespace, a valid service name gives a valid device id.
fn truncated(text: &str, chars: usize) -> String {
    text.chars().take(chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_owned()).unwrap()
    }

    fn log(message: &str) -> SeedLog {
        SeedLog {
            message: message.into(),
            ..SeedLog::default()
        }
    }

    #[test]
    fn a_shadowed_field_is_checked_though_not_stored() {
        let mut shadowed = RawFields::new();
        shadowed.insert("k".into(), raw(r#"{"a\u0000b": 1}"#));
        let refused = SeedLog {
            shadowed,
            ..log("m")
        }
        .into_record()
        .unwrap_err();
        assert!(refused.starts_with("log_data"), "{refused}");
    }

    #[test]
    fn a_bare_message_gets_the_defaults() {
        let record = log("hello").into_record().unwrap();
        assert_eq!(record.device_id.as_str(), "unknown_service");
        assert_eq!(
            record.service_name.as_ref().map(ServiceName::as_str),
            Some("unknown_service")
        );
        assert_eq!(record.log_level, LogLevel::Info);
        assert!(record.log_data.is_none() && record.trace_id.is_none());
    }

    #[test]
    fn the_seed_fields_map_onto_the_record() {
        let mut fields = RawFields::new();
        fields.insert("adv_id".into(), raw("1234567"));
        fields.insert("monitor_type".into(), raw(r#""impression""#));
        let record = SeedLog {
            message: "m".into(),
            service_name: Some("my-service".into()),
            level: Some("warn".into()),
            trace_id: Some("trace-123".into()),
            span_id: Some("span-456".into()),
            device_id: Some(String::new()),
            fields,
            shadowed: RawFields::new(),
        }
        .into_record()
        .unwrap();
        assert_eq!(record.device_id.as_str(), "my-service");
        assert_eq!(record.log_level, LogLevel::Warning);
        assert_eq!(record.trace_id.unwrap().as_str(), "trace-123");
        assert_eq!(record.span_id.unwrap().as_str(), "span-456");
        assert_eq!(
            record.log_data.unwrap().as_json(),
            r#"{"adv_id":1234567,"monitor_type":"impression"}"#
        );
    }

    #[test]
    fn numbers_keep_every_digit_and_follow_the_rules_of_log_data() {
        let digits = format!("0.{}", "1".repeat(300));
        let mut fields = RawFields::new();
        fields.insert("ratio".into(), raw(&digits));
        let record = SeedLog { fields, ..log("m") }.into_record().unwrap();
        assert_eq!(
            record.log_data.unwrap().as_json(),
            format!(r#"{{"ratio":{digits}}}"#)
        );
        // Past PostgreSQL's numeric: refused, as on every path, not rounded to 0.
        let mut fields = RawFields::new();
        fields.insert("tiny".into(), raw("1e-2000000000"));
        let problem = SeedLog { fields, ..log("m") }.into_record().unwrap_err();
        assert!(problem.starts_with("log_data"), "{problem}");
    }

    #[test]
    fn a_long_service_name_is_cut_to_a_device_id() {
        let record = SeedLog {
            service_name: Some("s".repeat(100)),
            ..log("m")
        }
        .into_record()
        .unwrap();
        assert_eq!(record.device_id.as_str().len(), 50);
    }

    #[test]
    fn a_service_name_with_leading_whitespace_still_gives_a_device_id() {
        let record = SeedLog {
            service_name: Some(format!("{}checkout", " ".repeat(60))),
            ..log("m")
        }
        .into_record()
        .unwrap();
        assert_eq!(record.device_id.as_str(), "checkout");
    }

    #[test]
    fn problems_name_their_field() {
        for (bad, expected) in [
            (log(""), "message must be 1 to 5000"),
            (
                SeedLog {
                    level: Some("LOUD".into()),
                    ..log("m")
                },
                "level: unknown log level `LOUD`",
            ),
            (
                SeedLog {
                    trace_id: Some("a b".into()),
                    ..log("m")
                },
                "trace_id must hold visible ASCII",
            ),
            (
                SeedLog {
                    device_id: Some("\t".into()),
                    ..log("m")
                },
                "device_id must not be only whitespace",
            ),
        ] {
            let problem = bad.into_record().unwrap_err();
            assert!(problem.starts_with(expected), "{problem}");
        }
    }
}

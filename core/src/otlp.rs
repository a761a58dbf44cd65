//! OTLP logs (OpenTelemetry's `ExportLogsServiceRequest`) as LogPipeline's records.
//!
//! Every log record of every scope of every resource becomes one [`LogRecord`]:
//! - `service_name`: the resource's `service.name` attribute, `unknown_service` without
//!   one;
//! - `device_id`: the resource's `device.id` attribute when it is a string, otherwise the
//!   service's name (cut to 50 characters), as for system B's logs ([`crate::seed`]), so
//!   `GET /api/logs/{service}` finds a service's logs;
//! - `log_level`: from the severity number (the TRACE and DEBUG ranges give DEBUG, INFO
//!   INFO, WARN WARNING, ERROR ERROR, FATAL CRITICAL); without one, from the severity
//!   text read leniently (`warn`, `Error`, …); INFO when neither says;
//! - `message`: a string body as it is; any other body as its JSON text, the body itself
//!   also going to `log_data.body`; a record without a body gets its event name;
//! - `trace_id` and `span_id`: lowercase hexadecimal (32 and 16 digits), absent when
//!   empty;
//! - `log_data`: `attributes` (the record's), `resource` (the resource's attributes),
//!   `scope` (`name`, `version`, `attributes`), `body` (see above), `timestamp` (the
//!   record's time, or the time it was observed when it has none, in RFC 3339 with
//!   nanoseconds), `severity_text`, `event_name` and `flags`, each only when present.
//!
//! Attribute values become JSON: strings, booleans, integers and doubles as such (a
//! non-finite double as its text), arrays and key-value lists as arrays and objects,
//! bytes as lowercase hexadecimal; a profile string-table reference, which only the
//! profiling signal uses, as null. A record that breaks a field rule once mapped (no body
//! and no event name, a message over 5000 characters, `log_data` nested deeper than 64
//! levels, NUL characters) is refused on its own, named by its path in the request.

use std::fmt::Write;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord as OtlpLogRecord;
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::record::{LogData, LogLevel, LogRecord};
use crate::seed::{FieldProblem, SeedLog, checked};

/// The resource attribute that names a log's device, when a resource has one.
pub const DEVICE_ID_ATTRIBUTE: &str = "device.id";

/// The resource attribute that names a log's service.
pub const SERVICE_NAME_ATTRIBUTE: &str = "service.name";

/// An export's records: those that follow the rules, and why each other one does not.
#[derive(Debug, Default, PartialEq)]
pub struct Export {
    /// The valid records, in the request's order.
    pub records: Vec<LogRecord>,
    /// Each refused record's path in the request and why, in the request's order.
    pub rejected: Vec<String>,
}

/// The records `request` carries.
pub fn records(request: ExportLogsServiceRequest) -> Export {
    let mut export = Export::default();
    for (r, resource_logs) in request.resource_logs.into_iter().enumerate() {
        let resource = resource_logs
            .resource
            .map(|resource| object(resource.attributes))
            .unwrap_or_default();
        let origin = Origin {
            service_name: text(&resource, SERVICE_NAME_ATTRIBUTE),
            device_id: text(&resource, DEVICE_ID_ATTRIBUTE),
            resource: rendered(&resource),
        };
        for (s, scope_logs) in resource_logs.scope_logs.into_iter().enumerate() {
            let scope = scope_logs
                .scope
                .and_then(scope)
                .and_then(|scope| rendered(&scope));
            for (l, log) in scope_logs.log_records.into_iter().enumerate() {
                match origin.record(log, scope.as_deref()) {
                    Ok(record) => export.records.push(record),
                    Err(why) => export.rejected.push(format!(
                        "resource_logs[{r}].scope_logs[{s}].log_records[{l}].{why}"
                    )),
                }
            }
        }
    }
    export
}

/// `object` as JSON text, written once and spliced into the `log_data` of each record
/// it applies to; none when it is empty.
fn rendered(object: &Map<String, Value>) -> Option<Box<RawValue>> {
    if object.is_empty() {
        return None;
    }
    serde_json::value::to_raw_value(object).ok()
}

/// What a resource says about its logs.
struct Origin {
    service_name: Option<String>,
    device_id: Option<String>,
    /// The resource's attributes, as JSON text.
    resource: Option<Box<RawValue>>,
}

/// A record's `log_data`, its fields in name order as a JSON object's would be.
#[derive(Serialize)]
struct Data<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    attributes: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<Value>,
    #[serde(skip_serializing_if = "str::is_empty")]
    event_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    flags: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "str::is_empty")]
    severity_text: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    timestamp: Option<String>,
}

impl Origin {
    /// `log` of this resource and of `scope` (its JSON text), as system B's logs are
    /// mapped, or why it cannot be stored.
    fn record(
        &self,
        log: OtlpLogRecord,
        scope: Option<&RawValue>,
    ) -> Result<LogRecord, FieldProblem> {
        let (message, body) = match log.body.and_then(|body| body.value) {
            Some(any_value::Value::StringValue(text)) => (text, None),
            Some(structured) => {
                let body = value(structured);
                (body.to_string(), Some(body))
            }
            None => (log.event_name.clone(), None),
        };
        let time = match log.time_unix_nano {
            0 => log.observed_time_unix_nano,
            time => time,
        };
        let level = level(log.severity_number, &log.severity_text);
        let data = Data {
            attributes: (!log.attributes.is_empty()).then(|| object(log.attributes)),
            body,
            event_name: &log.event_name,
            flags: (log.flags != 0).then_some(log.flags),
            resource: self.resource.as_deref(),
            scope,
            severity_text: &log.severity_text,
            timestamp: rfc3339(time),
        };
        let mut record = SeedLog {
            message,
            service_name: self.service_name.clone(),
            level: Some(level.as_str().to_owned()),
            trace_id: Some(hex(&log.trace_id)),
            span_id: Some(hex(&log.span_id)),
            device_id: self.device_id.clone(),
            ..SeedLog::default()
        }
        .into_record()?;
        let log_data =
            LogData::from_serialized(&data).map_err(|error| checked("log_data", error))?;
        // A record that says nothing beyond its columns has no `log_data`.
        record.log_data = (log_data.as_json() != "{}").then_some(log_data);
        Ok(record)
    }
}

/// The level of a severity number, or of its text when the number is unspecified.
pub fn level(number: i32, text: &str) -> LogLevel {
    match number {
        1..=8 => LogLevel::Debug,
        9..=12 => LogLevel::Info,
        13..=16 => LogLevel::Warning,
        17..=20 => LogLevel::Error,
        21..=24 => LogLevel::Critical,
        _ => LogLevel::parse_lenient(text.trim()).unwrap_or(LogLevel::Info),
    }
}

/// A scope's name, version and attributes; none when it says nothing.
fn scope(scope: InstrumentationScope) -> Option<Map<String, Value>> {
    let mut fields = Map::new();
    if !scope.name.is_empty() {
        fields.insert("name".into(), scope.name.into());
    }
    if !scope.version.is_empty() {
        fields.insert("version".into(), scope.version.into());
    }
    if !scope.attributes.is_empty() {
        fields.insert("attributes".into(), Value::Object(object(scope.attributes)));
    }
    (!fields.is_empty()).then_some(fields)
}

/// Attributes as a JSON object; a key given twice keeps its last value.
fn object(attributes: Vec<KeyValue>) -> Map<String, Value> {
    attributes
        .into_iter()
        .map(|attribute| (attribute.key, any(attribute.value)))
        .collect()
}

/// A string attribute of `attributes`, if it has one that is not empty.
fn text(attributes: &Map<String, Value>, key: &str) -> Option<String> {
    attributes
        .get(key)
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty())
        .map(str::to_owned)
}

fn any(value: Option<AnyValue>) -> Value {
    value
        .and_then(|value| value.value)
        .map_or(Value::Null, self::value)
}

fn value(value: any_value::Value) -> Value {
    match value {
        any_value::Value::StringValue(text) => Value::String(text),
        any_value::Value::BoolValue(boolean) => Value::Bool(boolean),
        any_value::Value::IntValue(integer) => Value::from(integer),
        any_value::Value::DoubleValue(double) => serde_json::Number::from_f64(double)
            .map_or_else(|| Value::String(double.to_string()), Value::Number),
        any_value::Value::ArrayValue(array) => Value::Array(
            array
                .values
                .into_iter()
                .map(|item| any(Some(item)))
                .collect(),
        ),
        any_value::Value::KvlistValue(list) => Value::Object(object(list.values)),
        any_value::Value::BytesValue(bytes) => Value::String(hex(&bytes)),
        // A reference into a profile's string table: the specification says receivers of
        // other signals treat it as absent.
        any_value::Value::StringValueStrindex(_) => Value::Null,
    }
}

/// `bytes` in lowercase hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// Nanoseconds since the epoch in RFC 3339; none for 0 (unknown).
fn rfc3339(nanos: u64) -> Option<String> {
    if nanos == 0 {
        return None;
    }
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos))
        .ok()?
        .format(&Rfc3339)
        .ok()
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;

    use super::*;

    fn string(text: &str) -> Option<AnyValue> {
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(text.into())),
        })
    }

    fn attribute(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..KeyValue::default()
        }
    }

    fn request(resource: Vec<KeyValue>, logs: Vec<OtlpLogRecord>) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: resource,
                    ..Resource::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "checkout.payments".into(),
                        version: "1.2.0".into(),
                        ..InstrumentationScope::default()
                    }),
                    log_records: logs,
                    ..ScopeLogs::default()
                }],
                ..ResourceLogs::default()
            }],
        }
    }

    #[test]
    fn a_record_maps_onto_the_columns_and_log_data() {
        let log = OtlpLogRecord {
            time_unix_nano: 1_700_000_000_123_456_789,
            severity_number: 17,
            severity_text: "Error".into(),
            body: string("card declined"),
            attributes: vec![
                attribute("http.status_code", any_value::Value::IntValue(402)),
                attribute("retry", any_value::Value::BoolValue(false)),
            ],
            trace_id: vec![0xab; 16],
            span_id: vec![0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08],
            ..OtlpLogRecord::default()
        };
        let export = records(request(
            vec![
                attribute(
                    SERVICE_NAME_ATTRIBUTE,
                    any_value::Value::StringValue("checkout".into()),
                ),
                attribute("host.name", any_value::Value::StringValue("node-1".into())),
            ],
            vec![log],
        ));
        assert!(export.rejected.is_empty(), "{:?}", export.rejected);
        let [record] = export.records.as_slice() else {
            panic!("one record expected: {export:?}");
        };
        assert_eq!(record.device_id.as_str(), "checkout");
        assert_eq!(record.service_name.as_ref().unwrap().as_str(), "checkout");
        assert_eq!(record.log_level, LogLevel::Error);
        assert_eq!(record.message.as_str(), "card declined");
        assert_eq!(record.trace_id.as_ref().unwrap().as_str(), "ab".repeat(16));
        assert_eq!(
            record.span_id.as_ref().unwrap().as_str(),
            "0102030405060708"
        );
        let data: Value =
            serde_json::from_str(record.log_data.as_ref().unwrap().as_json()).unwrap();
        assert_eq!(
            data,
            serde_json::json!({
                "attributes": {"http.status_code": 402, "retry": false},
                "resource": {"service.name": "checkout", "host.name": "node-1"},
                "scope": {"name": "checkout.payments", "version": "1.2.0"},
                "timestamp": "2023-11-14T22:13:20.123456789Z",
                "severity_text": "Error",
            })
        );
        assert_eq!(
            record.log_data.as_ref().unwrap().as_json(),
            data.to_string(),
            "log_data is written with its keys in name order, at every level"
        );
    }

    #[test]
    fn a_device_attribute_names_the_device_and_a_structured_body_is_kept() {
        let body = AnyValue {
            value: Some(any_value::Value::KvlistValue(KeyValueList {
                values: vec![
                    attribute("event", any_value::Value::StringValue("door".into())),
                    attribute(
                        "readings",
                        any_value::Value::ArrayValue(ArrayValue {
                            values: vec![
                                AnyValue {
                                    value: Some(any_value::Value::DoubleValue(0.5)),
                                },
                                AnyValue {
                                    value: Some(any_value::Value::DoubleValue(f64::NAN)),
                                },
                                AnyValue {
                                    value: Some(any_value::Value::BytesValue(vec![0xca, 0xfe])),
                                },
                            ],
                        }),
                    ),
                ],
            })),
        };
        let export = records(request(
            vec![attribute(
                DEVICE_ID_ATTRIBUTE,
                any_value::Value::StringValue("pump-7".into()),
            )],
            vec![OtlpLogRecord {
                body: Some(body),
                observed_time_unix_nano: 1_000_000_000,
                ..OtlpLogRecord::default()
            }],
        ));
        let record = &export.records[0];
        assert_eq!(record.device_id.as_str(), "pump-7");
        assert_eq!(
            record.service_name.as_ref().unwrap().as_str(),
            "unknown_service"
        );
        assert_eq!(record.log_level, LogLevel::Info);
        assert_eq!(
            record.message.as_str(),
            r#"{"event":"door","readings":[0.5,"NaN","cafe"]}"#
        );
        let data: Value =
            serde_json::from_str(record.log_data.as_ref().unwrap().as_json()).unwrap();
        assert_eq!(data["body"]["readings"][2], "cafe");
        assert_eq!(data["timestamp"], "1970-01-01T00:00:01Z");
        assert!(record.trace_id.is_none() && record.span_id.is_none());
    }

    #[test]
    fn severity_numbers_and_texts_give_levels() {
        for (number, text, expected) in [
            (1, "", LogLevel::Debug),
            (5, "", LogLevel::Debug),
            (9, "WARN", LogLevel::Info),
            (13, "", LogLevel::Warning),
            (16, "", LogLevel::Warning),
            (17, "", LogLevel::Error),
            (21, "", LogLevel::Critical),
            (24, "", LogLevel::Critical),
            (0, "warn", LogLevel::Warning),
            (0, " Fatal ", LogLevel::Critical),
            (0, "notice", LogLevel::Info),
            (0, "", LogLevel::Info),
            (99, "error", LogLevel::Error),
        ] {
            assert_eq!(level(number, text), expected, "{number} {text:?}");
        }
    }

    #[test]
    fn a_record_that_breaks_a_rule_is_refused_alone_and_named() {
        let good = OtlpLogRecord {
            body: string("fine"),
            ..OtlpLogRecord::default()
        };
        let silent = OtlpLogRecord::default();
        let named = OtlpLogRecord {
            event_name: "device.boot".into(),
            ..OtlpLogRecord::default()
        };
        let long = OtlpLogRecord {
            body: string(&"x".repeat(5001)),
            ..OtlpLogRecord::default()
        };
        let nul = OtlpLogRecord {
            body: string("a\0b"),
            ..OtlpLogRecord::default()
        };
        let export = records(request(vec![], vec![good, silent, named, long, nul]));
        let messages: Vec<&str> = export.records.iter().map(|r| r.message.as_str()).collect();
        assert_eq!(messages, ["fine", "device.boot"]);
        assert_eq!(export.rejected.len(), 3, "{:?}", export.rejected);
        for (why, index) in export.rejected.iter().zip([1, 3, 4]) {
            assert!(
                why.starts_with(&format!(
                    "resource_logs[0].scope_logs[0].log_records[{index}].message"
                )),
                "{why}"
            );
        }
    }

    #[test]
    fn deep_attributes_are_refused_not_stored() {
        let mut deep = AnyValue {
            value: Some(any_value::Value::IntValue(1)),
        };
        for _ in 0..80 {
            deep = AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue {
                    values: vec![deep],
                })),
            };
        }
        let export = records(request(
            vec![],
            vec![OtlpLogRecord {
                body: string("deep"),
                attributes: vec![KeyValue {
                    key: "deep".into(),
                    value: Some(deep),
                    ..KeyValue::default()
                }],
                ..OtlpLogRecord::default()
            }],
        ));
        assert!(export.records.is_empty());
        assert!(
            export.rejected[0].contains("log_data"),
            "{:?}",
            export.rejected
        );
    }
}

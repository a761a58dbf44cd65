//! Request bodies: the logs of one request, written straight into a buffer.
//!
//! Every log carries `log_data: {"run", "device", "seq"}` (OTLP logs as attributes, so
//! in `log_data.attributes`), so the logs of a run can be found and checked one by one
//! in PostgreSQL.

use std::io::Write;

use bytes::Bytes;
use logpipeline_proto::v1::{BatchWriteLogsRequest, WriteLogRequest};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;

use super::plan::device_id;

const LEVELS: [&str; 5] = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"];
/// The OTLP severity numbers of [`LEVELS`]: DEBUG, INFO, WARN, ERROR, FATAL.
const SEVERITY_NUMBERS: [i32; 5] = [5, 9, 13, 17, 21];
const FILLER: &str = "sensor reading within range; pump pressure nominal; valve cycle complete; ";

/// Writes the bodies of a run's requests.
#[derive(Debug, Clone)]
pub struct Bodies {
    run: String,
    message: String,
    logs_per_request: u64,
}

impl Bodies {
    /// Bodies of `logs_per_request` logs (a single log object when 1, else a batch)
    /// marked with `run`, each message `message_bytes` long. `run` must need no JSON
    /// escaping (the plan checks it).
    pub fn new(run: &str, logs_per_request: u64, message_bytes: usize) -> Self {
        let message = FILLER.chars().cycle().take(message_bytes).collect();
        Self {
            run: run.to_owned(),
            message,
            logs_per_request,
        }
    }

    /// The body of the request `device` sends with its logs `first_seq…`.
    pub fn request(&self, device: u64, first_seq: u64) -> Bytes {
        let per_log = 120 + self.run.len() + self.message.len();
        let mut body = Vec::with_capacity(per_log * self.logs_per_request as usize + 16);
        if self.logs_per_request == 1 {
            self.write_log(&mut body, device, first_seq);
        } else {
            body.extend_from_slice(b"{\"logs\":[");
            for seq in first_seq..first_seq + self.logs_per_request {
                if seq != first_seq {
                    body.push(b',');
                }
                self.write_log(&mut body, device, seq);
            }
            body.extend_from_slice(b"]}");
        }
        Bytes::from(body)
    }

    /// The `BatchWriteLogs` request `device` sends with its logs `first_seq…`: the same
    /// logs, with `run`, `device` and `seq` in the metadata.
    pub fn grpc_request(&self, device: u64, first_seq: u64) -> BatchWriteLogsRequest {
        let entries = (first_seq..first_seq + self.logs_per_request)
            .map(|seq| WriteLogRequest {
                message: self.message.clone(),
                level: LEVELS[(seq % LEVELS.len() as u64) as usize].to_owned(),
                device_id: device_id(device),
                service_name: "load".to_owned(),
                metadata: [
                    ("run".to_owned(), self.run.clone()),
                    ("device".to_owned(), device.to_string()),
                    ("seq".to_owned(), seq.to_string()),
                ]
                .into(),
                ..WriteLogRequest::default()
            })
            .collect();
        BatchWriteLogsRequest {
            entries,
            idempotency_key: String::new(),
        }
    }

    /// The OTLP/protobuf export `device` sends with its logs `first_seq…`: one resource
    /// (`service.name` `load`, `device.id` the device), the same logs, with `run`,
    /// `device` and `seq` as attributes.
    pub fn otlp_request(&self, device: u64, first_seq: u64) -> Bytes {
        let text = |key: &str, value: String| KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value)),
            }),
            ..KeyValue::default()
        };
        let integer = |key: &str, value: u64| KeyValue {
            key: key.to_owned(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(
                    i64::try_from(value).unwrap_or(i64::MAX),
                )),
            }),
            ..KeyValue::default()
        };
        let log_records = (first_seq..first_seq + self.logs_per_request)
            .map(|seq| LogRecord {
                severity_number: SEVERITY_NUMBERS[(seq % LEVELS.len() as u64) as usize],
                body: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(self.message.clone())),
                }),
                attributes: vec![
                    text("run", self.run.clone()),
                    integer("device", device),
                    integer("seq", seq),
                ],
                ..LogRecord::default()
            })
            .collect();
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![
                        text("service.name", "load".to_owned()),
                        text("device.id", device_id(device)),
                    ],
                    ..Resource::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records,
                    ..ScopeLogs::default()
                }],
                ..ResourceLogs::default()
            }],
        };
        Bytes::from(request.encode_to_vec())
    }

    fn write_log(&self, body: &mut Vec<u8>, device: u64, seq: u64) {
        // Writing into a Vec cannot fail.
        let _ = write!(
            body,
            r#"{{"device_id":"device-{device:03}","log_level":"{level}","message":"{message}","log_data":{{"run":"{run}","device":{device},"seq":{seq}}}}}"#,
            level = LEVELS[(seq % LEVELS.len() as u64) as usize],
            message = self.message,
            run = self.run,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    #[test]
    fn a_single_log_is_one_object_marked_with_run_device_and_seq() {
        let body = Bodies::new("r1", 1, 10).request(7, 42);
        let log: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(log["device_id"], "device-007");
        assert_eq!(log["log_level"], "WARNING");
        assert_eq!(log["message"].as_str().unwrap().len(), 10);
        assert_eq!(
            log["log_data"],
            json!({"run": "r1", "device": 7, "seq": 42})
        );
    }

    #[test]
    fn an_otlp_export_carries_the_marks_as_attributes() {
        let body = Bodies::new("r4", 3, 8).otlp_request(5, 9);
        let request = ExportLogsServiceRequest::decode(body).unwrap();
        let export = logpipeline_core::otlp::records(request);
        assert!(export.rejected.is_empty());
        assert_eq!(export.records.len(), 3);
        let last = &export.records[2];
        assert_eq!(last.device_id.as_str(), "device-005");
        assert_eq!(last.log_level.as_str(), LEVELS[11 % 5]);
        let data: serde_json::Value =
            serde_json::from_str(last.log_data.as_ref().unwrap().as_json()).unwrap();
        assert_eq!(
            data["attributes"],
            json!({"run": "r4", "device": 5, "seq": 11})
        );
    }

    #[test]
    fn a_grpc_batch_carries_the_same_marks_as_text() {
        let request = Bodies::new("r3", 3, 8).grpc_request(4, 6);
        assert_eq!(request.entries.len(), 3);
        let last = &request.entries[2];
        assert_eq!(
            (last.device_id.as_str(), last.level.as_str()),
            ("device-004", "ERROR")
        );
        assert_eq!(last.metadata["seq"], "8");
        assert_eq!(last.metadata["run"], "r3");
    }

    #[test]
    fn a_batch_holds_consecutive_sequence_numbers() {
        let body = Bodies::new("r2", 5, 5000).request(3, 10);
        let batch: Value = serde_json::from_slice(&body).unwrap();
        let logs = batch["logs"].as_array().unwrap();
        assert_eq!(logs.len(), 5);
        for (index, log) in logs.iter().enumerate() {
            assert_eq!(log["log_data"]["seq"], 10 + index as u64);
            assert_eq!(log["message"].as_str().unwrap().len(), 5000);
        }
    }
}

//! Request bodies: the logs of one request, written straight into a buffer.
//!
//! Every log carries `log_data: {"run", "device", "seq"}`, so the logs of a run can be
//! found and checked one by one in PostgreSQL.

use std::io::Write;

use bytes::Bytes;

const LEVELS: [&str; 5] = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"];
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

//! A log to send, with system B's fields.

use std::collections::BTreeMap;
use std::fmt;

/// A log's severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Level {
    /// Detailed diagnostics.
    Debug,
    /// Normal operation.
    #[default]
    Info,
    /// Something unexpected that was handled.
    Warning,
    /// A failure.
    Error,
    /// A failure that needs attention now.
    Critical,
}

impl Level {
    /// The level as LogPipeline names it.
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

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One log: a message, the service that wrote it, its level, trace and span, and any
/// further fields (stored in `log_data`). The server checks the rules (a message of 1
/// to 5000 characters, names and ids of bounded length) and names the field it refuses.
///
/// ```
/// use logpipeline_client::{Level, Log};
///
/// let log = Log::new("payment declined")
///     .service("checkout")
///     .level(Level::Warning)
///     .trace("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")
///     .field("order_id", 1042)
///     .field("reason", "card expired");
/// assert_eq!(log.fields()["order_id"], "1042");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Log {
    pub(crate) message: String,
    pub(crate) service_name: Option<String>,
    pub(crate) level: Level,
    pub(crate) trace_id: Option<String>,
    pub(crate) span_id: Option<String>,
    pub(crate) device_id: Option<String>,
    pub(crate) fields: BTreeMap<String, String>,
}

impl Log {
    /// A log of `message`, at level INFO.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            ..Self::default()
        }
    }

    /// The service that wrote it (`unknown_service` when not set).
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }

    /// Its level.
    pub fn level(mut self, level: Level) -> Self {
        self.level = level;
        self
    }

    /// The trace and span it belongs to.
    pub fn trace(mut self, trace_id: impl Into<String>, span_id: impl Into<String>) -> Self {
        self.trace_id = Some(trace_id.into());
        self.span_id = Some(span_id.into());
        self
    }

    /// The device that wrote it (the service's name when not set).
    pub fn device(mut self, id: impl Into<String>) -> Self {
        self.device_id = Some(id.into());
        self
    }

    /// A further field, kept as text (as system B's client kept its keyword arguments).
    pub fn field(mut self, name: impl Into<String>, value: impl ToString) -> Self {
        self.fields.insert(name.into(), value.to_string());
        self
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The further fields.
    pub fn fields(&self) -> &BTreeMap<String, String> {
        &self.fields
    }

    /// As the gRPC service takes it.
    pub(crate) fn to_grpc(&self) -> logpipeline_proto::v1::WriteLogRequest {
        logpipeline_proto::v1::WriteLogRequest {
            message: self.message.clone(),
            service_name: self.service_name.clone().unwrap_or_default(),
            level: self.level.as_str().to_owned(),
            trace_id: self.trace_id.clone().unwrap_or_default(),
            span_id: self.span_id.clone().unwrap_or_default(),
            metadata: self.fields.clone().into_iter().collect(),
            device_id: self.device_id.clone().unwrap_or_default(),
            idempotency_key: String::new(),
        }
    }

    /// As `/api/v1/logs/*` takes it.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let mut body = serde_json::Map::new();
        body.insert("message".into(), self.message.clone().into());
        body.insert("level".into(), self.level.as_str().into());
        let optional = [
            ("service_name", &self.service_name),
            ("trace_id", &self.trace_id),
            ("span_id", &self.span_id),
            ("device_id", &self.device_id),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                body.insert(name.into(), value.clone().into());
            }
        }
        if !self.fields.is_empty() {
            let metadata = self
                .fields
                .iter()
                .map(|(name, value)| (name.clone(), value.clone().into()))
                .collect();
            body.insert("metadata".into(), serde_json::Value::Object(metadata));
        }
        serde_json::Value::Object(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_transports_carry_the_same_fields() {
        let log = Log::new("m").service("s").field("n", 1).device("d");
        let grpc = log.to_grpc();
        assert_eq!(
            (
                grpc.service_name.as_str(),
                grpc.level.as_str(),
                grpc.device_id.as_str()
            ),
            ("s", "INFO", "d")
        );
        assert_eq!(grpc.metadata["n"], "1");
        let json = log.to_json();
        assert_eq!(json["metadata"]["n"], "1");
        assert_eq!(json["service_name"], "s");
        assert!(json.get("trace_id").is_none());
    }
}

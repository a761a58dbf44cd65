//! Where a log comes from besides its device: the service that wrote it, and the trace
//! and span it belongs to (system B's fields, and OpenTelemetry's). All three are
//! optional on every ingest path and stored in columns of their own.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::field::FieldError;

/// Longest `service_name`, in characters.
pub const MAX_SERVICE_NAME_CHARS: usize = 100;
/// Longest `trace_id` and `span_id`, in characters.
pub const MAX_TRACE_ID_CHARS: usize = 64;
/// The service of a log that names none, as OpenTelemetry calls it.
pub const UNKNOWN_SERVICE: &str = "unknown_service";

/// The service that wrote a log: 1 to 100 characters, without control characters, not
/// only whitespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[schema(value_type = String, min_length = 1, max_length = 100, pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*[^\\u0000-\\u0020\\u007f-\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000][^\\u0000-\\u001f\\u007f-\\u009f]*$", example = "checkout")]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(String);

impl ServiceName {
    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// [`UNKNOWN_SERVICE`].
    pub fn unknown() -> Self {
        Self(UNKNOWN_SERVICE.into())
    }
}

impl TryFrom<String> for ServiceName {
    type Error = FieldError;

    fn try_from(value: String) -> Result<Self, FieldError> {
        check_name("service_name", &value, MAX_SERVICE_NAME_CHARS)?;
        Ok(Self(value))
    }
}

impl From<ServiceName> for String {
    fn from(value: ServiceName) -> Self {
        value.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks the rule every name of a log's origin follows (and `device_id`, with its own
/// length): 1 to `max_chars` characters, no control character, not only whitespace.
pub(crate) fn check_name(field: &str, value: &str, max_chars: usize) -> Result<(), FieldError> {
    let too_long = value.len() > max_chars && value.chars().nth(max_chars).is_some();
    if value.is_empty() || too_long {
        return Err(FieldError::new(format!(
            "{field} must be 1 to {max_chars} characters long"
        )));
    }
    if value.chars().all(char::is_whitespace) {
        return Err(FieldError::new(format!(
            "{field} must not be only whitespace"
        )));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(())
}

/// An identifier of a trace or span: 1 to 64 visible ASCII characters (OpenTelemetry's
/// hexadecimal ids, or any other scheme's).
macro_rules! identifier {
    ($name:ident, $field:literal, $doc:literal, $example:literal) => {
        #[doc = $doc]
        #[derive(
            Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
        )]
        #[schema(value_type = String, min_length = 1, max_length = 64, pattern = "^[!-~]+$", example = $example)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = FieldError;

            fn try_from(value: String) -> Result<Self, FieldError> {
                check_identifier($field, &value)?;
                Ok(Self(value))
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> Self {
                value.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

identifier!(
    TraceId,
    "trace_id",
    "The trace a log belongs to: 1 to 64 visible ASCII characters.",
    "4bf92f3577b34da6a3ce929d0e0e4736"
);
identifier!(
    SpanId,
    "span_id",
    "The span within its trace: 1 to 64 visible ASCII characters.",
    "00f067aa0ba902b7"
);

pub(crate) fn check_identifier(field: &str, value: &str) -> Result<(), FieldError> {
    if value.is_empty() || value.len() > MAX_TRACE_ID_CHARS {
        return Err(FieldError::new(format!(
            "{field} must be 1 to {MAX_TRACE_ID_CHARS} characters long"
        )));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(FieldError::new(format!(
            "{field} must hold visible ASCII characters only (no spaces)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_follow_the_device_rules_with_their_own_length() {
        assert!(ServiceName::try_from("checkout".to_owned()).is_ok());
        assert!(ServiceName::try_from("支付 服务".to_owned()).is_ok());
        assert!(ServiceName::try_from("s".repeat(100)).is_ok());
        for (bad, expected) in [
            (String::new(), "1 to 100"),
            ("s".repeat(101), "1 to 100"),
            ("  ".into(), "only whitespace"),
            ("a\nb".into(), "control characters"),
        ] {
            let error = ServiceName::try_from(bad.clone()).unwrap_err().to_string();
            assert!(error.contains(expected), "{bad:?}: {error}");
        }
    }

    #[test]
    fn trace_and_span_ids_are_visible_ascii() {
        assert!(TraceId::try_from("4bf92f3577b34da6a3ce929d0e0e4736".to_owned()).is_ok());
        assert!(TraceId::try_from("trace-123".to_owned()).is_ok());
        assert!(SpanId::try_from("x".repeat(64)).is_ok());
        for bad in [
            String::new(),
            "x".repeat(65),
            "a b".into(),
            "é".into(),
            "a\0".into(),
        ] {
            assert!(TraceId::try_from(bad.clone()).is_err(), "{bad:?}");
        }
        let error = SpanId::try_from("a b".to_owned()).unwrap_err().to_string();
        assert!(error.starts_with("span_id"), "{error}");
    }
}

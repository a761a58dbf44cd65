//! Why a call failed, and whether trying again can help.

use std::time::Duration;

/// The client's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The server refused the request for what it is (a field breaking a rule, a missing
    /// or wrong API key, a body too large): sending it again fails the same way.
    #[error("refused ({code}): {message}")]
    Refused {
        /// The gRPC status code or HTTP status.
        code: String,
        /// The server's reason.
        message: String,
    },
    /// Nothing was accepted, or the outcome is unknown (a lost connection, a timeout, a
    /// full stream, a rate limit, an api restarting): the same request may succeed
    /// later, and sending it again with its idempotency key never stores it twice.
    #[error("unavailable ({code}): {message}")]
    Unavailable {
        /// The gRPC status code, HTTP status or transport error kind.
        code: String,
        /// What happened.
        message: String,
        /// How long the server asked to wait (`Retry-After`, `google.rpc.RetryInfo`).
        retry_after: Option<Duration>,
    },
    /// The client's settings cannot work (an invalid address, say).
    #[error("invalid client settings: {0}")]
    Config(String),
}

impl Error {
    /// Whether sending the same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }

    /// How long the server asked the client to wait before retrying.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The error of gRPC status `status`.
    pub(crate) fn from_status(status: &tonic::Status) -> Self {
        use tonic::Code;
        use tonic_types::StatusExt;
        let code = format!("{:?}", status.code());
        let message = status.message().to_owned();
        match status.code() {
            Code::Unavailable
            | Code::ResourceExhausted
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Cancelled
            | Code::Unknown => Self::Unavailable {
                code,
                message,
                retry_after: status
                    .get_details_retry_info()
                    .and_then(|info| info.retry_delay),
            },
            _ => Self::Refused { code, message },
        }
    }

    /// The error of an HTTP answer with `status`, `retry_after` seconds and `body`.
    pub(crate) fn from_http(
        status: reqwest::StatusCode,
        retry_after: Option<u64>,
        body: &str,
    ) -> Self {
        let message = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|body| {
                body.get("detail")
                    .and_then(|detail| detail.as_str().map(str::to_owned))
            })
            .unwrap_or_else(|| body.chars().take(500).collect());
        let code = status.as_u16().to_string();
        let retryable = matches!(status.as_u16(), 408 | 429 | 502 | 503 | 504);
        if retryable {
            Self::Unavailable {
                code,
                message,
                retry_after: retry_after.map(Duration::from_secs),
            }
        } else {
            Self::Refused { code, message }
        }
    }

    /// The error of a request that got no HTTP answer.
    pub(crate) fn from_transport(error: &reqwest::Error) -> Self {
        if error.is_builder() {
            return Self::Config(error.to_string());
        }
        let kind = if error.is_timeout() {
            "timeout"
        } else if error.is_connect() {
            "connect"
        } else {
            "io"
        };
        Self::Unavailable {
            code: kind.into(),
            message: error.to_string(),
            retry_after: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::{ErrorDetails, StatusExt};

    #[test]
    fn refusals_and_outages_are_told_apart() {
        let invalid = tonic::Status::invalid_argument("entries[0].message must be 1 to 5000");
        assert!(!Error::from_status(&invalid).is_retryable());
        let full = tonic::Status::with_error_details(
            tonic::Code::ResourceExhausted,
            "full",
            ErrorDetails::with_retry_info(Some(Duration::from_secs(2))),
        );
        let error = Error::from_status(&full);
        assert!(error.is_retryable());
        assert_eq!(error.retry_after(), Some(Duration::from_secs(2)));
        let busy = Error::from_http(reqwest::StatusCode::SERVICE_UNAVAILABLE, Some(1), "{}");
        assert_eq!(busy.retry_after(), Some(Duration::from_secs(1)));
        let refused = Error::from_http(
            reqwest::StatusCode::UNPROCESSABLE_ENTITY,
            None,
            r#"{"error":"invalid_log","detail":"message must be 1 to 5000 characters long"}"#,
        );
        assert!(!refused.is_retryable());
        assert!(refused.to_string().contains("message must be"), "{refused}");
    }
}

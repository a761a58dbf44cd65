//! Every way a request (or start-up) fails, each with one HTTP status and one JSON shape:
//! `{"error": "<code>", "detail": "<what went wrong>"}`. Internal details are logged,
//! never sent to the client.

use axum::Json;
use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};
use tracing::{error, warn};

use crate::scope::Scope;

/// The api's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body is not JSON, or not JSON of the expected shape at its top level.
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),

    /// An OTLP body that does not decode as its content type says.
    #[error("the request body is not a valid OTLP {0}")]
    MalformedBody(String),

    /// The body could not be read.
    #[error("the request body could not be read")]
    UnreadableBody,

    /// The body exceeds the configured limit.
    #[error("the request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The limit, in bytes.
        limit: usize,
    },

    /// The body is not declared as JSON in UTF-8.
    #[error("the request body must be JSON in UTF-8, sent with `Content-Type: application/json`")]
    UnsupportedMediaType,

    /// An OTLP body of another content type than protobuf or JSON.
    #[error("an OTLP body must be `application/x-protobuf` or `application/json` (in UTF-8)")]
    UnsupportedOtlpMediaType,

    /// The body is compressed with an encoding the api does not decode.
    #[error("the request body's Content-Encoding must be gzip or identity, got {0:?}")]
    UnsupportedEncoding(String),

    /// The query string is not valid UTF-8 after percent-decoding.
    #[error("the query string is invalid: it does not percent-decode to UTF-8")]
    MalformedQuery,

    /// The path is not valid UTF-8 after percent-decoding.
    #[error("the path is invalid: {0}")]
    InvalidPath(String),

    /// No API key, or one that is not in force.
    #[error(
        "a valid API key is required: send `Authorization: Bearer <key>` or `X-API-Key: <key>`"
    )]
    Unauthorized,

    /// The key is valid but lacks the scope.
    #[error("this API key lacks the `{}` scope this endpoint needs", scope.as_str())]
    Forbidden {
        /// The scope the endpoint needs.
        scope: Scope,
    },

    /// A rate limit is reached.
    #[error("the rate limit per {limit} is reached; retry after {retry_after_secs} s")]
    RateLimited {
        /// `key` or `address`.
        limit: &'static str,
        /// When a request will be admitted again.
        retry_after_secs: u64,
    },

    /// The JSON breaks a field rule.
    #[error("{0}")]
    InvalidLog(String),

    /// A query parameter is invalid.
    #[error("{0}")]
    InvalidQuery(String),

    /// The api has as many live-tail subscribers as it takes.
    #[error(
        "this api has {limit} live-tail subscribers, as many as it takes; retry later or on another api pod"
    )]
    TailFull {
        /// The most it takes.
        limit: usize,
    },

    /// A search read more than it may within its time budget.
    #[error(
        "the search did not finish within {budget:?}; narrow it: a shorter time range, a device, service or trace, a level"
    )]
    SearchTooBroad {
        /// The budget.
        budget: std::time::Duration,
    },

    /// An idempotency key comes again with other logs than the request it was first
    /// accepted with.
    #[error(
        "this idempotency key was accepted with other logs within the idempotency window; a retry must repeat the request exactly, and a new request needs a new key"
    )]
    IdempotencyKeyReused,

    /// As many searches run as may at once, in this api process or for this tenant.
    #[error(
        "{limit} searches run for this {scope}, as many as may at once; retry after {SEARCH_RETRY_AFTER_SECS} s"
    )]
    SearchBusy {
        /// `tenant` or `api process`.
        scope: &'static str,
        /// How many may run at once.
        limit: usize,
    },

    /// PostgreSQL failed or did not answer.
    #[error("the log database is unavailable; retry later")]
    DatabaseUnavailable(#[source] sqlx::Error),

    /// PostgreSQL answered its last check, and a read found none of the connections it
    /// may use free in time: busy, not down.
    #[error("every connection to the log database this read may use is busy; retry later")]
    DatabaseBusy,

    /// PostgreSQL did not answer its last check: a read fails at once rather than wait.
    #[error("the log database does not answer; retry later")]
    DatabaseDown,

    /// A bug: something that cannot fail did.
    #[error("internal error")]
    Internal(String),

    /// No such route.
    #[error("there is no such endpoint")]
    NotFound,

    /// The endpoint exists and is turned off.
    #[error("{0}")]
    Disabled(&'static str),

    /// A request asks for more than a limit of the api allows.
    #[error("{0}")]
    LimitExceeded(String),

    /// The route exists, not with this method.
    #[error("this endpoint does not accept this method")]
    MethodNotAllowed,

    /// The body did not arrive in time: slower than the minimum rate allows, after the
    /// grace every body gets.
    #[error(
        "the request body did not arrive in time (at least {min_bytes_per_sec} bytes a second after the first {grace_secs} s)"
    )]
    RequestTimeout {
        /// The rate a body must keep, on average.
        min_bytes_per_sec: u64,
        /// The time every body has on top of what the rate allows.
        grace_secs: u64,
    },

    /// The api holds as many request bodies as its memory budget allows.
    #[error("the api holds {budget_bytes} bytes of request bodies, its budget; retry later")]
    BodiesInFlight {
        /// The budget, in bytes.
        budget_bytes: usize,
    },

    /// The stream's backlog has reached its capacity.
    #[error("the queue holds {capacity} unprocessed requests, its capacity; retry later")]
    Backpressure {
        /// The stream capacity, in entries.
        capacity: u64,
    },

    /// Redis refused the request or could not be reached: nothing was accepted.
    #[error("the log queue is unavailable and nothing was accepted; retry later")]
    QueueUnavailable(#[source] redis::RedisError),

    /// Redis did not confirm in time, or the connection broke after the entry was sent:
    /// the logs may or may not have been accepted.
    #[error(
        "the log queue did not confirm in time: the logs may or may not have been accepted; {}",
        if *keyed {
            "a retry with the same Idempotency-Key is safe: they are stored once"
        } else {
            "a retry may store them twice (a retry under an Idempotency-Key would not)"
        }
    )]
    OutcomeUnknown {
        /// Why Redis did not confirm.
        #[source]
        source: redis::RedisError,
        /// Whether the request carried an Idempotency-Key, which makes a retry safe.
        keyed: bool,
    },

    /// Replicated acceptance needs more replicas in sync than the shard's Redis master
    /// has: nothing was accepted, and nothing can be until a replica is back.
    #[error(
        "accepting needs {required} Redis replica(s) in sync with the log queue and {in_sync} are; nothing was accepted; retry later (operators: docs/operations.md, replicated durability)"
    )]
    ReplicasMissing {
        /// Replicas acceptance needs.
        required: u32,
        /// Replicas in sync at the last check.
        in_sync: u32,
    },

    /// Start-up: the settings cannot work.
    #[error("{0}")]
    Config(String),

    /// Start-up: Redis cannot be used safely (or at all).
    #[error("cannot use Redis: {0}")]
    RedisSetup(#[source] redis::RedisError),

    /// Start-up: the listen address cannot be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },

    /// Start-up or serving: an I/O error of the server itself.
    #[error("the HTTP server failed: {0}")]
    Serve(#[from] std::io::Error),
}

/// Seconds a client should wait before retrying a search refused as busy.
const SEARCH_RETRY_AFTER_SECS: u64 = 1;

/// Seconds a client should wait before retrying after a 503 or 504.
const RETRY_AFTER_SECS: &str = "1";

impl Error {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_) | Self::MalformedBody(_) | Self::UnreadableBody => {
                StatusCode::BAD_REQUEST
            }
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType
            | Self::UnsupportedOtlpMediaType
            | Self::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::InvalidPath(_) | Self::MalformedQuery | Self::LimitExceeded(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } | Self::TailFull { .. } | Self::SearchBusy { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::OutcomeUnknown { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::InvalidLog(_)
            | Self::InvalidQuery(_)
            | Self::SearchTooBroad { .. }
            | Self::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound | Self::Disabled(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::Backpressure { .. }
            | Self::BodiesInFlight { .. }
            | Self::QueueUnavailable(_)
            | Self::ReplicasMissing { .. }
            | Self::DatabaseUnavailable(_)
            | Self::DatabaseBusy
            | Self::DatabaseDown => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Config(_) | Self::RedisSetup(_) | Self::Bind { .. } | Self::Serve(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// A stable, machine-readable name for the error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed_json",
            Self::MalformedBody(_) => "malformed_body",
            Self::UnreadableBody => "unreadable_body",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType | Self::UnsupportedOtlpMediaType => "unsupported_media_type",
            Self::UnsupportedEncoding(_) => "unsupported_encoding",
            Self::InvalidPath(_) => "invalid_path",
            Self::MalformedQuery => "malformed_query",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden { .. } => "forbidden",
            Self::RateLimited { .. } => "rate_limited",
            Self::OutcomeUnknown { .. } => "outcome_unknown",
            Self::InvalidLog(_) => "invalid_log",
            Self::InvalidQuery(_) => "invalid_query",
            Self::SearchTooBroad { .. } => "search_too_broad",
            Self::TailFull { .. } => "tail_full",
            Self::IdempotencyKeyReused => "idempotency_key_reused",
            Self::SearchBusy { .. } => "search_busy",
            Self::DatabaseUnavailable(_) | Self::DatabaseDown => "database_unavailable",
            Self::DatabaseBusy => "database_busy",
            Self::Internal(_) => "internal",
            Self::NotFound => "not_found",
            Self::Disabled(_) => "disabled",
            Self::LimitExceeded(_) => "limit_exceeded",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RequestTimeout { .. } => "request_timeout",
            Self::BodiesInFlight { .. } => "bodies_in_flight",
            Self::Backpressure { .. } => "backpressure",
            Self::QueueUnavailable(_) => "queue_unavailable",
            Self::ReplicasMissing { .. } => "replicas_missing",
            Self::Config(_) | Self::RedisSetup(_) | Self::Bind { .. } | Self::Serve(_) => {
                "internal"
            }
        }
    }
}

/// The `error` code of an error answer, kept in the response's extensions for metrics.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);

/// Error bodies are a few hundred bytes.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// `response` with its body rewritten by `shape` from the fields of the JSON error body,
/// when it is an error answer, and as it is otherwise. Status and headers (such as
/// `Retry-After`) stay; `shape` may set the content type.
pub async fn reshape_errors(
    response: Response,
    shape: impl FnOnce(Map<String, Value>) -> (Option<HeaderValue>, Vec<u8>),
) -> Response {
    if response.extensions().get::<ErrorCode>().is_none() {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, ERROR_BODY_LIMIT).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let fields: Map<String, Value> = serde_json::from_slice(&bytes).unwrap_or_default();
    let (content_type, body) = shape(fields);
    parts.headers.remove(header::CONTENT_LENGTH);
    if let Some(content_type) = content_type {
        parts.headers.insert(header::CONTENT_TYPE, content_type);
    }
    Response::from_parts(parts, Body::from(body))
}

/// The JSON body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Machine-readable name: `malformed_json`, `malformed_body`, `unreadable_body`, `payload_too_large`,
    /// `unsupported_media_type`, `unsupported_encoding`, `invalid_path`, `malformed_query`, `invalid_log`,
    /// `invalid_query`, `idempotency_key_reused`, `unauthorized`, `forbidden`,
    /// `rate_limited`, `not_found`, `disabled`, `limit_exceeded`, `method_not_allowed`,
    /// `request_timeout`, `bodies_in_flight`, `backpressure`, `queue_unavailable`,
    /// `outcome_unknown`, `replicas_missing`, `search_busy`, `database_unavailable`, `database_busy`, `internal`.
    #[schema(example = "invalid_log")]
    pub error: &'static str,
    /// What went wrong, for people.
    #[schema(example = "logs[3].device_id: device_id must be 1 to 50 characters long")]
    pub detail: String,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Self::QueueUnavailable(source) => warn!(error = %source, "Redis call failed"),
            Self::OutcomeUnknown { source, .. } => {
                warn!(error = %source, "Redis did not confirm an entry; its outcome is unknown")
            }
            Self::DatabaseUnavailable(source) => warn!(error = %source, "PostgreSQL query failed"),
            Self::Internal(detail) => error!(%detail, "internal error"),
            Self::Config(_) | Self::RedisSetup(_) | Self::Bind { .. } | Self::Serve(_) => {
                error!(error = %self, "internal error")
            }
            _ => {}
        }
        let body = ErrorBody {
            error: self.code(),
            detail: self.to_string(),
        };
        let code = self.code();
        let mut response = (status, Json(body)).into_response();
        response.extensions_mut().insert(ErrorCode(code));
        let headers = response.headers_mut();
        match self {
            Self::RateLimited {
                retry_after_secs, ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            Self::SearchBusy { .. } => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(SEARCH_RETRY_AFTER_SECS),
                );
            }
            _ if matches!(
                status,
                StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
            ) =>
            {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECS),
                );
            }
            // The rest of the body may still come: the connection is done.
            Self::RequestTimeout { .. } => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Self::Unauthorized => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"logpipeline\""),
                );
            }
            _ => {}
        }
        response
    }
}

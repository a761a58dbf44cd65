//! The gRPC services, on their own port: system B's `WriteLog` and `BatchWriteLogs`
//! (`logpipeline.v1.LogService`, `proto/logpipeline/v1/log_service.proto`), OTLP's
//! `opentelemetry.proto.collector.logs.v1.LogsService/Export` ([`crate::otlp`]), gRPC
//! health checking and server reflection.
//!
//! Requests go the way HTTP's do: the same API keys (`authorization: Bearer <key>` or
//! `x-api-key` metadata) and rate limits, the same validation ([`crate::seed`]) and
//! stream ([`crate::accept`]). Errors are gRPC statuses: INVALID_ARGUMENT naming the
//! field, UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED (rate limit, full
//! stream) and UNAVAILABLE (Redis) with a `google.rpc.RetryInfo` delay, and
//! DEADLINE_EXCEEDED when Redis did not confirm (the outcome is unknown: retry with the
//! same idempotency key). Never INTERNAL for anything a client sends: a message that
//! does not decode is INVALID_ARGUMENT.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request as HttpRequest};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response as HttpResponse;
use logpipeline_core::seed::{RawFields, SeedLog, raw_fields};
use logpipeline_proto::v1::log_service_server::{LogService, LogServiceServer};
use logpipeline_proto::v1::{
    BatchWriteLogsRequest, BatchWriteLogsResponse, WriteLogRequest, WriteLogResponse,
};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_server::{
    LogsService, LogsServiceServer,
};
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::{Code, Request, Response, Status};
use tonic_health::ServingStatus;
use tonic_types::{ErrorDetails, StatusExt};
use tracing::{error, warn};

use crate::accept::{Accepted, accept_records, now};
use crate::auth::{Principal, Scope};
use crate::error::Error;
use crate::idempotency::IdempotencyKey;
use crate::metrics::Endpoint;
use crate::otlp;
use crate::state::AppState;
use crate::v1::Sorted;

/// How often the health service's status follows Redis.
const HEALTH_CHECK_EVERY: Duration = Duration::from_secs(5);

/// The services whose health follows Redis ("" being the server as a whole).
const HEALTH_CHECKED: [&str; 3] = [
    "",
    "logpipeline.v1.LogService",
    "opentelemetry.proto.collector.logs.v1.LogsService",
];

/// The delay a client is asked to wait after a refusal that is not a rate limit.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// `logpipeline.v1.LogService` over the api's state.
#[derive(Clone)]
pub struct GrpcLogService {
    state: AppState,
}

/// The gRPC router: the log service, health checking and reflection; the health
/// service says SERVING while Redis answers, until `shutdown`.
pub fn router(state: AppState, shutdown: CancellationToken) -> axum::Router {
    let limit = state.max_body_bytes;
    let (reporter, health) = tonic_health::server::health_reporter();
    tokio::spawn({
        let state = state.clone();
        async move {
            let mut ticks = tokio::time::interval(HEALTH_CHECK_EVERY);
            while shutdown.run_until_cancelled(ticks.tick()).await.is_some() {
                let status = if state.queue.ping().await {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                for service in HEALTH_CHECKED {
                    reporter.set_service_status(service, status).await;
                }
            }
        }
    });
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(logpipeline_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(opentelemetry_proto::DESCRIPTORS)
        .build_v1();
    let service = GrpcLogService { state };
    let logs = LogServiceServer::new(service.clone())
        .max_decoding_message_size(limit)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip);
    let otlp_logs = LogsServiceServer::new(service)
        .max_decoding_message_size(limit)
        .accept_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Gzip);
    let mut routes = tonic::service::Routes::new(logs)
        .add_service(otlp_logs)
        .add_service(health);
    match reflection {
        Ok(reflection) => routes = routes.add_service(reflection),
        Err(reflection_error) => {
            error!(error = %reflection_error, "gRPC reflection is unavailable");
        }
    }
    routes
        .into_axum_router()
        .layer(axum::middleware::from_fn(undecodable_is_invalid_argument))
}

/// Turns the INTERNAL status tonic answers a request message that does not decode with
/// into INVALID_ARGUMENT: the client sent something wrong, the server did not fail.
async fn undecodable_is_invalid_argument(request: HttpRequest, next: Next) -> HttpResponse {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let internal = headers.get("grpc-status").map(HeaderValue::as_bytes) == Some(b"13");
    let undecodable = headers.get("grpc-message").is_some_and(|message| {
        let message = message.as_bytes();
        message.starts_with(b"failed%20to%20decode") || message.starts_with(b"failed to decode")
    });
    if internal && undecodable {
        headers.insert("grpc-status", HeaderValue::from_static("3"));
    }
    response
}

#[tonic::async_trait]
impl LogsService for GrpcLogService {
    async fn export(
        &self,
        request: Request<ExportLogsServiceRequest>,
    ) -> Result<Response<ExportLogsServiceResponse>, Status> {
        self.observed("Export", async {
            let principal = self.admit(&request)?;
            let received_at = now();
            otlp::export(
                &self.state,
                &principal,
                received_at,
                request.into_inner(),
                Endpoint::OtlpGrpc,
            )
            .await
        })
        .await
    }
}

#[tonic::async_trait]
impl LogService for GrpcLogService {
    async fn write_log(
        &self,
        request: Request<WriteLogRequest>,
    ) -> Result<Response<WriteLogResponse>, Status> {
        self.observed("WriteLog", async {
            let principal = self.admit(&request)?;
            let received_at = now();
            let log = request.into_inner();
            let key = idempotency_key(&log.idempotency_key)?;
            let record = seed_log(log).into_record().map_err(Error::InvalidLog)?;
            let accepted = accept_records(
                &self.state,
                &principal,
                received_at,
                std::slice::from_ref(&record),
                Endpoint::GrpcWrite,
                key.as_ref(),
            )
            .await?;
            Ok(WriteLogResponse {
                success: true,
                log_id: accepted.entry_id,
                error_message: String::new(),
                duplicate: accepted.duplicate,
            })
        })
        .await
    }

    async fn batch_write_logs(
        &self,
        request: Request<BatchWriteLogsRequest>,
    ) -> Result<Response<BatchWriteLogsResponse>, Status> {
        self.observed("BatchWriteLogs", async {
            let principal = self.admit(&request)?;
            let received_at = now();
            let batch = request.into_inner();
            let key = idempotency_key(&batch.idempotency_key)?;
            let logs = batch.entries.into_iter().map(seed_log).collect();
            let sorted = Sorted::of(logs, "entries")?;
            let accepted: Accepted = accept_records(
                &self.state,
                &principal,
                received_at,
                &sorted.valid,
                Endpoint::GrpcBatch,
                key.as_ref(),
            )
            .await?;
            let results: Vec<WriteLogResponse> = sorted
                .results(accepted.log_ids(), accepted.duplicate)
                .into_iter()
                .map(|result| WriteLogResponse {
                    success: result.success,
                    log_id: result.log_id,
                    error_message: result.error_message,
                    duplicate: result.duplicate,
                })
                .collect();
            let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
            Ok(BatchWriteLogsResponse {
                success: sorted.problems.is_empty(),
                total_count: count(results.len()),
                success_count: count(accepted.count),
                error_count: count(sorted.problems.len()),
                results,
                duplicate: accepted.duplicate,
            })
        })
        .await
    }
}

impl GrpcLogService {
    /// Who `request` acts for, if it may write: within its address's and its key's
    /// rates, with a key of scope `write`.
    fn admit<T>(&self, request: &Request<T>) -> Result<Principal, Error> {
        let limits = &self.state.rate_limits;
        if let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>() {
            limits.check_ip(peer.ip())?;
        }
        let metadata = request.metadata();
        let principal = self.state.auth.authenticate_with(
            |name| metadata.get(name).and_then(|value| value.to_str().ok()),
            Scope::Write,
        )?;
        limits.check_key(&principal.key)?;
        Ok(principal)
    }

    /// Runs a call, counts it by method and outcome, and turns its error into a status.
    async fn observed<T>(
        &self,
        method: &'static str,
        call: impl Future<Output = Result<T, Error>>,
    ) -> Result<Response<T>, Status> {
        let started = Instant::now();
        let result = call.await;
        let status = result.as_ref().err().map(status_of);
        let code = status.as_ref().map_or(Code::Ok, Status::code);
        self.state
            .metrics
            .grpc_request(method, code_label(code), started.elapsed());
        if let Err(error) = &result {
            self.state.metrics.request_rejected(error.code());
        }
        match (result, status) {
            (Ok(answer), _) => Ok(Response::new(answer)),
            (Err(_), Some(status)) => Err(status),
            (Err(error), None) => Err(Status::internal(error.to_string())),
        }
    }
}

/// The log of a gRPC request, as the `/api/v1` front reads it.
fn seed_log(log: WriteLogRequest) -> SeedLog {
    // A JSON object's fields are kept in name order (serde_json's map is a B-tree).
    let fields: Map<String, Value> = log
        .metadata
        .into_iter()
        .map(|(name, value)| (name, Value::String(value)))
        .collect();
    SeedLog {
        message: log.message,
        service_name: Some(log.service_name),
        level: Some(log.level),
        trace_id: Some(log.trace_id),
        span_id: Some(log.span_id),
        device_id: Some(log.device_id),
        fields: raw_fields(fields),
        shadowed: RawFields::new(),
    }
}

/// The request's idempotency key; none when empty.
fn idempotency_key(text: &str) -> Result<Option<IdempotencyKey>, Error> {
    if text.is_empty() {
        return Ok(None);
    }
    IdempotencyKey::parse("idempotency_key", text).map(Some)
}

/// The gRPC status of `error`, with a retry delay where retrying helps.
fn status_of(error: &Error) -> Status {
    let message = error.to_string();
    let retry = |code: Code, delay: Duration| {
        Status::with_error_details(
            code,
            message.clone(),
            ErrorDetails::with_retry_info(Some(delay)),
        )
    };
    match error {
        Error::InvalidLog(_)
        | Error::MalformedJson(_)
        | Error::MalformedBody(_)
        | Error::IdempotencyKeyReused
        | Error::LimitExceeded(_) => Status::invalid_argument(message),
        Error::Unauthorized => Status::unauthenticated(message),
        Error::Forbidden { .. } => Status::permission_denied(message),
        Error::RateLimited {
            retry_after_secs, ..
        } => retry(
            Code::ResourceExhausted,
            Duration::from_secs(*retry_after_secs),
        ),
        Error::Backpressure { .. } => retry(Code::ResourceExhausted, RETRY_DELAY),
        Error::QueueUnavailable(source) => {
            warn!(error = %source, "Redis call failed");
            retry(Code::Unavailable, RETRY_DELAY)
        }
        Error::ReplicasMissing { .. } => retry(Code::Unavailable, RETRY_DELAY),
        Error::OutcomeUnknown { source, .. } => {
            warn!(error = %source, "Redis did not confirm an entry; its outcome is unknown");
            retry(Code::DeadlineExceeded, RETRY_DELAY)
        }
        other => {
            error!(error = %other, "internal error");
            Status::internal("internal error")
        }
    }
}

/// The `code` label of a status: its name as gRPC spells it.
fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::Unavailable => "UNAVAILABLE",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_a_retry_delay_and_field_errors_name_the_field() {
        let backpressure = status_of(&Error::Backpressure { capacity: 10 });
        assert_eq!(backpressure.code(), Code::ResourceExhausted);
        let delay = backpressure
            .get_details_retry_info()
            .and_then(|info| info.retry_delay);
        assert_eq!(delay, Some(RETRY_DELAY));
        let limited = status_of(&Error::RateLimited {
            limit: "key",
            retry_after_secs: 3,
        });
        assert_eq!(
            limited
                .get_details_retry_info()
                .and_then(|info| info.retry_delay),
            Some(Duration::from_secs(3))
        );
        let invalid = status_of(&Error::InvalidLog(
            "entries[2].message must be 1 to 5000".into(),
        ));
        assert_eq!(invalid.code(), Code::InvalidArgument);
        assert!(invalid.message().starts_with("entries[2].message"));
        assert_eq!(
            status_of(&Error::Unauthorized).code(),
            Code::Unauthenticated
        );
    }

    #[test]
    fn metadata_becomes_log_data_in_name_order() {
        let log = WriteLogRequest {
            message: "m".into(),
            metadata: [
                ("b".to_owned(), "2".to_owned()),
                ("a".to_owned(), "1".to_owned()),
            ]
            .into(),
            ..WriteLogRequest::default()
        };
        let record = seed_log(log).into_record().unwrap();
        assert_eq!(record.log_data.unwrap().as_json(), r#"{"a":"1","b":"2"}"#);
        assert_eq!(record.device_id.as_str(), "unknown_service");
    }
}

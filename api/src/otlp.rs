//! OTLP logs ingest: OpenTelemetry SDKs and Collectors export to LogPipeline over
//! OTLP/HTTP (`POST /v1/logs`, here) or OTLP/gRPC (`LogsService/Export`,
//! [`crate::grpc`]); both end in [`export`].
//!
//! The semantics are the OTLP specification's:
//! - bodies are `application/x-protobuf` or `application/json` (the OTLP JSON encoding:
//!   hexadecimal trace and span ids, 64-bit integers as strings), plain or gzip; the
//!   answer has the request's content type;
//! - success is an `ExportLogsServiceResponse`; records refused for their content (see
//!   [`logpipeline_core::otlp`] for the mapping and its rules) are counted in
//!   `partial_success.rejected_log_records`, with the first reasons in its
//!   `error_message`, and the others are accepted;
//! - a body that does not decode is refused whole: 400 or INVALID_ARGUMENT;
//! - under backpressure or a rate limit the answer is 429/503 with `Retry-After`, or
//!   RESOURCE_EXHAUSTED/UNAVAILABLE with `RetryInfo`, which the exporters honour;
//! - error answers carry a `google.rpc.Status` in the request's content type.
//!
//! The answer comes once Redis holds the records, never after PostgreSQL. Exporters send
//! no idempotency key, and retry what they could not confirm; so each stream entry's
//! key is derived from its content (a hash of its records), and a retried export that did
//! land the first time is stored once. Two exports of identical records (the same
//! timestamps to the nanosecond included) within the idempotency window are one.
//! Exports of more than 1000 records go onto the stream in entries of 1000.

use axum::Extension;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use logpipeline_core::otlp;
use logpipeline_core::record::MAX_BATCH_LOGS;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use prost::Message;
use serde::Deserialize;
use serde_json::json;
use time::OffsetDateTime;
use tonic::Code;

use crate::accept::{Checked, accept, now};
use crate::auth::Principal;
use crate::error::{Error, Result, reshape_errors};
use crate::extract::{RawBody, is_json};
use crate::idempotency::{IdempotencyKey, fingerprint};
use crate::metrics::Endpoint;
use crate::state::AppState;

/// How many refused records' reasons `partial_success.error_message` spells out.
const REASONS_SHOWN: usize = 5;

/// Puts the valid records of `request`, from `principal`'s tenant, on the stream; answers
/// once Redis holds them all.
pub async fn export(
    state: &AppState,
    principal: &Principal,
    received_at: OffsetDateTime,
    request: ExportLogsServiceRequest,
    endpoint: Endpoint,
) -> Result<ExportLogsServiceResponse> {
    let export = otlp::records(request);
    for records in export.records.chunks(MAX_BATCH_LOGS) {
        let json =
            serde_json::to_vec(records).map_err(|error| Error::Internal(error.to_string()))?;
        let key = IdempotencyKey::parse("content key", &format!("otlp-{}", fingerprint(&json)))?;
        accept(
            state,
            principal,
            received_at,
            &json,
            &Checked::of(records),
            endpoint,
            Some(&key),
        )
        .await?;
    }
    Ok(answer(&export.rejected))
}

/// The answer to an export whose refused records are `rejected`.
fn answer(rejected: &[String]) -> ExportLogsServiceResponse {
    let partial_success = (!rejected.is_empty()).then(|| {
        let mut error_message = rejected[..rejected.len().min(REASONS_SHOWN)].join("; ");
        if rejected.len() > REASONS_SHOWN {
            error_message.push_str(&format!("; and {} more", rejected.len() - REASONS_SHOWN));
        }
        ExportLogsPartialSuccess {
            rejected_log_records: i64::try_from(rejected.len()).unwrap_or(i64::MAX),
            error_message,
        }
    });
    ExportLogsServiceResponse { partial_success }
}

/// The content type of an OTLP/HTTP body, which its answer has too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    /// The encoding `headers` declare.
    fn of(headers: &HeaderMap) -> Result<Self> {
        let essence = headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.split(';').next())
            .map(|essence| essence.trim().to_ascii_lowercase());
        match essence.as_deref() {
            Some("application/x-protobuf" | "application/protobuf") => Ok(Self::Protobuf),
            _ if is_json(headers) => Ok(Self::Json),
            _ => Err(Error::UnsupportedOtlpMediaType),
        }
    }

    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Self::Protobuf => "application/x-protobuf",
            Self::Json => "application/json",
        })
    }

    fn decode(self, body: &[u8]) -> Result<ExportLogsServiceRequest> {
        match self {
            Self::Protobuf => ExportLogsServiceRequest::decode(body)
                .map_err(|error| Error::MalformedBody(format!("protobuf body: {error}"))),
            Self::Json => decode_json(body),
        }
    }

    fn encode(self, answer: &ExportLogsServiceResponse) -> Vec<u8> {
        match self {
            Self::Protobuf => answer.encode_to_vec(),
            Self::Json => {
                let body = match &answer.partial_success {
                    Some(partial) => json!({"partialSuccess": {
                        "rejectedLogRecords": partial.rejected_log_records.to_string(),
                        "errorMessage": partial.error_message,
                    }}),
                    None => json!({}),
                };
                body.to_string().into_bytes()
            }
        }
    }
}

/// Deepest nesting of objects and arrays an OTLP/JSON body may have. An AnyValue nests
/// four JSON levels per level of its own (`{"kvlistValue": {"values": [{"value": …}]}}`),
/// so a record whose `log_data` nests the 64 levels of the rule takes about 260: deeper
/// records parse, and are refused one by one by that rule (partial success).
const MAX_JSON_DEPTH: usize = 1024;

/// Parses an OTLP/JSON body without serde_json's limit of 128 levels (about 30 of an
/// AnyValue), on a stack that grows as deep as the body nests; the body's nesting is
/// bounded first.
fn decode_json(body: &[u8]) -> Result<ExportLogsServiceRequest> {
    let depth = json_depth(body);
    if depth > MAX_JSON_DEPTH {
        return Err(Error::MalformedBody(format!(
            "JSON body: nests {depth} levels deep, more than {MAX_JSON_DEPTH}"
        )));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    deserializer.disable_recursion_limit();
    let request =
        ExportLogsServiceRequest::deserialize(serde_stacker::Deserializer::new(&mut deserializer))
            .and_then(|request| deserializer.end().map(|()| request))
            .map_err(|error| Error::MalformedBody(format!("JSON body: {error}")))?;
    Ok(request)
}

/// The deepest nesting of objects and arrays in `json` (strings skipped), whether or
/// not it is valid JSON.
fn json_depth(json: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &byte in json {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Accepts an OTLP/HTTP logs export (`POST /v1/logs`). The answer comes once Redis holds
/// its records.
pub async fn http_export(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response> {
    let received_at = now();
    let encoding = Encoding::of(&headers)?;
    let request = encoding.decode(&body)?;
    let answer = export(&state, &principal, received_at, request, Endpoint::OtlpHttp).await?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, encoding.content_type())],
        encoding.encode(&answer),
    )
        .into_response())
}

/// Answers every error of `/v1/logs` (from the handler, the body extractor or the key
/// and rate checks) with a `google.rpc.Status` in the request's content type (JSON when
/// that is neither), as OTLP/HTTP says. Status and headers (such as `Retry-After`) stay.
pub async fn status_shape(request: Request, next: Next) -> Response {
    let encoding = Encoding::of(request.headers()).unwrap_or(Encoding::Json);
    let response = next.run(request).await;
    let code = rpc_code(response.status()) as i32;
    reshape_errors(response, |fields| {
        let message = fields
            .get("detail")
            .and_then(|detail| detail.as_str())
            .unwrap_or_default()
            .to_owned();
        let body = match encoding {
            Encoding::Protobuf => tonic_types::pb::Status {
                code,
                message,
                details: Vec::new(),
            }
            .encode_to_vec(),
            Encoding::Json => json!({"code": code, "message": message})
                .to_string()
                .into_bytes(),
        };
        (Some(encoding.content_type()), body)
    })
    .await
}

/// The gRPC code that says what an HTTP error status says.
fn rpc_code(status: StatusCode) -> Code {
    match status {
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => Code::Unimplemented,
        StatusCode::TOO_MANY_REQUESTS => Code::ResourceExhausted,
        StatusCode::SERVICE_UNAVAILABLE => Code::Unavailable,
        StatusCode::GATEWAY_TIMEOUT => Code::DeadlineExceeded,
        status if status.is_client_error() => Code::InvalidArgument,
        _ => Code::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, content_type.parse().unwrap());
        headers
    }

    #[test]
    fn bodies_are_protobuf_or_json_in_utf8() {
        assert_eq!(
            Encoding::of(&headers("application/x-protobuf")).unwrap(),
            Encoding::Protobuf
        );
        assert_eq!(
            Encoding::of(&headers("application/json; charset=utf-8")).unwrap(),
            Encoding::Json
        );
        for refused in [
            "text/plain",
            "application/json; charset=latin1",
            "application/grpc",
        ] {
            assert!(
                matches!(
                    Encoding::of(&headers(refused)),
                    Err(Error::UnsupportedOtlpMediaType)
                ),
                "{refused}"
            );
        }
        assert!(Encoding::of(&HeaderMap::new()).is_err());
    }

    #[test]
    fn json_follows_the_otlp_json_rules() {
        let body = br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{
            "timeUnixNano":"1700000000000000000","traceId":"5b8efff798038103d269b633813fc60c",
            "spanId":"eee19b7ec3c1b174","body":{"stringValue":"hi"},
            "attributes":[{"key":"n","value":{"intValue":"42"}}]}]}]}]}"#;
        let request = Encoding::Json.decode(body).unwrap();
        let record = &request.resource_logs[0].scope_logs[0].log_records[0];
        assert_eq!(record.time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(record.trace_id.len(), 16);
        assert_eq!(record.span_id.len(), 8);
        let answer = answer(&["a".into(), "b".into()]);
        assert_eq!(
            String::from_utf8(Encoding::Json.encode(&answer)).unwrap(),
            r#"{"partialSuccess":{"errorMessage":"a; b","rejectedLogRecords":"2"}}"#
        );
        assert_eq!(
            Encoding::Json.encode(&ExportLogsServiceResponse::default()),
            b"{}"
        );
        assert!(matches!(
            Encoding::Json.decode(
                br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"xyz"}]}]}]}"#
            ),
            Err(Error::MalformedBody(_))
        ));
        assert!(matches!(
            Encoding::Protobuf.decode(b"\xff\xff\xff"),
            Err(Error::MalformedBody(_))
        ));
    }

    /// An export of two records whose one attribute nests kvlists `first` and `second`
    /// levels deep.
    fn nested_export(first: usize, second: usize) -> Vec<u8> {
        let value = |depth: usize| {
            let mut value = r#"{"stringValue":"leaf"}"#.to_owned();
            for _ in 0..depth {
                value =
                    format!(r#"{{"kvlistValue":{{"values":[{{"key":"k","value":{value}}}]}}}}"#);
            }
            value
        };
        let record = |depth| {
            format!(
                r#"{{"body":{{"stringValue":"m"}},"attributes":[{{"key":"a","value":{}}}]}}"#,
                value(depth)
            )
        };
        format!(
            r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{},{}]}}]}}]}}"#,
            record(first),
            record(second)
        )
        .into_bytes()
    }

    #[test]
    fn json_records_nest_to_the_log_data_rule_and_deeper_ones_are_refused_alone() {
        // log_data holds the attributes (level 2), then one level per kvlist.
        let export = Encoding::Json.decode(&nested_export(62, 63)).unwrap();
        let mapped = logpipeline_core::otlp::records(export);
        assert_eq!(mapped.records.len(), 1, "{:?}", mapped.rejected);
        assert_eq!(mapped.rejected.len(), 1);
        assert!(
            mapped.rejected[0].contains("64 levels"),
            "{:?}",
            mapped.rejected
        );
        // Far deeper than any record may be: refused whole, without a deep recursion.
        assert!(matches!(
            Encoding::Json.decode(&nested_export(2, 300)),
            Err(Error::MalformedBody(_))
        ));
        assert_eq!(json_depth(br#"{"a":"[[[[","b":[{}]}"#), 3);
    }

    #[test]
    fn partial_success_names_the_first_reasons_and_counts_all() {
        let rejected: Vec<String> = (0..8).map(|n| format!("r{n}")).collect();
        let partial = answer(&rejected).partial_success.unwrap();
        assert_eq!(partial.rejected_log_records, 8);
        assert_eq!(partial.error_message, "r0; r1; r2; r3; r4; and 3 more");
        assert!(answer(&[]).partial_success.is_none());
    }

    #[test]
    fn error_statuses_map_to_grpc_codes() {
        assert_eq!(rpc_code(StatusCode::BAD_REQUEST), Code::InvalidArgument);
        assert_eq!(
            rpc_code(StatusCode::PAYLOAD_TOO_LARGE),
            Code::InvalidArgument
        );
        assert_eq!(
            rpc_code(StatusCode::TOO_MANY_REQUESTS),
            Code::ResourceExhausted
        );
        assert_eq!(rpc_code(StatusCode::SERVICE_UNAVAILABLE), Code::Unavailable);
        assert_eq!(rpc_code(StatusCode::UNAUTHORIZED), Code::Unauthenticated);
    }
}

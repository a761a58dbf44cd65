//! OTLP logs ingest, end to end on the real binaries: OpenTelemetry's Python SDK and its
//! OTLP exporters (HTTP/protobuf and gRPC, from PyPI) store every log once, as mapped; a
//! hand-built OTLP/JSON body and a gzip protobuf body are stored the same way; a retried
//! export is stored once; bad bodies get 400 or INVALID_ARGUMENT; at capacity the
//! exporters are told to back off, retry, and lose nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::io::Write;
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use logpipeline_e2e::runs::run_id;
use logpipeline_e2e::stack::{Stack, eventually, wait_for_count};
use logpipeline_local::auth::{ApiKey, keys_file};
use logpipeline_local::services::{Env, http_get, metric_value};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

const EXPORTER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/otlp/export.py");

fn client() -> reqwest::Client {
    logpipeline_e2e::http_client(|builder| builder.timeout(Duration::from_secs(10))).unwrap()
}

/// Runs the Python exporter with `args`; its JSON line.
async fn python_exporter(args: &[&str]) -> Value {
    let output = tokio::process::Command::new("python3")
        .arg(EXPORTER)
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the exporter failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap()
}

/// Exports `count` logs of run `run` through the SDK over `protocol` to `endpoint`.
async fn sdk_export(protocol: &str, endpoint: &str, run: &str, count: u32, key: &str) -> Value {
    let count = count.to_string();
    let mut args = vec![
        "--protocol",
        protocol,
        "--endpoint",
        endpoint,
        "--run",
        run,
        "--count",
        &count,
    ];
    if !key.is_empty() {
        args.extend(["--key", key]);
    }
    python_exporter(&args).await
}

fn run_query(run: &str) -> String {
    format!("select count(*) from logs where log_data->'attributes'->>'run' = '{run}'")
}

/// Rows of run `run`, and distinct values of their `seq` attribute.
async fn rows_and_distinct(pool: &PgPool, run: &str) -> (i64, i64) {
    sqlx::query_as(
        "select count(*), count(distinct log_data->'attributes'->>'seq') from logs
         where log_data->'attributes'->>'run' = $1",
    )
    .bind(run)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Checks that run `run`'s `count` logs were stored once each, mapped from what the SDK
/// sent: tenant, service, device, level, trace, span, message, attributes, resource.
async fn assert_mapped(pool: &PgPool, run: &str, count: i64, tenant: &str, ids: &Value) {
    wait_for_count(pool, &run_query(run), count, Duration::from_secs(90))
        .await
        .unwrap();
    assert_eq!(rows_and_distinct(pool, run).await, (count, count));
    let levels: Vec<(String, i64)> = sqlx::query_as(
        "select log_level, count(*) from logs where log_data->'attributes'->>'run' = $1
         group by log_level order by log_level",
    )
    .bind(run)
    .fetch_all(pool)
    .await
    .unwrap();
    let fifth = count / 5;
    assert_eq!(
        levels,
        [
            ("CRITICAL".to_owned(), fifth),
            ("DEBUG".to_owned(), fifth),
            ("ERROR".to_owned(), fifth),
            ("INFO".to_owned(), fifth),
            ("WARNING".to_owned(), fifth),
        ]
    );
    let row: (
        String,
        String,
        String,
        String,
        String,
        String,
        String,
        Value,
    ) = sqlx::query_as(
        "select tenant, device_id, service_name, trace_id, span_id, log_level, message, log_data
         from logs where log_data->'attributes'->>'run' = $1
         and log_data->'attributes'->>'seq' = '7'",
    )
    .bind(run)
    .fetch_one(pool)
    .await
    .unwrap();
    let (row_tenant, device, service, trace, span, level, message, data) = row;
    assert_eq!(row_tenant, tenant);
    assert_eq!(
        (device.as_str(), service.as_str()),
        ("otel-e2e", "otel-e2e")
    );
    assert_eq!(trace, ids["trace_id"].as_str().unwrap());
    assert_eq!(span, ids["span_id"].as_str().unwrap());
    assert_eq!(level, "WARNING");
    assert_eq!(message, format!("log 7 of {run}"));
    assert_eq!(data["attributes"]["seq"], 7, "{data}");
    assert_eq!(data["resource"]["deployment.environment"], "e2e", "{data}");
    assert_eq!(
        data["resource"]["telemetry.sdk.language"], "python",
        "{data}"
    );
    assert_eq!(data["scope"]["name"], "e2e.otlp", "{data}");
    // Python names the level WARNING; its SDK sends the OpenTelemetry name.
    assert_eq!(data["severity_text"], "WARN", "{data}");
    let timestamp = data["timestamp"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(timestamp, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "{timestamp}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_exporters_over_http_and_grpc_store_every_log_once_as_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let keys_path = dir.path().join("keys.yaml");
    let acme = ApiKey::new("acme", "collector", &["write", "read"]);
    let reader = ApiKey::new("acme", "dashboards", &["read"]);
    std::fs::write(&keys_path, keys_file(&[&acme, &reader])).unwrap();
    let stack = Stack::builder()
        .api()
        .workers(1)
        .api_env("LOGPIPELINE_AUTH", "keys")
        .api_env("LOGPIPELINE_API_KEYS_FILE", keys_path.display())
        .start()
        .unwrap();
    let api = stack.api.as_ref().unwrap();
    let (url, grpc_endpoint) = (api.url(), format!("127.0.0.1:{}", api.grpc_port()));
    let (http_run, grpc_run) = (run_id("sdk-http"), run_id("sdk-grpc"));
    let (http_ids, grpc_ids) = tokio::join!(
        sdk_export("http", &url, &http_run, 1000, &acme.secret),
        sdk_export("grpc", &grpc_endpoint, &grpc_run, 1000, &acme.secret),
    );
    let pool = stack.pool().await.unwrap();
    assert_mapped(&pool, &http_run, 1000, "acme", &http_ids).await;
    assert_mapped(&pool, &grpc_run, 1000, "acme", &grpc_ids).await;

    // The same keys guard OTLP: none, or one without `write`, stores nothing.
    let body = ExportLogsServiceRequest::default().encode_to_vec();
    for (key, expected) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some(&reader), StatusCode::FORBIDDEN),
    ] {
        let mut request = client()
            .post(format!("{url}/v1/logs"))
            .header("content-type", "application/x-protobuf")
            .body(body.clone());
        if let Some(key) = key {
            request = request.header("authorization", key.bearer());
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), expected);
        assert_eq!(response.headers()["content-type"], "application/x-protobuf");
        let status = tonic_types::pb::Status::decode(response.bytes().await.unwrap()).unwrap();
        let code = if expected == StatusCode::UNAUTHORIZED {
            tonic::Code::Unauthenticated
        } else {
            tonic::Code::PermissionDenied
        };
        assert_eq!(status.code, code as i32, "{status:?}");
    }
    let mut grpc = LogsServiceClient::connect(api.grpc_url()).await.unwrap();
    let anonymous = grpc
        .export(export_of("anyone", "anonymous", &["refused"]))
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), tonic::Code::Unauthenticated);
}

/// A string attribute.
fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

/// An export of `messages` from service `service` with attribute `run`.
fn export_of(service: &str, run: &str, messages: &[&str]) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![attribute("service.name", service)],
                ..Resource::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: messages
                    .iter()
                    .enumerate()
                    .map(|(seq, message)| LogRecord {
                        time_unix_nano: 1_700_000_000_000_000_000 + seq as u64,
                        severity_number: 13,
                        body: Some(AnyValue {
                            value: Some(any_value::Value::StringValue((*message).into())),
                        }),
                        attributes: vec![attribute("run", run), attribute("seq", &seq.to_string())],
                        ..LogRecord::default()
                    })
                    .collect(),
                ..ScopeLogs::default()
            }],
            ..ResourceLogs::default()
        }],
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_built_json_gzip_protobuf_retries_and_bad_bodies() {
    let stack = Stack::builder().api().workers(1).start().unwrap();
    let api = stack.api.as_ref().unwrap();
    let url = format!("{}/v1/logs", api.url());
    let pool = stack.pool().await.unwrap();
    let client = client();

    // OTLP/JSON as the specification spells it: hex ids, 64-bit integers as strings,
    // enums as numbers; the second record has no body and is refused alone.
    let run = run_id("json");
    let body = json!({"resourceLogs": [{
        "resource": {"attributes": [
            {"key": "service.name", "value": {"stringValue": "door-service"}},
            {"key": "device.id", "value": {"stringValue": "door-12"}}]},
        "scopeLogs": [{"scope": {"name": "doors"}, "logRecords": [
            {"timeUnixNano": "1700000000000000000", "severityNumber": 21, "severityText": "FATAL",
             "traceId": "5b8efff798038103d269b633813fc60c", "spanId": "eee19b7ec3c1b174",
             "body": {"stringValue": "door jammed"},
             "attributes": [{"key": "run", "value": {"stringValue": run}},
                            {"key": "attempts", "value": {"intValue": "9007199254740993"}},
                            {"key": "open", "value": {"boolValue": false}}]},
            {"timeUnixNano": "1700000000000000001",
             "attributes": [{"key": "run", "value": {"stringValue": run}}]}]}]}]});
    let response = client
        .post(&url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(
        answer["partialSuccess"]["rejectedLogRecords"], "1",
        "{answer}"
    );
    let reason = answer["partialSuccess"]["errorMessage"].as_str().unwrap();
    assert!(
        reason.starts_with("resource_logs[0].scope_logs[0].log_records[1].message"),
        "{reason}"
    );
    wait_for_count(&pool, &run_query(&run), 1, Duration::from_secs(60))
        .await
        .unwrap();
    let (device, service, level, trace, span, data): (
        String,
        String,
        String,
        String,
        String,
        Value,
    ) = sqlx::query_as(
        "select device_id, service_name, log_level, trace_id, span_id, log_data from logs
             where log_data->'attributes'->>'run' = $1",
    )
    .bind(&run)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (device.as_str(), service.as_str()),
        ("door-12", "door-service")
    );
    assert_eq!(level, "CRITICAL");
    assert_eq!(trace, "5b8efff798038103d269b633813fc60c");
    assert_eq!(span, "eee19b7ec3c1b174");
    assert_eq!(
        data["attributes"]["attempts"].to_string(),
        "9007199254740993"
    );
    assert_eq!(data["attributes"]["open"], false);
    assert_eq!(data["timestamp"], "2023-11-14T22:13:20Z");

    // Protobuf, gzip-compressed, sent twice as an exporter retries an unconfirmed export:
    // stored once; the answer is protobuf.
    let run = run_id("gzip");
    let body = gzip(&export_of("gzip-service", &run, &["one", "two", "three"]).encode_to_vec());
    for _ in 0..2 {
        let response = client
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .header("content-encoding", "gzip")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "application/x-protobuf");
        let answer = ExportLogsServiceResponse::decode(response.bytes().await.unwrap()).unwrap();
        assert_eq!(answer, ExportLogsServiceResponse::default());
    }
    wait_for_count(&pool, &run_query(&run), 3, Duration::from_secs(60))
        .await
        .unwrap();

    // OTLP/gRPC with tonic, gzip both ways, the same retry.
    let run = run_id("grpc");
    let mut grpc = LogsServiceClient::connect(api.grpc_url())
        .await
        .unwrap()
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip);
    for _ in 0..2 {
        let answer = grpc
            .export(export_of("grpc-service", &run, &["a", "b"]))
            .await
            .unwrap()
            .into_inner();
        assert!(answer.partial_success.is_none());
    }
    wait_for_count(&pool, &run_query(&run), 2, Duration::from_secs(60))
        .await
        .unwrap();
    // Each retry was answered as accepted and not put on the stream again: one JSON log
    // and three gzip ones over HTTP, two over gRPC.
    let metrics = http_get(api.port(), "/metrics").unwrap();
    assert_eq!(accepted(&metrics, "otlp_http"), 4.0);
    assert_eq!(accepted(&metrics, "otlp_grpc"), 2.0);

    // Bad bodies: 400 or 415 with a google.rpc.Status in the request's encoding.
    for (content_type, body, expected) in [
        (
            "application/x-protobuf",
            b"\x0a\xff\xff\xff\xff\x0f".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "application/json",
            b"{\"resourceLogs\": 7}".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "application/json",
            b"not json".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "application/json",
            br#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"not hex"}]}]}]}"#
                .to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "text/plain",
            b"hello".to_vec(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
    ] {
        let response = client
            .post(&url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "{content_type}");
        let bytes = response.bytes().await.unwrap();
        let code = if content_type == "application/x-protobuf" {
            tonic_types::pb::Status::decode(bytes).unwrap().code
        } else {
            let status: Value = serde_json::from_slice(&bytes).unwrap();
            assert!(
                status["message"].as_str().is_some_and(|m| !m.is_empty()),
                "{status}"
            );
            i32::try_from(status["code"].as_i64().unwrap()).unwrap()
        };
        assert_eq!(code, tonic::Code::InvalidArgument as i32, "{content_type}");
    }
    let garbage = python_exporter(&[
        "--protocol",
        "grpc",
        "--endpoint",
        &format!("127.0.0.1:{}", api.grpc_port()),
        "--garbage",
    ])
    .await;
    assert_eq!(garbage["code"], "INVALID_ARGUMENT");
    let health = client
        .get(format!("{}/readyz", api.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_capacity_the_exporters_back_off_retry_and_every_record_is_stored_once() {
    let mut stack = Stack::builder()
        .api()
        .api_env("LOGPIPELINE_STREAM_CAPACITY", 3)
        .start()
        .unwrap();
    let api = stack.api.as_ref().unwrap();
    let (url, port) = (api.url(), api.port());
    let grpc_endpoint = format!("127.0.0.1:{}", api.grpc_port());
    let (http_run, grpc_run) = (run_id("full-http"), run_id("full-grpc"));
    let exporters = tokio::spawn({
        let (http_run, grpc_run) = (http_run.clone(), grpc_run.clone());
        async move {
            tokio::join!(
                sdk_export("http", &url, &http_run, 2000, ""),
                sdk_export("grpc", &grpc_endpoint, &grpc_run, 2000, ""),
            )
        }
    });
    // No worker yet: the stream fills and the exporters are refused, until one starts.
    // No worker yet: the stream fills, and each exporter is refused (503 over HTTP,
    // RESOURCE_EXHAUSTED over gRPC, both asking to retry in a second) until one starts.
    let refused = || {
        let metrics = http_get(port, "/metrics").unwrap_or_default();
        let sample = |name: &str| metric_value(&metrics, name).unwrap_or(0.0);
        (
            sample(
                r#"logpipeline_api_http_requests_total{method="POST",route="/v1/logs",status="503"}"#,
            ),
            sample(
                r#"logpipeline_api_grpc_requests_total{code="RESOURCE_EXHAUSTED",method="Export"}"#,
            ),
        )
    };
    eventually(
        "both exporters are refused for backpressure",
        Duration::from_secs(30),
        || {
            let (http, grpc) = refused();
            async move { Ok(http > 0.0 && grpc > 0.0) }
        },
    )
    .await
    .unwrap();
    stack.start_worker(&Env::new()).unwrap();
    let (http_ids, grpc_ids) = exporters.await.unwrap();
    let pool = stack.pool().await.unwrap();
    assert_mapped(&pool, &http_run, 2000, "default", &http_ids).await;
    assert_mapped(&pool, &grpc_run, 2000, "default", &grpc_ids).await;
    let metrics = http_get(port, "/metrics").unwrap();
    assert_eq!(accepted(&metrics, "otlp_http"), 2000.0);
    assert_eq!(accepted(&metrics, "otlp_grpc"), 2000.0);
}

/// Logs accepted through `endpoint`, by the api's metrics.
fn accepted(metrics: &str, endpoint: &str) -> f64 {
    ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
        .iter()
        .filter_map(|level| {
            metric_value(
                metrics,
                &format!(
                    "logpipeline_api_logs_accepted_total{{endpoint=\"{endpoint}\",level=\"{level}\"}}"
                ),
            )
        })
        .sum()
}

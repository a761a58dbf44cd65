//! Accepted means stored: whatever PostgreSQL's types cannot hold is refused at the api,
//! on every ingest path, and every log that was accepted is in PostgreSQL exactly once.
//! The rules are held to PostgreSQL's own answers, and every rule is sent through every
//! path that can carry it, on the real binaries.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::time::Duration;

use logpipeline_core::numeric;
use logpipeline_core::record::LogData;
use logpipeline_e2e::stack::{Stack, eventually, wait_for_count, wait_for_schema};
use logpipeline_local::postgres;
use logpipeline_proto::v1::WriteLogRequest;
use logpipeline_proto::v1::log_service_client::LogServiceClient;
use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::Value;
use serde_json::value::RawValue;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// Whether PostgreSQL takes `json` as a `jsonb` value.
async fn postgres_stores(pool: &PgPool, json: &str) -> bool {
    sqlx::query("select $1::jsonb")
        .bind(json)
        .execute(pool)
        .await
        .is_ok()
}

/// Numbers at and around every limit of PostgreSQL's `numeric`.
fn numbers() -> Vec<String> {
    let mut numbers: Vec<String> = [
        "0",
        "-0",
        "1",
        "-1.5",
        "1e400",
        "1E+400",
        "1e1000",
        "1e1001",
        "1e-1000",
        "1e-1001",
        "1e131071",
        "1e131072",
        "-1e131072",
        "1e131073",
        "1.5e131071",
        "12e131071",
        "0.1e131072",
        "0.01e131073",
        "0.01e131074",
        "1e-16383",
        "1e-16384",
        "5e-16384",
        "0e-16383",
        "0e-16384",
        "0.0e-16383",
        "0e131072",
        "0e200000",
        "0e1073741822",
        "0e1073741823",
        "0e-1073741822",
        "1e1000000000",
        "0e100000000000000000000",
        "1e-100000000000000000000",
        "0.00e-16381",
        "0.000e-16381",
    ]
    .map(str::to_owned)
    .to_vec();
    for digits in [131_071, 131_072, 131_073, 200_000] {
        numbers.push("9".repeat(digits));
        numbers.push(format!("1{}", "0".repeat(digits - 1)));
        numbers.push(format!("{}.5", "9".repeat(digits)));
    }
    for zeros in [16_381, 16_382, 16_383, 16_384] {
        numbers.push(format!("0.{}1", "0".repeat(zeros)));
        numbers.push(format!("1.{}", "0".repeat(zeros + 1)));
        numbers.push(format!("0.{}", "0".repeat(zeros + 1)));
        numbers.push(format!("0.{}1e3", "0".repeat(zeros)));
    }
    numbers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_number_rule_gives_postgres_own_answer_at_every_limit() {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&postgres::fresh_database().unwrap())
        .await
        .unwrap();
    for number in numbers() {
        let json = format!(r#"{{"n": {number}}}"#);
        let postgres = postgres_stores(&pool, &json).await;
        let shown = &number[..number.len().min(40)];
        assert_eq!(
            numeric::check(&number).is_ok(),
            postgres,
            "{shown}… ({} characters): PostgreSQL stores it: {postgres}",
            number.len()
        );
        // And through the whole `log_data` rule, as the api and the worker apply it.
        let raw = RawValue::from_string(json.clone()).unwrap();
        assert_eq!(LogData::try_from(raw).is_ok(), postgres, "{shown}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_log_data_the_rules_accept_postgres_stores() {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(&postgres::fresh_database().unwrap())
        .await
        .unwrap();
    let nested = |depth: usize| {
        format!(
            r#"{{"a":{}{}}}"#,
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        )
    };
    let mut cases: Vec<String> = [
        r#"{"a":"\u0000"}"#,
        r#"{"\u0000":1}"#,
        r#"{"a":"\ud800"}"#,
        r#"{"a":"\udc00x"}"#,
        r#"{"a":"\ud83d\ude00"}"#,
        r#"{"a":"\\u0000"}"#,
        r#"{"a":"é\n\"\\"}"#,
        r#"{"a":[1e131072, "x"]}"#,
        r#"{"a":{"b":[true,null,-0.0e-5]}}"#,
        r#"{"1e131072":"a key is text"}"#,
        r#"{"a":"1e131072"}"#,
    ]
    .map(str::to_owned)
    .to_vec();
    cases.extend([nested(64), nested(65), nested(5000)]);
    cases.extend(numbers().iter().map(|n| format!(r#"{{"a":[{n}]}}"#)));
    for json in cases {
        let accepted = LogData::try_from(RawValue::from_string(json.clone()).unwrap()).is_ok();
        if accepted {
            assert!(
                postgres_stores(&pool, &json).await,
                "accepted but PostgreSQL refuses: {}",
                &json[..json.len().min(60)]
            );
        }
    }
}

/// Values that break a rule, as the JSON text of a `log_data` value.
fn poisons() -> Vec<(&'static str, String)> {
    vec![
        ("exponent", "1e131073".to_owned()),
        ("digits", format!("1{}", "0".repeat(200_000))),
        ("scale", "1e-16384".to_owned()),
        ("nul", r#""a\u0000b""#.to_owned()),
        ("surrogate", r#""\ud800""#.to_owned()),
        ("nul-key", r#"{"k\u0000": 1}"#.to_owned()),
        ("depth", format!("{}{}", "[".repeat(64), "]".repeat(64))),
    ]
}

/// What one request did with each of its logs, each named by its message: accepted or
/// not.
type Sent = Vec<(String, bool)>;

async fn post(client: &reqwest::Client, url: &str, body: String) -> (StatusCode, Value) {
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn device_log(message: &str, value: &str) -> String {
    format!(
        r#"{{"device_id":"storable","log_level":"INFO","message":"{message}","log_data":{{"v":{value}}}}}"#
    )
}

fn v1_log(message: &str, value: &str) -> String {
    format!(r#"{{"message":"{message}","service_name":"storable","metadata":{{"v":{value}}}}}"#)
}

fn otlp_record(message: &str, value: &str) -> String {
    format!(
        r#"{{"timeUnixNano":"1700000000000000000","body":{{"stringValue":"{message}"}},"attributes":[{{"key":"v","value":{value}}}]}}"#
    )
}

/// `value` (JSON text) as an OTLP AnyValue in JSON.
fn any_value(value: &str) -> String {
    if value.starts_with('"') {
        format!(r#"{{"stringValue":{value}}}"#)
    } else if value.starts_with('{') {
        let (key, inner) = value[1..value.len() - 1].split_once(':').unwrap();
        format!(
            r#"{{"kvlistValue":{{"values":[{{"key":{key},"value":{}}}]}}}}"#,
            any_value(inner.trim())
        )
    } else if value.starts_with('[') {
        format!(
            r#"{{"arrayValue":{{"values":[{}]}}}}"#,
            any_value(&value[1..value.len() - 1])
        )
    } else if value.is_empty() {
        r#"{"boolValue":true}"#.to_owned()
    } else {
        format!(r#"{{"doubleValue":{value}}}"#)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_rule_is_refused_on_every_path_and_every_accepted_log_is_stored_once() {
    let stack = Stack::builder()
        .api()
        .workers(1)
        .worker_env("LOGPIPELINE_MAX_DELIVERIES", 2)
        .start()
        .unwrap();
    let pool = stack.pool().await.unwrap();
    wait_for_schema(&pool).await.unwrap();
    let api = stack.api.as_ref().unwrap();
    let base = api.url();
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let mut grpc = LogServiceClient::connect(api.grpc_url()).await.unwrap();
    let mut sent: Sent = Vec::new();

    for (name, value) in poisons() {
        let tag = |path: &str| format!("storable-{name}-{path}");

        // The seed's device endpoints: 422, the whole batch with it.
        let (status, body) = post(
            &client,
            &format!("{base}/api/log"),
            device_log(&tag("log"), &value),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {body}");
        assert_eq!(body["error"], "invalid_log", "{name}: {body}");
        sent.push((tag("log"), false));
        let batch = format!(
            r#"{{"logs":[{},{}]}}"#,
            device_log(&tag("batch-ok"), "1"),
            device_log(&tag("batch"), &value)
        );
        let (status, body) = post(&client, &format!("{base}/api/logs/batch"), batch).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{name}: {body}");
        assert!(
            body["detail"].as_str().unwrap().starts_with("logs[1]"),
            "{name}: {body}"
        );
        sent.extend([(tag("batch-ok"), false), (tag("batch"), false)]);

        // System B's front: the log is refused, or accepted and then stored.
        let (status, body) = post(
            &client,
            &format!("{base}/api/v1/logs/write"),
            v1_log(&tag("v1"), &value),
        )
        .await;
        assert!(
            status == StatusCode::OK || status.is_client_error(),
            "{name}: {status} {body}"
        );
        sent.push((tag("v1"), status == StatusCode::OK));
        let batch = format!(
            r#"{{"log_entries":[{},{}]}}"#,
            v1_log(&tag("v1-batch-ok"), "1"),
            v1_log(&tag("v1-batch"), &value)
        );
        let (status, body) = post(&client, &format!("{base}/api/v1/logs/batch"), batch).await;
        if status == StatusCode::OK {
            sent.push((tag("v1-batch-ok"), body["results"][0]["success"] == true));
            sent.push((tag("v1-batch"), body["results"][1]["success"] == true));
        } else {
            assert!(status.is_client_error(), "{name}: {status} {body}");
            sent.extend([(tag("v1-batch-ok"), false), (tag("v1-batch"), false)]);
        }

        // OTLP/JSON: the record is refused alone (partial success), or the export is.
        let export = format!(
            r#"{{"resourceLogs":[{{"scopeLogs":[{{"logRecords":[{},{}]}}]}}]}}"#,
            otlp_record(&tag("otlp-ok"), r#"{"intValue":"1"}"#),
            otlp_record(&tag("otlp"), &any_value(&value))
        );
        let (status, body) = post(&client, &format!("{base}/v1/logs"), export).await;
        if status == StatusCode::OK {
            let rejected = body["partialSuccess"]["rejectedLogRecords"]
                .as_str()
                .map_or_else(
                    || {
                        body["partialSuccess"]["rejectedLogRecords"]
                            .as_i64()
                            .unwrap_or(0)
                    },
                    |n| n.parse().unwrap(),
                );
            sent.push((tag("otlp-ok"), true));
            sent.push((tag("otlp"), rejected == 0));
        } else {
            assert!(status.is_client_error(), "{name}: {status} {body}");
            sent.extend([(tag("otlp-ok"), false), (tag("otlp"), false)]);
        }
    }

    // gRPC carries text only: NUL in the message, a metadata key or value.
    let grpc_cases = [
        (
            "message",
            WriteLogRequest {
                message: "storable-grpc-message \0".into(),
                ..WriteLogRequest::default()
            },
            "storable-grpc-message \0",
        ),
        (
            "key",
            WriteLogRequest {
                message: "storable-grpc-key".into(),
                metadata: [("k\0".to_owned(), "v".to_owned())].into(),
                ..WriteLogRequest::default()
            },
            "storable-grpc-key",
        ),
        (
            "value",
            WriteLogRequest {
                message: "storable-grpc-value".into(),
                metadata: [("k".to_owned(), "a\0b".to_owned())].into(),
                ..WriteLogRequest::default()
            },
            "storable-grpc-value",
        ),
    ];
    for (name, request, message) in grpc_cases {
        let status = grpc.write_log(request).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{name}: {status:?}"
        );
        sent.push((message.to_owned(), false));
    }

    let accepted = sent.iter().filter(|(_, accepted)| *accepted).count() as i64;
    assert!(
        accepted > 0,
        "some logs of mixed requests were accepted: {sent:?}"
    );
    wait_for_count(
        &pool,
        "select count(*) from logs where message like 'storable-%'",
        accepted,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    drop(grpc);
    for (message, was_accepted) in &sent {
        // PostgreSQL's text holds no NUL: a log with one could only be found without it.
        let rows: i64 = sqlx::query_scalar("select count(*) from logs where message = $1")
            .bind(message.replace('\0', ""))
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(
            rows,
            i64::from(*was_accepted),
            "{message:?} accepted: {was_accepted}"
        );
    }
    // Nothing was held back: no dead letter, nothing left pending.
    let mut redis = stack.redis().await.unwrap();
    eventually("nothing is pending", Duration::from_secs(30), || {
        let mut redis = redis.clone();
        async move {
            let pending: redis::Value = redis::cmd("XPENDING")
                .arg("logs:stream")
                .arg("log_workers")
                .query_async(&mut redis)
                .await?;
            Ok(matches!(pending, redis::Value::Array(ref items) if items.first() == Some(&redis::Value::Int(0))))
        }
    })
    .await
    .unwrap();
    let dead: i64 = redis.xlen("logs:stream:dead").await.unwrap();
    assert_eq!(dead, 0, "nothing accepted is dead-lettered");
}

//! The ingest endpoints against a real Redis: answers, status codes and what lands on the
//! stream.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

mod common;

use std::time::Duration;

use axum::http::{StatusCode, header};
use std::collections::BTreeSet;

use common::{Options, TestApi};
use logpipeline_core::stream::{Shards, shard_of_id};
use logpipeline_e2e::stack::eventually;
use serde_json::{Value, json};

/// A request to refuse: path, content type, body; then the status, `error` and a part of
/// `detail` expected.
type Refused = (
    &'static str,
    Option<&'static str>,
    String,
    StatusCode,
    &'static str,
    &'static str,
);

fn a_log(device: &str) -> Value {
    json!({"device_id": device, "log_level": "WARNING", "message": "disk at 91%", "log_data": {"disk": "/", "used": 0.91}})
}

#[tokio::test]
async fn a_single_log_is_on_the_stream_before_the_answer() {
    let fixture = TestApi::start().await;
    let answer = fixture.post_json("/api/log", &a_log("device-001")).await;
    let (status, body) = (answer.status, answer.body);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "received");
    let received_at = time::OffsetDateTime::parse(
        body["received_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();

    let entries = fixture.entries().await;
    assert_eq!(entries.len(), 1);
    let (id, entry) = &entries[0];
    assert_eq!(
        body["message_id"], *id,
        "a single log's id is its stream entry id"
    );
    assert_eq!(entry.received_at, received_at);
    assert_eq!(entry.logs.len(), 1);
    assert_eq!(entry.logs[0].device_id.as_str(), "device-001");
    assert_eq!(
        entry.logs[0].log_data.as_ref().unwrap().as_json(),
        r#"{"disk":"/","used":0.91}"#
    );
}

#[tokio::test]
async fn a_batch_is_one_entry_with_an_id_per_log() {
    let fixture = TestApi::start().await;
    let logs: Vec<Value> = (0..5).map(|i| a_log(&format!("device-{i}"))).collect();
    let answer = fixture
        .post_json("/api/logs/batch", &json!({ "logs": logs }))
        .await;
    let (status, body) = (answer.status, answer.body);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "received");
    assert_eq!(body["count"], 5);
    let entries = fixture.entries().await;
    assert_eq!(entries.len(), 1);
    let (id, entry) = &entries[0];
    let expected: Vec<String> = (0..5).map(|i| format!("{id}.{i}")).collect();
    assert_eq!(body["message_ids"], json!(expected));
    let devices: Vec<&str> = entry
        .logs
        .iter()
        .map(|log| log.device_id.as_str())
        .collect();
    assert_eq!(
        devices,
        ["device-0", "device-1", "device-2", "device-3", "device-4"]
    );
}

/// A key sent again with the same log replays the first answer and adds nothing; sent
/// with another log it is refused with 422 and adds nothing either.
#[tokio::test]
async fn a_repeated_idempotency_key_replays_the_first_answer_or_is_refused() {
    let fixture = TestApi::start().await;
    let send = |device: &'static str| {
        let request = axum::http::Request::post("/api/log")
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", "r-1")
            .body(axum::body::Body::from(a_log(device).to_string()))
            .unwrap();
        fixture.send(request)
    };
    let first = send("pump-7").await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let again = send("pump-7").await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.body["status"], "duplicate");
    assert_eq!(again.body["message_id"], first.body["message_id"]);
    let other = send("pump-8").await;
    assert_eq!(
        (other.status, &other.body["error"]),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!("idempotency_key_reused")
        ),
        "{}",
        other.text
    );
    assert_eq!(fixture.entries().await.len(), 1);
}

/// With three shards, each request goes to the shard of its tenant and (first) device,
/// in order; entry ids carry their shard's number, so no two shards give the same id;
/// capacity and idempotency hold per shard.
#[tokio::test]
async fn logs_go_to_their_devices_shard_with_ids_unique_across_shards() {
    let fixture = TestApi::start_with(Options {
        capacity: 200,
        shards: 3,
        ..Options::default()
    })
    .await;
    let shards = Shards::new(common::STREAM, 3);
    for round in 0..3 {
        for device in 0..30 {
            let device = format!("pump-{device}");
            let answer = if round == 1 {
                let batch = json!({"logs": [a_log(&device), a_log("elsewhere")]});
                fixture.post_json("/api/logs/batch", &batch).await
            } else {
                fixture.post_json("/api/log", &a_log(&device)).await
            };
            assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        }
    }
    let mut ids = BTreeSet::new();
    let mut total = 0;
    for (index, key) in shards.keys().iter().enumerate() {
        let entries = fixture.entries_of(key).await;
        assert!(!entries.is_empty(), "shard {key} got no device of 30");
        for (id, entry) in &entries {
            assert_eq!(shard_of_id(id), Some(index as u32), "{id} on {key}");
            let device = entry.logs[0].device_id.as_str();
            assert_eq!(shards.of("default", device), index, "{device} on {key}");
            assert!(ids.insert(id.clone()), "{id} given twice");
        }
        let mut order = entries.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>();
        order.sort_by(|a, b| compare_ids(a, b));
        assert_eq!(
            order,
            entries.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>()
        );
        total += entries.len();
    }
    assert_eq!(total, 90);
}

/// An entry added by other means (an api from before shards, with `*` ids) with a later
/// id than the last one the script gave: the next entry goes after it, still with its
/// shard's number.
#[tokio::test]
async fn ids_go_on_after_an_entry_added_by_other_means() {
    let fixture = TestApi::start_with(Options {
        shards: 3,
        ..Options::default()
    })
    .await;
    let shards = Shards::new(common::STREAM, 3);
    let device = (0..)
        .map(|i| format!("pump-{i}"))
        .find(|device| shards.of("default", device) == 2)
        .unwrap();
    assert_eq!(
        fixture.post_json("/api/log", &a_log(&device)).await.status,
        StatusCode::OK
    );
    let ahead = format!(
        "{}-7",
        time::OffsetDateTime::now_utc().unix_timestamp() * 1000 + 60_000
    );
    let _: String = redis::cmd("XADD")
        .arg(&shards.keys()[2])
        .arg(&ahead)
        .arg("x")
        .arg("y")
        .query_async(&mut fixture.con.clone())
        .await
        .unwrap();
    let answer = fixture.post_json("/api/log", &a_log(&device)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let id = answer.body["message_id"].as_str().unwrap();
    assert_eq!(
        compare_ids(id, &ahead),
        std::cmp::Ordering::Greater,
        "{id} after {ahead}"
    );
    assert_eq!(shard_of_id(id), Some(2));
}

/// System B's `metadata` wins over a top-level field of the same name, and the value it
/// replaces is still checked: a body holding a NUL anywhere is refused (schemathesis
/// found it taken when metadata hid it), and nothing is queued.
#[tokio::test]
async fn a_value_metadata_replaces_is_checked_all_the_same() {
    let fixture = TestApi::start().await;
    let body = json!({"message": "m", "k": {"a\u{0}b": 1}, "metadata": {"k": "fine"}});
    let answer = fixture.post_json("/api/v1/logs/write", &body).await;
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.text
    );
    assert!(answer.text.contains("log_data"), "{}", answer.text);
    let fine = json!({"message": "m", "k": {"a": 1}, "metadata": {"k": "fine"}});
    let answer = fixture.post_json("/api/v1/logs/write", &fine).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let entries = fixture.entries().await;
    assert_eq!(entries.len(), 1);
    assert_eq!(
        entries[0].1.logs[0].log_data.as_ref().unwrap().as_json(),
        r#"{"k":"fine"}"#
    );
}

/// System B's fields keep their numbers as sent, to the last digit, as `/api/log` keeps
/// `log_data`; a number past PostgreSQL's `numeric` is refused, not rounded to 0.
#[tokio::test]
async fn v1_numbers_keep_every_digit() {
    let fixture = TestApi::start().await;
    let digits = format!("0.{}", "1".repeat(16_000));
    let body = format!(
        r#"{{"message": "m", "ratio": {digits}, "metadata": {{"big": 123456789012345678901234567890}}}}"#
    );
    let answer = fixture
        .post("/api/v1/logs/write", Some("application/json"), body)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let entries = fixture.entries().await;
    assert_eq!(
        entries[0].1.logs[0].log_data.as_ref().unwrap().as_json(),
        format!(r#"{{"big":123456789012345678901234567890,"ratio":{digits}}}"#)
    );
    for tiny in [
        r#"{"message": "m", "tiny": 1e-2000000000}"#,
        r#"{"log_entries": [{"message": "m", "metadata": {"tiny": 1e-2000000000}}]}"#,
    ] {
        let path = if tiny.contains("log_entries") {
            "/api/v1/logs/batch"
        } else {
            "/api/v1/logs/write"
        };
        let answer = fixture.post(path, Some("application/json"), tiny).await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path}: {}",
            answer.text
        );
        assert!(answer.text.contains("log_data"), "{}", answer.text);
    }
    assert_eq!(fixture.entries().await.len(), 1);
}

/// Entry ids order numerically (`<ms>-<seq>`).
fn compare_ids(a: &str, b: &str) -> std::cmp::Ordering {
    let parse = |id: &str| {
        let (ms, seq) = id.split_once('-').unwrap();
        (ms.parse::<u64>().unwrap(), seq.parse::<u64>().unwrap())
    };
    parse(a).cmp(&parse(b))
}

/// A full shard refuses its own devices' logs, while the others still take theirs; an
/// idempotency key replays on its device's shard.
#[tokio::test]
async fn capacity_and_idempotency_hold_per_shard() {
    let fixture = TestApi::start_with(Options {
        capacity: 2,
        shards: 3,
        ..Options::default()
    })
    .await;
    let shards = Shards::new(common::STREAM, 3);
    let device_on = |shard: usize| {
        (0..)
            .map(|i| format!("pump-{i}"))
            .find(|device| shards.of("default", device) == shard)
            .unwrap()
    };
    let (full, other) = (device_on(1), device_on(2));
    let keyed = |key: &str, device: &str| {
        axum::http::Request::post("/api/log")
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", key)
            .body(axum::body::Body::from(a_log(device).to_string()))
            .unwrap()
    };
    let first = fixture.send(keyed("k-1", &full)).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(
        fixture.post_json("/api/log", &a_log(&full)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        fixture.post_json("/api/log", &a_log(&full)).await.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "shard 1 holds its capacity"
    );
    let replay = fixture.send(keyed("k-1", &full)).await;
    assert_eq!(replay.status, StatusCode::OK, "{}", replay.text);
    assert_eq!(replay.body["status"], "duplicate");
    assert_eq!(replay.body["message_id"], first.body["message_id"]);
    assert_eq!(
        fixture.post_json("/api/log", &a_log(&other)).await.status,
        StatusCode::OK
    );
    assert_eq!(fixture.entries_of(&shards.keys()[1]).await.len(), 2);
    assert_eq!(fixture.entries_of(&shards.keys()[2]).await.len(), 1);
}

#[tokio::test]
async fn bad_input_gets_the_right_status_and_a_clear_error() {
    let fixture = TestApi::start().await;
    let long_id = "d".repeat(51);
    let too_many: Vec<Value> = (0..1001).map(|_| a_log("d")).collect();
    let cases: Vec<Refused> = vec![
        (
            "/api/log",
            Some("application/json"),
            "{\"device_id\": ".into(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "EOF",
        ),
        (
            "/api/log",
            Some("application/json"),
            "not json".into(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
            "expected",
        ),
        (
            "/api/log",
            Some("text/plain"),
            a_log("d").to_string(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "application/json",
        ),
        (
            "/api/log",
            None,
            a_log("d").to_string(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "application/json",
        ),
        (
            "/api/log",
            Some("application/json"),
            json!({"device_id": "d", "log_level": "LOUD", "message": "m"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_log",
            "log_level: unknown variant `LOUD`",
        ),
        (
            "/api/log",
            Some("application/json"),
            json!({"device_id": "", "log_level": "INFO", "message": "m"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_log",
            "device_id: device_id must be 1 to 50 characters",
        ),
        (
            "/api/log",
            Some("application/json"),
            json!({"device_id": long_id, "log_level": "INFO", "message": "m"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_log",
            "device_id must be 1 to 50",
        ),
        (
            "/api/log",
            Some("application/json"),
            json!({"device_id": "d", "log_level": "INFO"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_log",
            "missing field `message`",
        ),
        (
            "/api/log",
            Some("application/json"),
            json!({"device_id": "d", "log_level": "INFO", "message": "m", "log_data": [1]})
                .to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_log",
            "log_data must be a JSON object",
        ),
        (
            "/api/log",
            Some("application/json"),
            // As deep as the hostile-input probe sent: PostgreSQL's jsonb parser cannot
            // store it ("stack depth limit exceeded").
            format!(
                r#"{{"device_id":"d","log_level":"INFO","message":"m","log_data":{{"a":{}{}}}}}"#,
                "[".repeat(20_000),
                "]".repeat(20_000)
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_log",
            "log_data: log_data must not nest objects and arrays more than 64 levels deep",
        ),
        (
            "/api/log",
            Some("application/json"),
            "[1, 2]".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_log",
            "invalid type",
        ),
        (
            "/api/logs/batch",
            Some("application/json"),
            json!({"logs": []}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_log",
            "must hold 1 to 1000 logs, got 0",
        ),
        (
            "/api/logs/batch",
            Some("application/json"),
            json!({"logs": too_many}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_log",
            "must hold 1 to 1000 logs, got 1001",
        ),
        (
            "/api/logs/batch",
            Some("application/json"),
            json!({"logs": [a_log("d"), {"device_id": "d", "log_level": "INFO", "message": ""}]})
                .to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_log",
            "logs[1].message: message must be 1 to 5000",
        ),
        (
            "/api/logs/batch",
            Some("application/json"),
            json!({"logs": "not a list"}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_log",
            "logs: invalid type: string",
        ),
        (
            "/api/logs/batch",
            Some("application/json"),
            json!({"entries": []}).to_string(),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_log",
            "missing field `logs`",
        ),
        (
            "/api/log",
            Some("application/json"),
            format!(
                "{{\"device_id\":\"d\",\"log_level\":\"INFO\",\"message\":\"{}\"}}",
                "x".repeat(1_100_000)
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "1048576 bytes",
        ),
    ];
    for (path, content_type, body, status, code, detail) in cases {
        let answer = fixture.post(path, content_type, body.clone()).await;
        let (got, answer) = (answer.status, answer.body);
        let shown = &body[..body.len().min(80)];
        assert_eq!(got, status, "{path} {shown}: {answer}");
        assert_eq!(answer["error"], code, "{path} {shown}: {answer}");
        let text = answer["detail"].as_str().unwrap();
        assert!(
            text.contains(detail),
            "{path} {shown}: {text:?} lacks {detail:?}"
        );
    }
    assert!(
        fixture.entries().await.is_empty(),
        "a refused request reached the stream"
    );
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let fixture = TestApi::start().await;
    let answer = fixture.post_json("/api/nothing", &json!({})).await;
    let (status, body) = (answer.status, answer.body);
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let answer = fixture.get("/api/log").await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(answer.body["error"], "method_not_allowed");
}

#[tokio::test]
async fn a_full_stream_answers_503_with_retry_after() {
    let fixture = TestApi::start_with(Options {
        capacity: 3,
        ..Options::default()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            fixture.post_json("/api/log", &a_log("d")).await.status,
            StatusCode::OK
        );
    }
    let answer = fixture
        .post("/api/log", Some("application/json"), a_log("d").to_string())
        .await;
    let (status, body) = (answer.status, answer.body);
    let retry_after = answer
        .headers
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"], "backpressure");
    assert_eq!(retry_after.as_deref(), Some("1"));
    let batch = json!({"logs": [a_log("d")]});
    assert_eq!(
        fixture.post_json("/api/logs/batch", &batch).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        fixture.entries().await.len(),
        3,
        "the stream holds exactly its capacity"
    );
}

#[tokio::test]
async fn redis_down_answers_503_and_recovers() {
    let mut fixture = TestApi::start().await;
    fixture.redis.stop().unwrap();
    // The first call may go out on the connection Redis closed as it stopped: for all the
    // api can tell, Redis may have run it, so it says the outcome is unknown. Once it has
    // found the connection closed and Redis refusing new ones, it refuses for certain.
    let mut errors = Vec::new();
    for _ in 0..3 {
        let answer = fixture
            .post("/api/log", Some("application/json"), a_log("d").to_string())
            .await;
        let retry_after = answer
            .headers
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(retry_after.as_deref(), Some("1"), "{}", answer.text);
        let error = answer.body["error"].as_str().unwrap().to_owned();
        let expected = match error.as_str() {
            "queue_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            "outcome_unknown" => StatusCode::GATEWAY_TIMEOUT,
            _ => panic!("{}", answer.text),
        };
        assert_eq!(answer.status, expected, "{}", answer.text);
        errors.push(error);
    }
    assert_eq!(
        errors.last().map(String::as_str),
        Some("queue_unavailable"),
        "{errors:?}"
    );
    fixture.redis.start_again().unwrap();
    let fixture = &fixture;
    eventually("the api reconnects to Redis", Duration::from_secs(10), || async move {
        Ok(fixture.post_json("/api/log", &a_log("d")).await.status == StatusCode::OK)
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn accepted_logs_are_counted_by_level() {
    let fixture = TestApi::start().await;
    fixture.post_json("/api/log", &a_log("d")).await;
    let batch =
        json!({"logs": [a_log("d"), {"device_id": "d", "log_level": "ERROR", "message": "m"}]});
    fixture.post_json("/api/logs/batch", &batch).await;
    fixture
        .post_json("/api/log", &json!({"device_id": "d"}))
        .await;
    let text = fixture.get("/metrics").await.text;
    for (endpoint, level, count) in [
        ("log", "WARNING", 1),
        ("batch", "WARNING", 1),
        ("batch", "ERROR", 1),
        ("log", "ERROR", 0),
    ] {
        let series = format!(
            "logpipeline_api_logs_accepted_total{{endpoint=\"{endpoint}\",level=\"{level}\"}} {count}\n"
        );
        assert!(text.contains(&series), "{series} in {text}");
    }
    assert!(
        text.contains("logpipeline_api_requests_rejected_total{reason=\"invalid_log\"} 1"),
        "{text}"
    );
    assert!(text.contains("logpipeline_api_http_requests_total{method=\"POST\",route=\"/api/logs/batch\",status=\"200\"} 1"), "{text}");
}

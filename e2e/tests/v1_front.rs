//! System B's seed-compatible front, on the real binaries: `/api/v1` answers in the
//! seed's shapes, the concurrent test is off unless turned on, reads by trace and by
//! service are never stale, and a deployment configured with the seed's settings starts
//! and works.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::time::Duration;

use logpipeline_client::{Client, Level, Log};
use logpipeline_e2e::client::quick;
use logpipeline_e2e::runs::{count_query, run_id};
use logpipeline_e2e::stack::{Stack, wait_for_count};
use logpipeline_local::services::{ApiProcess, Env, WorkerProcess};
use serde_json::{Value, json};

async fn post(client: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    let answer = client.post(url).json(&body).send().await.unwrap();
    let status = answer.status().as_u16();
    (status, answer.json().await.unwrap())
}

#[tokio::test]
async fn the_v1_front_answers_in_the_seeds_shapes() {
    let stack = Stack::builder()
        .api()
        .workers(1)
        .api_env("LOGPIPELINE_CONCURRENT_TEST", "true")
        .api_env("LOGPIPELINE_CONCURRENT_TEST_MAX_COUNT", 200)
        .api_env("LOGPIPELINE_CONCURRENT_TEST_MAX_WORKERS", 8)
        .start()
        .unwrap();
    let base = stack.api_url().unwrap();
    let http = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let run = run_id("seed-shapes");

    // The seed client's call, with a keyword argument beside the metadata.
    let (status, body) = post(
        &http,
        format!("{base}/api/v1/logs/write"),
        json!({"message": "FastAPI异步测试日志", "service_name": "test-service", "level": "INFO",
               "trace_id": "trace-001", "span_id": "span-1", "adv_id": 1234567,
               "metadata": {"user_id": "user123", "run": run}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["error_message"], "");
    assert!(!body["log_id"].as_str().unwrap().is_empty(), "{body}");

    let (status, body) = post(
        &http,
        format!("{base}/api/v1/logs/write"),
        json!({"message": ""}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["success"], false);
    assert!(
        body["error_message"].as_str().unwrap().contains("message"),
        "{body}"
    );

    let batch = json!({"log_entries": [
        {"message": "one", "service_name": "batch-service", "level": "warning", "metadata": {"run": run}},
        {"message": "", "service_name": "batch-service"},
        {"message": "three", "service_name": "batch-service", "level": "ERROR", "metadata": {"run": run}},
    ]});
    let send_batch = || {
        http.post(format!("{base}/api/v1/logs/batch"))
            .header("Idempotency-Key", format!("{run}-batch"))
            .json(&batch)
            .send()
    };
    let answer = send_batch().await.unwrap();
    let status = answer.status().as_u16();
    let body: Value = answer.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            &body["success"],
            &body["total_count"],
            &body["success_count"],
            &body["error_count"]
        ),
        (&json!(false), &json!(3), &json!(2), &json!(1)),
        "{body}"
    );
    assert_eq!(body["results"][1]["success"], false);
    assert!(
        body["results"][1]["error_message"]
            .as_str()
            .unwrap()
            .contains("log_entries[1].message"),
        "{body}"
    );
    assert_eq!(body["duplicate"], false, "{body}");
    // The same batch again, with its key: a duplicate, and every accepted result says so.
    let again: Value = send_batch().await.unwrap().json().await.unwrap();
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(again["results"][0]["duplicate"], true, "{again}");
    assert_eq!(again["results"][2]["duplicate"], true, "{again}");
    assert_eq!(again["results"][0]["log_id"], body["results"][0]["log_id"]);

    let health: Value = http
        .get(format!("{base}/api/v1/logs/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(health["grpc_connection"], true, "{health}");
    assert_eq!(health["service_info"]["max_batch_size"], 1000, "{health}");

    let about: Value = http
        .get(format!("{base}/"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(about["links"]["v1_write"], "/api/v1/logs/write", "{about}");

    let (status, body) = post(
        &http,
        format!("{base}/api/v1/logs/concurrent-test"),
        json!({"count": 100, "max_workers": 8}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (&body["total_count"], &body["success_count"]),
        (&json!(100), &json!(100)),
        "{body}"
    );
    let (status, body) = post(
        &http,
        format!("{base}/api/v1/logs/concurrent-test"),
        json!({"count": 201, "max_workers": 8}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["success"], false);

    let pool = stack.pool().await.unwrap();
    wait_for_count(&pool, &count_query(&run), 3, Duration::from_secs(60))
        .await
        .unwrap();
    let stored: (
        String,
        String,
        String,
        Option<String>,
        Option<String>,
        Value,
    ) = sqlx::query_as(
        "select device_id, log_level, service_name, trace_id, span_id, log_data from logs \
         where log_data->>'run' = $1 and service_name = 'test-service'",
    )
    .bind(&run)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (
            &stored.0[..],
            &stored.1[..],
            &stored.2[..],
            stored.3.as_deref(),
            stored.4.as_deref()
        ),
        (
            "test-service",
            "INFO",
            "test-service",
            Some("trace-001"),
            Some("span-1")
        )
    );
    assert_eq!(
        (&stored.5["adv_id"], &stored.5["user_id"]),
        (&json!(1234567), &json!("user123"))
    );
    let levels: Vec<String> = sqlx::query_scalar(
        "select log_level from logs where log_data->>'run' = $1 and service_name = 'batch-service' order by log_level",
    )
    .bind(&run)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(levels, ["ERROR", "WARNING"]);

    // The trace's logs across services, through the never-stale query.
    let trace: Value = http
        .get(format!("{base}/api/traces/trace-001/logs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(trace["data"][0]["service_name"], "test-service", "{trace}");
}

async fn get(client: &reqwest::Client, url: String) -> Value {
    let answer = client.get(url).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    answer.json().await.unwrap()
}

/// The messages of a page of logs, newest first.
fn messages(page: &Value) -> Vec<&str> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|log| log["message"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn a_trace_is_read_across_services_and_a_service_by_level_and_neither_is_stale() {
    let stack = Stack::builder().api().workers(1).start().unwrap();
    let api = stack.api.as_ref().unwrap();
    let base = stack.api_url().unwrap();
    let http = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let client = quick(Client::grpc(api.grpc_url()));
    let trace = run_id("trace");
    let checkout = run_id("checkout");
    let written = [
        (&checkout, Level::Info, "cart read"),
        (&checkout, Level::Error, "payment refused"),
        (&run_id("payments"), Level::Error, "card declined"),
    ];
    for (service, level, message) in written {
        client
            .write_log(
                Log::new(message)
                    .service(service.as_str())
                    .level(level)
                    .trace(trace.as_str(), "span"),
            )
            .await
            .unwrap();
    }
    client
        .write_log(Log::new("another trace").service(checkout.as_str()))
        .await
        .unwrap();
    let pool = stack.pool().await.unwrap();
    let stored = format!(
        "select count(*) from logs where service_name = '{checkout}' or trace_id = '{trace}'"
    );
    wait_for_count(&pool, &stored, 4, Duration::from_secs(60))
        .await
        .unwrap();
    // The worker retires the cached reads of what it stored before it acknowledges the
    // entries, after the commit: once the stream is drained, no retirement of these
    // logs can come after the first read and empty the cache the next one expects.
    stack
        .wait_until_drained(Duration::from_secs(60))
        .await
        .unwrap();

    let traced = format!("{base}/api/traces/{trace}/logs");
    let first = get(&http, traced.clone()).await;
    let mut seen = messages(&first);
    seen.sort_unstable();
    assert_eq!(
        seen,
        ["card declined", "cart read", "payment refused"],
        "{first}"
    );
    assert_eq!(get(&http, traced.clone()).await["source"], "cache");
    let errors = format!("{base}/api/services/{checkout}/logs?level=ERROR");
    assert_eq!(
        messages(&get(&http, errors.clone()).await),
        ["payment refused"]
    );
    assert_eq!(get(&http, errors.clone()).await["source"], "cache");

    // A new log of the trace and of the service: the cached pages retire when the
    // worker commits it, and the next reads see it.
    client
        .write_log(
            Log::new("refund issued")
                .service(checkout.as_str())
                .level(Level::Error)
                .trace(trace.as_str(), "span-2"),
        )
        .await
        .unwrap();
    wait_for_count(&pool, &stored, 5, Duration::from_secs(60))
        .await
        .unwrap();
    let fresh = get(&http, traced).await;
    assert_eq!(fresh["data"].as_array().unwrap().len(), 4, "{fresh}");
    assert_eq!(messages(&fresh)[0], "refund issued", "{fresh}");
    assert_eq!(
        messages(&get(&http, errors).await),
        ["refund issued", "payment refused"]
    );
}

#[tokio::test]
async fn the_concurrent_test_is_off_unless_turned_on() {
    let stack = Stack::builder().api().start().unwrap();
    let (status, body) = post(
        &logpipeline_e2e::http_client(|builder| builder).unwrap(),
        format!("{}/api/v1/logs/concurrent-test", stack.api_url().unwrap()),
        json!({"count": 10, "max_workers": 2}),
    )
    .await;
    assert_eq!(
        (status, &body["error"]),
        (404, &json!("disabled")),
        "{body}"
    );
}

#[tokio::test]
async fn a_deployment_configured_the_seeds_way_starts_and_works() {
    let stack = Stack::builder().start().unwrap();
    let database = stack.database_url().rsplit('/').next().unwrap().to_owned();
    let postgres_port = stack
        .database_url()
        .rsplit(':')
        .next()
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let seed = Env::from([
        ("REDIS_HOST".into(), "127.0.0.1".into()),
        ("REDIS_PORT".into(), stack.redis.port().to_string()),
        ("POSTGRES_HOST".into(), "127.0.0.1".into()),
        ("POSTGRES_PORT".into(), postgres_port),
        ("POSTGRES_USER".into(), "postgres".into()),
        ("POSTGRES_PASSWORD".into(), "logpass".into()),
        ("POSTGRES_DB".into(), database),
    ]);
    // The harness drops REDIS_URL and DATABASE_URL when the seed's settings are given.
    let api = ApiProcess::start(&stack.redis.url(), stack.database_url(), &seed).unwrap();
    let _worker = WorkerProcess::start(&stack.redis.url(), stack.database_url(), &seed).unwrap();
    let run = run_id("seed-config");
    let client = quick(Client::grpc(api.grpc_url()));
    client
        .write_log(
            Log::new("configured like the seed")
                .level(Level::Warning)
                .field("run", &run),
        )
        .await
        .unwrap();
    let pool = stack.pool().await.unwrap();
    wait_for_count(&pool, &count_query(&run), 1, Duration::from_secs(60))
        .await
        .unwrap();
    let (device, service): (String, String) =
        sqlx::query_as("select device_id, service_name from logs where log_data->>'run' = $1")
            .bind(&run)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (device.as_str(), service.as_str()),
        ("unknown_service", "unknown_service")
    );
}

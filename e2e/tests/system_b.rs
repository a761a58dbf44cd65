//! System B, end to end on the real binaries: the gRPC service and the `/api/v1` front,
//! `logpipeline-client` and its batching handle through an api crash, retries after a
//! lost answer, bad gRPC input, and a deployment configured the seed's way.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use logpipeline_client::{Batcher, BatcherSettings, Client, ClientBuilder, Level, Log};
use logpipeline_e2e::stack::{Stack, eventually, wait_for_count};
use logpipeline_local::services::{ApiProcess, Env, WorkerProcess, http_get, metric_value};
use logpipeline_proto::v1::log_service_client::LogServiceClient;
use logpipeline_proto::v1::{BatchWriteLogsRequest, WriteLogRequest};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_types::StatusExt;

/// A client that retries quickly, as the tests cannot wait for production backoffs.
fn quick(builder: ClientBuilder) -> Client {
    logpipeline_e2e::install_tls_provider();
    builder
        .timeout(Duration::from_secs(5))
        .retries(30, Duration::from_millis(50), Duration::from_millis(500))
        .build()
        .unwrap()
}

fn run_id(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

fn count_query(run: &str) -> String {
    format!("select count(*) from logs where log_data->>'run' = '{run}'")
}

/// Rows of run `run`, and distinct values of their `seq` field.
async fn rows_and_distinct(pool: &PgPool, run: &str) -> (i64, i64) {
    sqlx::query_as(
        "select count(*), count(distinct log_data->>'seq') from logs where log_data->>'run' = $1",
    )
    .bind(run)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batching_handle_stores_every_log_once_through_an_api_crash() {
    let mut stack = Stack::builder()
        .api()
        .workers(1)
        .api_env("LOGPIPELINE_STREAM_CAPACITY", 1_000_000)
        .start()
        .unwrap();
    let api = stack.api.as_ref().unwrap();
    let settings = BatcherSettings {
        batch_size: 500,
        interval: Duration::from_millis(200),
        capacity: 5_000,
    };
    let grpc = Batcher::spawn(quick(Client::grpc(api.grpc_url())), settings.clone());
    let http = Batcher::spawn(quick(Client::http(api.url())), settings);
    let run = run_id("batcher");
    const HALF: u64 = 50_000;
    let sent = Arc::new(AtomicUsize::new(0));
    let send_half = |batcher: Batcher, first: u64, service: &'static str| {
        let run = run.clone();
        let sent = sent.clone();
        tokio::spawn(async move {
            for seq in first..first + HALF {
                let log = Log::new(format!("log {seq}"))
                    .service(service)
                    .field("run", &run)
                    .field("seq", seq);
                batcher.send(log).await;
                sent.fetch_add(1, Ordering::Relaxed);
            }
            batcher.shutdown().await
        })
    };
    let grpc = send_half(grpc, 0, "over-grpc");
    let http = send_half(http, HALF, "over-http");

    // A crash mid-run: requests in flight get no answer, and the next ones find nothing
    // listening until the api is back on the same ports.
    while sent.load(Ordering::Relaxed) < 40_000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let sent_at_crash = sent.load(Ordering::Relaxed);
    tokio::task::block_in_place(|| stack.kill_and_restart_api()).unwrap();

    for (name, task) in [("gRPC", grpc), ("HTTP", http)] {
        let report = task.await.unwrap();
        assert!(
            report.refused.is_empty(),
            "{name}: {:?}",
            report.refused.first()
        );
        assert_eq!(report.accepted, HALF, "{name}");
    }
    let pool = stack.pool().await.unwrap();
    wait_for_count(&pool, &count_query(&run), 100_000, Duration::from_secs(180))
        .await
        .unwrap();
    assert_eq!(rows_and_distinct(&pool, &run).await, (100_000, 100_000));
    let services: Vec<(String, i64)> = sqlx::query_as(
        "select service_name, count(*) from logs where log_data->>'run' = $1 group by 1 order by 1",
    )
    .bind(&run)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        services,
        [
            ("over-grpc".to_owned(), 50_000),
            ("over-http".to_owned(), 50_000)
        ]
    );
    println!("api SIGKILLed after {sent_at_crash} logs were handed over; 100,000 stored once");
}

/// A TCP proxy in front of the api that loses the answer of the first request it
/// carries: the request reaches the api, and the client sees its connection close
/// instead of an answer. Later connections pass through.
struct AnswerLosingProxy {
    port: u16,
    lost: Arc<AtomicUsize>,
}

impl AnswerLosingProxy {
    /// `http2`: the answer starts at the first HEADERS frame (the server's SETTINGS and
    /// acknowledgements before it pass); otherwise at the first byte.
    async fn start(upstream: u16, http2: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicBool::new(true));
        let lost = Arc::new(AtomicUsize::new(0));
        let counter = lost.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                    continue;
                };
                let drop_answer = armed.swap(false, Ordering::SeqCst);
                let counter = counter.clone();
                tokio::spawn(async move {
                    if relay(client, server, drop_answer, http2).await {
                        counter.fetch_add(1, Ordering::SeqCst);
                    }
                });
            }
        });
        Self { port, lost }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Relays one connection; returns whether it cut off an answer.
async fn relay(client: TcpStream, server: TcpStream, drop_answer: bool, http2: bool) -> bool {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let upward = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
    });
    let mut pending = Vec::new();
    let mut buffer = [0_u8; 16 * 1024];
    let cut = loop {
        let Ok(read) = server_read.read(&mut buffer).await else {
            break false;
        };
        if read == 0 {
            break false;
        }
        if !drop_answer {
            if client_write.write_all(&buffer[..read]).await.is_err() {
                break false;
            }
            continue;
        }
        if !http2 {
            break true;
        }
        // Pass whole frames until the first HEADERS frame.
        pending.extend_from_slice(&buffer[..read]);
        let mut forwarded = 0;
        let mut headers = false;
        while pending.len() - forwarded >= 9 {
            let frame = &pending[forwarded..];
            let length =
                usize::from(frame[0]) << 16 | usize::from(frame[1]) << 8 | usize::from(frame[2]);
            if frame[3] == 1 {
                headers = true;
                break;
            }
            if frame.len() < 9 + length {
                break;
            }
            forwarded += 9 + length;
        }
        if client_write.write_all(&pending[..forwarded]).await.is_err() {
            break false;
        }
        pending.drain(..forwarded);
        if headers {
            break true;
        }
    };
    upward.abort();
    cut
}

#[tokio::test]
async fn a_retry_after_a_lost_answer_stores_nothing_twice() {
    let stack = Stack::builder().api().workers(1).start().unwrap();
    let api = stack.api.as_ref().unwrap();
    let pool = stack.pool().await.unwrap();

    // HTTP: one log through /api/v1/logs/write.
    let proxy = AnswerLosingProxy::start(api.port(), false).await;
    let run = run_id("lost-http");
    let client = quick(Client::http(proxy.url()));
    let written = client
        .write_log(
            Log::new("once")
                .service("lost-answers")
                .field("run", &run)
                .field("seq", 0),
        )
        .await
        .unwrap();
    assert_eq!(proxy.lost.load(Ordering::SeqCst), 1, "no answer was lost");
    assert!(
        written.duplicate,
        "the retry was not recognised: {written:?}"
    );

    // gRPC: a batch of ten through BatchWriteLogs.
    let proxy = AnswerLosingProxy::start(api.grpc_port(), true).await;
    let grpc_run = run_id("lost-grpc");
    let client = quick(Client::grpc(proxy.url()));
    let logs = (0..10)
        .map(|seq| {
            Log::new("ten")
                .service("lost-answers")
                .field("run", &grpc_run)
                .field("seq", seq)
        })
        .collect();
    let written = client.batch_write_logs(logs).await.unwrap();
    assert_eq!(proxy.lost.load(Ordering::SeqCst), 1, "no answer was lost");
    assert!(
        written.duplicate,
        "the retry was not recognised: {written:?}"
    );
    assert_eq!(written.success_count, 10);

    for (run, expected) in [(&run, 1), (&grpc_run, 10)] {
        wait_for_count(&pool, &count_query(run), expected, Duration::from_secs(60))
            .await
            .unwrap();
    }
    // A duplicate would be a second stream entry: once the workers have acknowledged
    // every entry, count again.
    stack
        .wait_until_drained(Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(rows_and_distinct(&pool, &run).await, (1, 1));
    assert_eq!(rows_and_distinct(&pool, &grpc_run).await, (10, 10));
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_follows_redis_reflection_lists_the_services_and_refusals_say_when_to_retry() {
    let mut stack = Stack::builder()
        .api()
        .api_env("LOGPIPELINE_STREAM_CAPACITY", 5)
        .start()
        .unwrap();
    let grpc_url = stack.api.as_ref().unwrap().grpc_url();
    let channel = tonic::transport::Channel::from_shared(grpc_url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel.clone());
    let status = |mut health: HealthClient<tonic::transport::Channel>| async move {
        let request = HealthCheckRequest {
            service: "logpipeline.v1.LogService".into(),
        };
        Ok::<_, anyhow::Error>(health.check(request).await?.into_inner().status)
    };
    assert_eq!(
        status(health.clone()).await.unwrap(),
        ServingStatus::Serving as i32
    );

    let mut reflection = ServerReflectionClient::new(channel);
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(futures::stream::iter([list]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(services)) = answer.message_response else {
        panic!("{answer:?}");
    };
    let names: Vec<String> = services.service.into_iter().map(|s| s.name).collect();
    for service in [
        "logpipeline.v1.LogService",
        "opentelemetry.proto.collector.logs.v1.LogsService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|name| name == service), "{names:?}");
    }

    // A full stream refuses with RESOURCE_EXHAUSTED and a delay to retry after.
    let mut grpc = LogServiceClient::connect(grpc_url.clone()).await.unwrap();
    let run = run_id("full");
    let log = |message: &str| WriteLogRequest {
        message: message.into(),
        service_name: "svc".into(),
        metadata: [("run".to_owned(), run.clone())].into(),
        ..WriteLogRequest::default()
    };
    for seq in 0..5 {
        grpc.write_log(log(&format!("log {seq}"))).await.unwrap();
    }
    let refused = grpc.write_log(log("refused")).await.unwrap_err();
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(
        refused
            .get_details_retry_info()
            .and_then(|info| info.retry_delay)
            .is_some(),
        "{refused:?}"
    );

    // The client waits as asked and retries until a worker makes room: stored once.
    let client = quick(Client::grpc(grpc_url.clone()));
    let waiting = Log::new("after room").service("svc").field("run", &run);
    let write = tokio::spawn(async move { client.write_log(waiting).await });
    let api_port = stack.api.as_ref().unwrap().port();
    let refusals = move || {
        let metrics = http_get(api_port, "/metrics").unwrap_or_default();
        metric_value(
            &metrics,
            r#"logpipeline_api_grpc_requests_total{code="RESOURCE_EXHAUSTED",method="WriteLog"}"#,
        )
        .unwrap_or(0.0)
    };
    // Refused once above; the client is refused again and goes on waiting.
    eventually("the client retries", Duration::from_secs(30), || async {
        Ok(refusals() >= 3.0)
    })
    .await
    .unwrap();
    assert!(!write.is_finished(), "the stream is still full");
    tokio::task::block_in_place(|| stack.start_worker(&Env::new())).unwrap();
    write.await.unwrap().unwrap();
    let pool = stack.pool().await.unwrap();
    wait_for_count(&pool, &count_query(&run), 6, Duration::from_secs(60))
        .await
        .unwrap();
    let stored: i64 = sqlx::query_scalar(
        "select count(*) from logs where log_data->>'run' = $1 and message = 'after room'",
    )
    .bind(&run)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(stored, 1);

    // Redis goes: health says NOT_SERVING, and a write is UNAVAILABLE with a delay.
    stack.redis.stop().unwrap();
    eventually("health follows Redis", Duration::from_secs(30), || {
        let health = health.clone();
        async move { Ok(status(health).await? == ServingStatus::NotServing as i32) }
    })
    .await
    .unwrap();
    let refused = grpc.write_log(log("no redis")).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.get_details_retry_info().is_some(), "{refused:?}");
}

#[tokio::test]
async fn bad_grpc_input_is_invalid_argument_naming_the_field() {
    let stack = Stack::builder().api().start().unwrap();
    let api = stack.api.as_ref().unwrap();
    let mut grpc = LogServiceClient::connect(api.grpc_url()).await.unwrap();
    let log = |message: &str| WriteLogRequest {
        message: message.into(),
        service_name: "svc".into(),
        level: "INFO".into(),
        ..WriteLogRequest::default()
    };
    let cases = [
        ("message", log("")),
        ("message", log(&"x".repeat(5001))),
        ("message", log("nul \0 inside")),
        (
            "service_name",
            WriteLogRequest {
                service_name: "s".repeat(101),
                ..log("m")
            },
        ),
        (
            "level",
            WriteLogRequest {
                level: "LOUD".into(),
                ..log("m")
            },
        ),
        (
            "trace_id",
            WriteLogRequest {
                trace_id: "has space".into(),
                ..log("m")
            },
        ),
        (
            "span_id",
            WriteLogRequest {
                span_id: "x".repeat(65),
                ..log("m")
            },
        ),
        (
            "device_id",
            WriteLogRequest {
                device_id: "  ".into(),
                ..log("m")
            },
        ),
        (
            "idempotency_key",
            WriteLogRequest {
                idempotency_key: "é".into(),
                ..log("m")
            },
        ),
    ];
    for (field, request) in cases {
        let status = grpc.write_log(request).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{field}: {status:?}"
        );
        assert!(
            status.message().contains(field),
            "{field}: {}",
            status.message()
        );
    }
    let status = grpc
        .batch_write_logs(BatchWriteLogsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("entries"), "{}", status.message());

    // A batch with one bad entry: the others are accepted, the bad one is named.
    let answer = grpc
        .batch_write_logs(BatchWriteLogsRequest {
            entries: vec![log("good"), log(""), log("good too")],
            idempotency_key: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((answer.success_count, answer.error_count), (2, 1));
    assert!(
        answer.results[1]
            .error_message
            .contains("entries[1].message"),
        "{answer:?}"
    );

    // Garbage on the wire is a protocol error, never an internal one.
    let mut raw = TcpStream::connect(("127.0.0.1", api.grpc_port()))
        .await
        .unwrap();
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\xff\xff\xff\xff\xff\xff\xff\xff\xff")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut sink)).await;
    let still = grpc
        .write_log(log("after garbage"))
        .await
        .unwrap()
        .into_inner();
    assert!(still.success);
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

//! The gRPC service (`logpipeline.v1.LogService`), on the real binary: health follows
//! Redis, reflection lists the services, refusals say when to retry, and bad input is
//! INVALID_ARGUMENT naming the field.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::time::Duration;

use logpipeline_client::{Client, Log};
use logpipeline_e2e::client::quick;
use logpipeline_e2e::runs::{count_query, run_id};
use logpipeline_e2e::stack::{Stack, eventually, wait_for_count};
use logpipeline_local::services::{Env, http_get, metric_value};
use logpipeline_proto::v1::log_service_client::LogServiceClient;
use logpipeline_proto::v1::{BatchWriteLogsRequest, WriteLogRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_types::StatusExt;

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

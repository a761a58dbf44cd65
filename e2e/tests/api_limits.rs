//! The api's limit on request bodies, on the real binary: an oversized body is refused
//! with 413 before it is read whole, also to a client that sends all of it before
//! reading, and the largest batch the field rules allow fits the default limit.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use futures::StreamExt;
use logpipeline_e2e::stack::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_refused_before_it_is_read_whole() {
    let stack = Stack::builder()
        .api()
        .api_env("LOGPIPELINE_MAX_BODY_BYTES", 1 << 20)
        .start()
        .unwrap();
    // Announces 100 MiB, sends 2 MiB, then never sends the rest.
    let chunk = bytes::Bytes::from(vec![b' '; 64 * 1024]);
    let body = futures::stream::iter((0..32).map(move |_| Ok::<_, std::io::Error>(chunk.clone())))
        .chain(futures::stream::pending());
    let response = tokio::time::timeout(
        Duration::from_secs(20),
        logpipeline_e2e::http_client(|builder| builder)
            .unwrap()
            .post(format!("{}/api/logs/batch", stack.api_url().unwrap()))
            .header("content-type", "application/json")
            .header("content-length", (100u64 << 20).to_string())
            .body(reqwest::Body::wrap_stream(body))
            .send(),
    )
    .await
    .expect("the api waited for the whole body")
    .unwrap();
    assert_eq!(response.status(), 413);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "payload_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_its_whole_body_before_reading_gets_the_413() {
    let stack = Stack::builder()
        .api()
        .api_env("LOGPIPELINE_MAX_BODY_BYTES", 1 << 20)
        .start()
        .unwrap();
    let address = format!("127.0.0.1:{}", stack.api.as_ref().unwrap().port());
    // A simple client: the whole request out, then the answer in. Closed at once, the
    // api's side would answer the rest of the body with a reset, losing the 413.
    let answer = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let body = 64usize << 20;
        let mut stream = TcpStream::connect(address)?;
        write!(
            stream,
            "POST /api/logs/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: {body}\r\n\r\n"
        )?;
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..body / chunk.len() {
            stream.write_all(&chunk)?;
        }
        let mut answer = String::new();
        stream.read_to_string(&mut answer)?;
        Ok(answer)
    })
    .await
    .unwrap()
    .expect("the connection was reset");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("payload_too_large"), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_largest_batch_the_field_rules_allow_fits_the_default_body_limit() {
    let stack = Stack::builder().api().start().unwrap();
    // 1,000 logs of 5,000 three-byte characters: about 15 MB of JSON.
    let log = serde_json::json!({
        "device_id": "日".repeat(50),
        "log_level": "INFO",
        "message": "日".repeat(5000),
    });
    let batch = serde_json::json!({ "logs": vec![log; 1000] });
    let response = logpipeline_e2e::http_client(|builder| builder)
        .unwrap()
        .post(format!("{}/api/logs/batch", stack.api_url().unwrap()))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

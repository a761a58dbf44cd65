//! No client can take the api's memory or its connections with bodies: bodies that
//! trickle are answered 408 after their grace, large bodies at once share one memory
//! budget (503 beyond it), gzip bombs are refused, and through all of it a well-behaved
//! device is answered and its logs are stored. On the real binaries.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::time::{Duration, Instant};

use logpipeline_e2e::stack::{Stack, eventually, wait_for_count, wait_for_schema};
use logpipeline_local::services::http_status;
use reqwest::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The api's peak resident memory so far (`VmHWM`), in MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024.0
}

/// A device that behaves: one log, answered and stored. Returns how long the answer took.
async fn well_behaved(client: &reqwest::Client, base: &str, message: &str) -> Duration {
    let started = Instant::now();
    let answer = client
        .post(format!("{base}/api/log"))
        .json(&json!({"device_id": "polite", "log_level": "INFO", "message": message}))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bodies_that_trickle_are_answered_408_after_their_grace() {
    let mut stack = Stack::builder()
        .api()
        .workers(1)
        .api_env("LOGPIPELINE_BODY_GRACE_SECS", 2)
        .start()
        .unwrap();
    let pool = stack.pool().await.unwrap();
    wait_for_schema(&pool).await.unwrap();
    let api = stack.api.as_mut().unwrap();
    let (port, pid) = (api.port(), api.process().pid());
    let base = format!("http://127.0.0.1:{port}");
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let before = peak_rss_mib(pid);

    // 300 connections send their headers, then their body a byte a second.
    let started = Instant::now();
    let mut slow = Vec::new();
    for _ in 0..300 {
        slow.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let head: &[u8] = b"POST /api/logs/batch HTTP/1.1\r\nHost: x\r\n\
                Content-Type: application/json\r\nContent-Length: 1080\r\n\r\n";
            stream.write_all(head).await.unwrap();
            let mut answer = Vec::new();
            for _ in 0..1080 {
                if stream.write_all(b" ").await.is_err() {
                    break;
                }
                let mut buffer = [0u8; 4096];
                match tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buffer)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(read)) => answer.extend_from_slice(&buffer[..read]),
                    Err(_) => {}
                }
                if !answer.is_empty() {
                    break;
                }
            }
            (
                String::from_utf8_lossy(&answer).into_owned(),
                started.elapsed(),
            )
        }));
    }
    // Meanwhile a device that behaves is answered.
    let took = well_behaved(&client, &base, "during the trickle").await;
    println!("a well-behaved device was answered in {took:?} beside 300 trickling bodies");
    let mut answered_after = Vec::new();
    for connection in slow {
        let (answer, after) = connection.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
        assert!(answer.contains("request_timeout"), "{answer:?}");
        answered_after.push(after);
    }
    let last = answered_after.iter().max().unwrap();
    println!("every trickling body was answered 408 within {last:?}");
    assert!(*last < Duration::from_secs(60), "{last:?}");
    let grown = peak_rss_mib(pid) - before;
    println!("the api's peak memory grew {grown:.1} MiB");
    assert!(grown < 64.0, "{grown:.1} MiB");
    let metrics = logpipeline_local::services::http_get(port, "/metrics").unwrap();
    assert!(
        metrics.contains(r#"logpipeline_api_requests_rejected_total{reason="request_timeout"}"#),
        "408s are counted: {metrics}"
    );
    wait_for_count(
        &pool,
        "select count(*) from logs where device_id = 'polite'",
        1,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn large_bodies_at_once_stay_within_the_memory_budget_and_bombs_are_refused() {
    const BUDGET_MIB: usize = 256;
    let mut stack = Stack::builder()
        .api()
        .workers(1)
        .api_env("LOGPIPELINE_BODY_BYTES_IN_FLIGHT", BUDGET_MIB << 20)
        .start()
        .unwrap();
    let pool = stack.pool().await.unwrap();
    wait_for_schema(&pool).await.unwrap();
    let api = stack.api.as_mut().unwrap();
    let (port, pid) = (api.port(), api.process().pid());
    let base = format!("http://127.0.0.1:{port}");
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let before = peak_rss_mib(pid);

    // 40 bodies of 60 MiB at once: a batch of nothing but whitespace, refused as
    // invalid once read, or refused for want of room before it is.
    let mut body = b"{\"logs\": [".to_vec();
    body.resize(60 << 20, b' ');
    body.extend_from_slice(b"]}");
    let body = bytes::Bytes::from(body);
    let mut large = Vec::new();
    for _ in 0..40 {
        let (client, body, base) = (client.clone(), body.clone(), base.clone());
        large.push(tokio::spawn(async move {
            client
                .post(format!("{base}/api/logs/batch"))
                .header("content-type", "application/json")
                .body(body)
                .timeout(Duration::from_secs(120))
                .send()
                .await
                .map(|answer| {
                    let retry_after = answer.headers().contains_key("retry-after");
                    (answer.status(), retry_after)
                })
        }));
    }
    // Meanwhile a device that behaves is answered, and the api stays healthy.
    let mut slowest = Duration::ZERO;
    for seq in 0..20 {
        slowest =
            slowest.max(well_behaved(&client, &base, &format!("during the flood {seq}")).await);
        assert_eq!(http_status(port, "/livez").unwrap(), 200);
    }
    println!("well-behaved devices were answered within {slowest:?} beside 40 bodies of 60 MiB");
    let mut statuses = Vec::new();
    for request in large {
        // A refused body's connection may close while the client still sends it.
        if let Ok((status, retry_after)) = request.await.unwrap() {
            assert!(
                status != StatusCode::SERVICE_UNAVAILABLE || retry_after,
                "a 503 over the budget says when to retry"
            );
            statuses.push(status.as_u16());
        }
    }
    println!("answers to the 60 MiB bodies: {statuses:?}");
    assert!(
        statuses.iter().all(|status| [422, 503].contains(status)),
        "{statuses:?}"
    );
    let grown = peak_rss_mib(pid) - before;
    println!("the api's peak memory grew {grown:.1} MiB with a budget of {BUDGET_MIB} MiB");
    assert!(grown < (BUDGET_MIB + 128) as f64, "{grown:.1} MiB");

    // A gzip body of 61 KB that would decode to 60 MiB is refused.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut encoder, &body).unwrap();
    let bomb = encoder.finish().unwrap();
    let answer = client
        .post(format!("{base}/api/logs/batch"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::PAYLOAD_TOO_LARGE);

    eventually(
        "the polite logs are stored",
        Duration::from_secs(60),
        || async {
            let stored: i64 =
                sqlx::query_scalar("select count(*) from logs where device_id = 'polite'")
                    .fetch_one(&pool)
                    .await?;
            Ok(stored == 20)
        },
    )
    .await
    .unwrap();
}

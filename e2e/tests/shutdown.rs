//! Graceful shutdown, on the real binaries: on SIGTERM the api finishes the requests in
//! flight and the worker stores and acknowledges the batch in hand, so nothing accepted
//! is lost.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::time::Duration;

use logpipeline_e2e::devices;
use logpipeline_e2e::runs::count_query;
use logpipeline_e2e::stack::{Stack, eventually, wait_for_count, wait_for_schema};
use logpipeline_e2e::stream::pending_count;
use logpipeline_local::services::{Env, http_get, metric_value};
use nix::sys::signal::Signal;
use redis::AsyncCommands;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_api_finish_requests_in_flight() {
    let mut stack = Stack::builder().api().start().unwrap();
    let api = stack.api.as_mut().unwrap();
    let url = api.url();
    let port = api.port();
    // A request whose body arrives in two parts, the second only after SIGTERM.
    let (first_sent_tx, first_sent) = tokio::sync::oneshot::channel::<()>();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let body = devices::log("drained", 0, 0).to_string();
    let (head, tail) = body.split_at(body.len() / 2);
    let (head, tail) = (head.to_owned(), tail.to_owned());
    let chunks = futures::stream::unfold(
        (0, Some(first_sent_tx), Some(released)),
        move |(step, sent, released)| {
            let (head, tail) = (head.clone(), tail.clone());
            async move {
                match step {
                    0 => {
                        if let Some(sent) = sent {
                            let _ = sent.send(());
                        }
                        Some((Ok::<_, std::io::Error>(head), (1, None, released)))
                    }
                    1 => {
                        if let Some(released) = released {
                            let _ = released.await;
                        }
                        Some((Ok(tail), (2, None, None)))
                    }
                    _ => None,
                }
            }
        },
    );
    let request = tokio::spawn(
        logpipeline_e2e::http_client(|builder| builder)
            .unwrap()
            .post(format!("{url}/api/log"))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(chunks))
            .send(),
    );
    first_sent.await.unwrap();
    // The api has routed the request and waits for the rest of its body: it is in
    // flight (a connection still in the listen queue is not).
    let in_flight = r#"logpipeline_api_http_requests_in_flight{route="/api/log"}"#;
    eventually(
        "the api has the request in flight",
        Duration::from_secs(10),
        || async {
            let metrics = http_get(port, "/metrics")?;
            Ok(metric_value(&metrics, in_flight) == Some(1.0))
        },
    )
    .await
    .unwrap();
    api.process().signal(Signal::SIGTERM).unwrap();
    // Once the signal is handled the api accepts no new connections.
    eventually(
        "the api stops accepting connections",
        Duration::from_secs(10),
        || async { Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_err()) },
    )
    .await
    .unwrap();
    api.process().ensure_running().unwrap();
    release.send(()).unwrap();
    let response = request.await.unwrap().unwrap();
    assert_eq!(
        response.status(),
        200,
        "the request in flight was not finished"
    );
    let status = api
        .process()
        .wait_timeout(Duration::from_secs(30))
        .unwrap()
        .unwrap();
    assert!(status.success(), "the api exited with {status}");
    let mut redis = stack.redis().await.unwrap();
    assert_eq!(redis.xlen::<_, i64>("logs:stream").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_worker_store_and_acknowledge_its_batch() {
    let mut stack = Stack::builder().api().workers(1).start().unwrap();
    let pool = stack.pool().await.unwrap();
    wait_for_schema(&pool).await.unwrap();
    // Hold inserts back so SIGTERM arrives while the worker is storing a batch.
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("lock table logs in exclusive mode")
        .execute(&mut *lock)
        .await
        .unwrap();
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let url = stack.api_url().unwrap();
    for seq in 0..50 {
        let response = client
            .post(format!("{url}/api/log"))
            .json(&devices::log("terminated", 0, seq))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let mut redis = stack.redis().await.unwrap();
    eventually("the worker holds a batch", Duration::from_secs(10), || {
        let mut redis = redis.clone();
        async move { Ok(pending_count(&mut redis).await.unwrap() > 0) }
    })
    .await
    .unwrap();
    let in_hand = pending_count(&mut redis).await.unwrap();
    let worker = &mut stack.workers[0];
    worker.process().signal(Signal::SIGTERM).unwrap();
    worker.process().ensure_running().unwrap();
    lock.rollback().await.unwrap();
    let status = worker
        .process()
        .wait_timeout(Duration::from_secs(30))
        .unwrap()
        .unwrap();
    assert!(status.success(), "the worker exited with {status}");
    assert_eq!(
        pending_count(&mut redis).await.unwrap(),
        0,
        "the batch in hand was not acknowledged"
    );
    let stored: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count_query("terminated")))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(stored >= in_hand, "stored {stored}, held {in_hand}");
    // What it had not read yet is there for the next worker.
    stack.start_worker(&Env::new()).unwrap();
    wait_for_count(
        &pool,
        &count_query("terminated"),
        50,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
}

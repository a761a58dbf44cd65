//! Graceful shutdown, on the real binaries: on SIGTERM the api finishes the requests in
//! flight and the worker stores and acknowledges the batch in hand, so nothing accepted
//! is lost.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::time::Duration;

use logpipeline_e2e::devices;
use logpipeline_e2e::runs::count_query;
use logpipeline_e2e::stack::{Stack, eventually, wait_for_count, wait_for_schema};
use logpipeline_e2e::stream::pending_count;
use logpipeline_local::process::{free_port, scratch_dir};
use logpipeline_local::services::{Env, http_get, http_status, metric_value, worker_command};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
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

/// How a worker's output pipe misbehaves.
#[derive(Debug, Clone, Copy)]
enum DeadReader {
    /// Its reader closed it: every write fails (EPIPE), on stdout and stderr alike.
    Gone,
    /// Its reader holds it open and never reads, and it is full: every write blocks.
    Stuck,
}

/// A worker whose stdout and stderr are one pipe that a log collector or sidecar, gone
/// or hung, no longer reads, still serves, and stops on SIGTERM. Writing its log lines
/// straight to the pipe, a closed one made it panic reporting a failed line on stderr
/// (in the task waiting for the signal, which then never stopped the rest), and a full
/// one blocked every thread that logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_worker_whose_output_nobody_reads() {
    let stack = Stack::builder().api().start().unwrap();
    for reader in [DeadReader::Gone, DeadReader::Stuck] {
        let (read_end, mut write_end) = std::io::pipe().unwrap();
        let read_end = match reader {
            DeadReader::Gone => {
                drop(read_end);
                None
            }
            DeadReader::Stuck => {
                // Filled to its capacity before the worker starts: its first line blocks.
                let capacity =
                    nix::fcntl::fcntl(&write_end, nix::fcntl::FcntlArg::F_GETPIPE_SZ).unwrap();
                std::io::Write::write_all(&mut write_end, &vec![b'.'; capacity as usize]).unwrap();
                Some(read_end)
            }
        };
        let dir = scratch_dir("logpipeline-worker-").unwrap();
        let port = free_port().unwrap();
        let mut command = worker_command(
            port,
            &stack.redis_url(),
            stack.database_url(),
            &Env::from([("RUST_LOG".into(), "debug".into())]),
            dir.path(),
        )
        .unwrap();
        command
            .stdin(std::process::Stdio::null())
            .stderr(write_end.try_clone().unwrap())
            .stdout(write_end);
        let mut worker = KillOnDrop(command.spawn().unwrap());
        eventually(
            &format!("the worker serves /livez ({reader:?})"),
            Duration::from_secs(60),
            || async { Ok(http_status(port, "/livez").is_ok_and(|status| status == 200)) },
        )
        .await
        .unwrap();
        // It logs while it runs (each read of the stream, at debug), then is told to stop.
        kill(Pid::from_raw(worker.0.id() as i32), Signal::SIGTERM).unwrap();
        let status = eventually_exited(&mut worker.0, Duration::from_secs(60)).await;
        assert!(
            status.is_some_and(|status| status.success()),
            "the worker ({reader:?}) did not stop on SIGTERM: {status:?}"
        );
        drop(read_end);
    }
}

/// Kills the child when a failed assertion leaves it running.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The child's exit status once it has exited, or None after `timeout`.
async fn eventually_exited(
    child: &mut std::process::Child,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

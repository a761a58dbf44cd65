//! The system-B client (`logpipeline-client`) end to end, on the real binaries: its
//! batching handle stores every log once, over gRPC and HTTP, through an api crash, and
//! a retry after a lost answer stores nothing twice.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use logpipeline_client::{Batcher, BatcherSettings, Client, Log};
use logpipeline_e2e::client::quick;
use logpipeline_e2e::runs::{count_query, run_id};
use logpipeline_e2e::stack::{Stack, wait_for_count};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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

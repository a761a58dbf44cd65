//! Replicated acceptance on the real binaries and a real Redis replica: with
//! `LOGPIPELINE_REDIS_DURABILITY=replicated` the api answers 200 only once a replica holds
//! the entry, answers 504 while no replica acknowledges it, and a retry with the same
//! idempotency key, once the replica is back, is answered as the duplicate it is; with
//! no replica in sync it refuses at once, 503 `replicas_missing`, and is not ready.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::time::Duration;

use logpipeline_e2e::stack::{Stack, eventually, wait_for_count};
use logpipeline_local::redis::{RedisOptions, RedisServer};
use nix::sys::signal::Signal;
use redis::aio::MultiplexedConnection;
use serde_json::{Value, json};

const STREAM: &str = "logs:stream";

async fn connect(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

async fn stream_length(redis: &mut MultiplexedConnection) -> u64 {
    redis::cmd("XLEN")
        .arg(STREAM)
        .query_async(redis)
        .await
        .unwrap()
}

async fn post_batch(client: &reqwest::Client, api: &str, device: &str, key: &str) -> (u16, Value) {
    let response = client
        .post(format!("{api}/api/logs/batch"))
        .header("Idempotency-Key", key)
        .json(&json!({"logs": [
            {"device_id": device, "log_level": "INFO", "message": "one"},
            {"device_id": device, "log_level": "WARNING", "message": "two"},
        ]}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// A replica of the stack's Redis, in sync, with an append-only file as its primary.
fn start_replica(stack: &Stack) -> RedisServer {
    RedisServer::start_replica_of(
        stack.redis.port(),
        RedisOptions {
            append_only: true,
            ..RedisOptions::default()
        },
    )
    .unwrap()
}

/// Waits until the api is ready: Redis answers and has the replicas acceptance needs.
async fn wait_until_ready(client: &reqwest::Client, api: &str) {
    eventually("the api is ready", Duration::from_secs(60), || async {
        Ok(client.get(format!("{api}/readyz")).send().await?.status() == 200)
    })
    .await
    .unwrap();
}

/// With no replica in sync, replicated acceptance cannot succeed: the api says so at
/// once, with an error of its own (nothing was accepted) and a readiness reason, rather
/// than answer every retry 504 after the replica timeout; with the replica back it
/// accepts again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_replica_replicated_acceptance_says_it_cannot_accept() {
    let stack = Stack::builder()
        .redis(RedisOptions {
            append_only: true,
            ..RedisOptions::default()
        })
        .api_env("LOGPIPELINE_REDIS_DURABILITY", "replicated")
        .api_env("LOGPIPELINE_REDIS_REPLICA_TIMEOUT_MS", 60_000)
        .api()
        .start()
        .unwrap();
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let api = stack.api_url().unwrap();
    let mut primary = stack.redis().await.unwrap();
    // No replica at all: refused (not left waiting out a minute-long replica timeout),
    // and not ready, each saying why.
    eventually(
        "the api knows it has no replica",
        Duration::from_secs(60),
        || async {
            let ready = client.get(format!("{api}/readyz")).send().await?;
            Ok(ready.status() == 503 && ready.text().await?.contains("redis replicas missing"))
        },
    )
    .await
    .unwrap();
    let (status, refused) = post_batch(&client, &api, "pump-1", "first").await;
    assert_eq!(status, 503, "{refused}");
    assert_eq!(refused["error"], "replicas_missing", "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("nothing was accepted"),
        "{refused}"
    );
    assert_eq!(stream_length(&mut primary).await, 0);

    let mut replica = start_replica(&stack);
    wait_until_ready(&client, &api).await;
    let (status, accepted) = post_batch(&client, &api, "pump-1", "first").await;
    assert_eq!(status, 200, "{accepted}");
    assert_eq!(accepted["status"], "received", "{accepted}");

    // The replica goes: once the api has seen it go, refused again, adding nothing.
    replica.stop().unwrap();
    eventually(
        "the api sees the replica go",
        Duration::from_secs(60),
        || async {
            let ready = client.get(format!("{api}/readyz")).send().await?;
            Ok(ready.status() == 503 && ready.text().await?.contains("shard 0 has 0"))
        },
    )
    .await
    .unwrap();
    let (status, refused) = post_batch(&client, &api, "pump-2", "second").await;
    assert_eq!(status, 503, "{refused}");
    assert_eq!(refused["error"], "replicas_missing", "{refused}");
    assert_eq!(stream_length(&mut primary).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_means_a_replica_holds_the_entry() {
    let stack = Stack::builder()
        .redis(RedisOptions {
            append_only: true,
            ..RedisOptions::default()
        })
        .api_env("LOGPIPELINE_REDIS_DURABILITY", "replicated")
        .api_env("LOGPIPELINE_REDIS_REPLICA_TIMEOUT_MS", 3000)
        .api()
        .start()
        .unwrap();
    let replica = start_replica(&stack);
    let mut primary = stack.redis().await.unwrap();
    let mut replica_redis = connect(&replica.url()).await;
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let api = stack.api_url().unwrap();
    wait_until_ready(&client, &api).await;

    // With the replica in sync, a 200 comes once it holds the entry: it does at once.
    let (status, first) = post_batch(&client, &api, "pump-1", "first").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(stream_length(&mut replica_redis).await, 1);

    // A replica that does not acknowledge: the primary takes the entry, the api cannot
    // say it is safe, and says so.
    replica.signal(Signal::SIGSTOP).unwrap();
    let (status, unconfirmed) = post_batch(&client, &api, "pump-2", "second").await;
    replica.signal(Signal::SIGCONT).unwrap();
    assert_eq!(status, 504, "{unconfirmed}");
    assert_eq!(unconfirmed["error"], "outcome_unknown", "{unconfirmed}");
    assert_eq!(stream_length(&mut primary).await, 2);

    // Back in sync, the retry with the same key is the duplicate of the entry the
    // primary took, and the replica holds it: nothing is added twice.
    let (status, retried) = post_batch(&client, &api, "pump-2", "second").await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["status"], "duplicate", "{retried}");
    assert_eq!(stream_length(&mut replica_redis).await, 2);
    assert_eq!(stream_length(&mut primary).await, 2);
}

/// The worker stores only entries a replica holds: an entry the primary took while the
/// replica was frozen (answered 504) is not stored until the replica holds it, so a
/// failover in between could not leave it stored and unanswered, for its client to send
/// again. Once the replica is back it is stored, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_stores_only_entries_a_replica_holds() {
    let replicated = [
        ("LOGPIPELINE_REDIS_DURABILITY", "replicated"),
        ("LOGPIPELINE_REDIS_REPLICA_TIMEOUT_MS", "1000"),
    ];
    let mut builder = Stack::builder()
        .redis(RedisOptions {
            append_only: true,
            ..RedisOptions::default()
        })
        .worker_env("LOGPIPELINE_CLAIM_IDLE_MS", 2000)
        .api()
        .workers(1);
    for (name, value) in replicated {
        builder = builder.api_env(name, value).worker_env(name, value);
    }
    let stack = builder.start().unwrap();
    let replica = start_replica(&stack);
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let api = stack.api_url().unwrap();
    wait_until_ready(&client, &api).await;
    let pool = stack.pool().await.unwrap();
    let rows = |device: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("select count(*) from logs where device_id = $1")
                .bind(device)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let (status, first) = post_batch(&client, &api, "pump-1", "first").await;
    assert_eq!(status, 200, "{first}");
    wait_for_count(
        &pool,
        "select count(*) from logs where device_id = 'pump-1'",
        2,
        Duration::from_secs(60),
    )
    .await
    .unwrap();

    replica.signal(Signal::SIGSTOP).unwrap();
    let (status, unconfirmed) = post_batch(&client, &api, "pump-2", "second").await;
    assert_eq!(status, 504, "{unconfirmed}");
    // The worker reads the entry at once, and waits for the replica, in vain: three
    // seconds, past the claim time, and nothing of it is stored.
    let frozen = std::time::Instant::now();
    while frozen.elapsed() < Duration::from_secs(3) {
        assert_eq!(rows("pump-2").await, 0, "stored an entry no replica holds");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    replica.signal(Signal::SIGCONT).unwrap();
    wait_for_count(
        &pool,
        "select count(*) from logs where device_id = 'pump-2'",
        2,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    let (status, retried) = post_batch(&client, &api, "pump-2", "second").await;
    assert_eq!(
        (status, &retried["status"]),
        (200, &json!("duplicate")),
        "{retried}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(rows("pump-2").await, 2);
}

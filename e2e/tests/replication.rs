//! Replicated acceptance on the real binaries and a real Redis replica: with
//! `LOGPIPELINE_REDIS_DURABILITY=replicated` the api answers 200 only once a replica holds
//! the entry, answers 504 while no replica acknowledges it, and a retry with the same
//! idempotency key, once the replica is back, is answered as the duplicate it is.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use logpipeline_e2e::stack::Stack;
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
    let replica = RedisServer::start_replica_of(
        stack.redis.port(),
        RedisOptions {
            append_only: true,
            ..RedisOptions::default()
        },
    )
    .unwrap();
    let mut primary = stack.redis().await.unwrap();
    let mut replica_redis = connect(&replica.url()).await;
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let api = stack.api_url().unwrap();

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

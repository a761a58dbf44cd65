//! Sharded streams on the real binaries, Redis and PostgreSQL: logs spread over three
//! streams are stored exactly once and in each device's order, and the shard count goes
//! from 1 to 3 and back under load without losing a log.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::collections::BTreeSet;
use std::time::Duration;

use logpipeline_core::stream::Shards;
use logpipeline_e2e::devices::{self, Flow, Plan, send_until};
use logpipeline_e2e::runs::{
    assert_in_device_order, assert_stored_exactly_once, count_query, pool, run_id, shard_of,
};
use logpipeline_e2e::stack::eventually;
use logpipeline_local::postgres::PostgresServer;
use logpipeline_local::redis::RedisServer;
use logpipeline_local::services::{ApiProcess, Env, WorkerProcess};
use redis::AsyncCommands;

fn shards(count: u32) -> Env {
    Env::from([("LOGPIPELINE_STREAM_SHARDS".into(), count.to_string())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_shards_store_100_000_logs_of_100_devices_once_and_in_order() {
    let redis = RedisServer::start().unwrap();
    let postgres = PostgresServer::start().unwrap();
    let database = postgres.create_database().unwrap();
    let api = ApiProcess::start(&redis.url(), &database, &shards(3)).unwrap();
    let _workers = [
        WorkerProcess::start(&redis.url(), &database, &shards(3)).unwrap(),
        WorkerProcess::start(&redis.url(), &database, &shards(3)).unwrap(),
    ];
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let plan = Plan {
        run: run_id("shards"),
        devices: 100,
        single_logs_per_device: 0,
        batches_per_device: 10,
        batch_size: 100,
    };
    let sent = devices::send(&client, &api.url(), &plan).await.unwrap();
    assert_eq!(sent.message_ids.len(), 100_000);
    let used: BTreeSet<u32> = sent
        .message_ids
        .iter()
        .map(|id| shard_of(id).unwrap())
        .collect();
    assert_eq!(
        used,
        BTreeSet::from([0, 1, 2]),
        "the devices spread over every shard"
    );

    let pool = pool(&database).await.unwrap();
    assert_stored_exactly_once(
        &pool,
        &plan.run,
        &sent.message_ids,
        Duration::from_secs(300),
    )
    .await
    .unwrap();

    assert_in_device_order(&pool, &plan.run).await.unwrap();
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for key in Shards::new("logs:stream", 3).keys() {
        let dead: usize = con.xlen(format!("{key}:dead")).await.unwrap();
        assert_eq!(dead, 0, "dead letters on {key}");
    }
}

/// 1 shard, then 3 while an api of 1 still writes, then 1 again while an api of 3 still
/// writes to shards no worker of 1 reads but to drain them: every accepted log is
/// stored once, and the shards no longer in use are deleted once drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn going_from_1_to_3_shards_and_back_under_load_loses_nothing() {
    let redis = RedisServer::start().unwrap();
    let postgres = PostgresServer::start().unwrap();
    let database = postgres.create_database().unwrap();
    let pool = pool(&database).await.unwrap();
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    // Each api's devices have a run of their own, so the two never send the same log.
    let runs = [run_id("reshard-1"), run_id("reshard-3")];
    let send = |api: &ApiProcess, flow: &'static Flow, run: &str| {
        let (client, url, run) = (client.clone(), api.url(), run.to_owned());
        tokio::spawn(async move {
            send_until(&client, &url, &run, 20, 5, Duration::from_millis(5), flow).await
        })
    };
    let stored = || async {
        sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(count_query(&runs[1])))
            .fetch_one(&pool)
            .await
    };
    let progress = |what: &'static str, flow: &'static Flow| {
        let at = flow.accepted();
        eventually(what, Duration::from_secs(120), move || async move {
            Ok(flow.accepted() >= at + 100)
        })
    };

    let one: &'static Flow = Box::leak(Box::default());
    let api_of_one = ApiProcess::start(&redis.url(), &database, &shards(1)).unwrap();
    let mut worker_of_one = WorkerProcess::start(&redis.url(), &database, &shards(1)).unwrap();
    let sending_one = send(&api_of_one, one, &runs[0]);
    progress("logs flow through one shard", one).await.unwrap();

    // Up to 3: workers of 3 take over from the worker of 1 while both apis send.
    let three: &'static Flow = Box::leak(Box::default());
    let api_of_three = ApiProcess::start(&redis.url(), &database, &shards(3)).unwrap();
    let mut worker_of_three = WorkerProcess::start(&redis.url(), &database, &shards(3)).unwrap();
    let sending_three = send(&api_of_three, three, &runs[1]);
    worker_of_one.terminate(Duration::from_secs(30)).unwrap();
    progress("logs flow through three shards", three)
        .await
        .unwrap();
    let at = stored().await.unwrap();
    eventually(
        "the workers of 3 store logs",
        Duration::from_secs(120),
        || async { Ok(stored().await? >= at + 500) },
    )
    .await
    .unwrap();

    // Back to 1: the worker of 3 stops while the api of 3 still sends, so shards 1 and
    // 2 fill with nobody to read them but the new worker of 1, which must drain them.
    worker_of_three.terminate(Duration::from_secs(30)).unwrap();
    progress("shards 1 and 2 fill while nobody reads them", three)
        .await
        .unwrap();
    let _worker_of_one_again = WorkerProcess::start(&redis.url(), &database, &shards(1)).unwrap();
    progress("the api of 3 still sends while they drain", three)
        .await
        .unwrap();
    three.stop();
    one.stop();
    let mut accepted = 0;
    let mut used = BTreeSet::new();
    for (sending, run) in [sending_one, sending_three].into_iter().zip(&runs) {
        let sent = sending.await.unwrap();
        assert!(
            sent.failed.is_empty(),
            "{:?}",
            &sent.failed[..sent.failed.len().min(5)]
        );
        used.extend(sent.message_ids.iter().map(|id| shard_of(id).unwrap()));
        assert_stored_exactly_once(&pool, run, &sent.message_ids, Duration::from_secs(300))
            .await
            .unwrap();
        accepted += sent.message_ids.len();
    }
    drop(api_of_three);
    assert_eq!(used, BTreeSet::from([0, 1, 2]));
    let mut con = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let retired = Shards::new("logs:stream", 3).keys()[1..].to_vec();
    eventually(
        "the drained shards are deleted",
        Duration::from_secs(120),
        || {
            let (mut con, retired) = (con.clone(), retired.clone());
            async move {
                let left: usize = con.exists(&retired).await?;
                Ok(left == 0)
            }
        },
    )
    .await
    .unwrap();
    let left: usize = con.exists(&retired).await.unwrap();
    assert_eq!(left, 0);
    drop(api_of_one);
    println!(
        "{} logs accepted across 1 → 3 → 1 shards, all stored once",
        accepted
    );
}

/// A shard count of 0, or of more than entry ids can tell apart, is refused by both
/// binaries before they start, with a message naming the setting and its range.
#[test]
fn a_bad_shard_count_is_refused_with_a_clear_message() {
    let binaries = logpipeline_local::services::binaries_dir().unwrap();
    for binary in ["logpipeline-api", "logpipeline-worker"] {
        for count in ["0", "17", "three"] {
            let output = std::process::Command::new(binaries.join(binary))
                .env("LOGPIPELINE_STREAM_SHARDS", count)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(
                !output.status.success(),
                "{binary} started with {count} shards"
            );
            assert!(
                stderr.contains("--stream-shards") && stderr.contains(count),
                "{binary} with {count} shards said: {stderr}"
            );
        }
    }
}

//! The write path through outages of what it stands on, on the real binaries: logs
//! accepted while PostgreSQL is down, or while it refuses every write, are stored once it
//! is back, and nothing is dead-lettered for it; a Redis that restarts empty gets its
//! consumer group back; a worker that could not acknowledge for a Redis outage finishes
//! its entries once Redis is back, without waiting for the claim timeout; a Redis that
//! may evict the stream is refused at start.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::time::Duration;

use logpipeline_e2e::devices::{self, Plan};
use logpipeline_e2e::runs::{assert_exactly_once, count_query};
use logpipeline_e2e::stack::{Stack, eventually, wait_for_count, wait_for_schema};
use logpipeline_e2e::stream::pending_count;
use logpipeline_local::redis::RedisOptions;
use logpipeline_local::services::Env;
use redis::AsyncCommands;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_accepted_while_postgres_is_down_are_stored_when_it_returns() {
    let mut stack = Stack::builder()
        .own_postgres()
        .api()
        .workers(1)
        .start()
        .unwrap();
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let url = stack.api_url().unwrap();
    let plan = |run: &str| Plan {
        run: run.into(),
        devices: 20,
        single_logs_per_device: 50,
        batches_per_device: 10,
        batch_size: 5,
    };
    let before = plan("before-outage");
    devices::send(&client, &url, &before).await.unwrap();
    let pool = stack.pool().await.unwrap();
    wait_for_count(
        &pool,
        &count_query(&before.run),
        2000,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    drop(pool);

    stack.postgres.as_mut().unwrap().stop().unwrap();
    let during = plan("during-outage");
    let sent = devices::send(&client, &url, &during).await.unwrap();
    assert_eq!(sent.message_ids.len(), 2000, "the api must keep accepting");
    eventually("the worker retries", Duration::from_secs(30), || async {
        Ok(stack.workers[0].metric("logpipeline_worker_insert_retries_total")? >= 2.0)
    })
    .await
    .unwrap();
    stack.workers[0].process().ensure_running().unwrap();

    stack.postgres.as_mut().unwrap().start_again().unwrap();
    let pool = stack.pool().await.unwrap();
    let drain = wait_for_count(
        &pool,
        &count_query(&during.run),
        2000,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_exactly_once(&pool, &during.run, &sent.message_ids)
        .await
        .unwrap();
    println!(
        "2000 logs accepted during a PostgreSQL outage, all stored {drain:?} after it returned"
    );
}

/// A Redis without persistence that restarts comes back empty, without the consumer
/// group: the worker creates it again and stores what the api accepts from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_that_restarts_empty_gets_its_group_back_and_storage_goes_on() {
    let mut stack = Stack::builder().api().workers(1).start().unwrap();
    let pool = stack.pool().await.unwrap();
    wait_for_schema(&pool).await.unwrap();
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let url = stack.api_url().unwrap();
    let plan = |run: &str| Plan {
        run: run.into(),
        devices: 5,
        single_logs_per_device: 10,
        batches_per_device: 2,
        batch_size: 5,
    };
    let before = plan("before-redis-restart");
    devices::send(&client, &url, &before).await.unwrap();
    wait_for_count(
        &pool,
        &count_query(&before.run),
        100,
        Duration::from_secs(30),
    )
    .await
    .unwrap();

    stack.redis.stop().unwrap();
    stack.redis.start_again().unwrap();
    eventually(
        "the api reaches Redis again",
        Duration::from_secs(30),
        || {
            let health = client.get(format!("{url}/health")).send();
            async move { Ok(health.await?.status() == 200) }
        },
    )
    .await
    .unwrap();
    let after = plan("after-redis-restart");
    let sent = devices::send(&client, &url, &after).await.unwrap();
    assert_eq!(sent.message_ids.len(), 100);
    wait_for_count(
        &pool,
        &count_query(&after.run),
        100,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_exactly_once(&pool, &after.run, &sent.message_ids)
        .await
        .unwrap();
    stack.workers[0].process().ensure_running().unwrap();
}

/// A worker stores a batch while Redis is down, so its acknowledgement fails; once Redis
/// is back (with the entry and its delivery, from its append-only file), the worker
/// reads its own unacknowledged entries again and acknowledges them, long before another
/// consumer could claim them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_finishes_its_unacknowledged_entries_once_redis_is_back() {
    let mut stack = Stack::builder()
        .api()
        .redis(RedisOptions {
            append_only: true,
            ..RedisOptions::default()
        })
        .worker_env("LOGPIPELINE_CLAIM_IDLE_MS", 3_600_000)
        .start()
        .unwrap();
    stack.start_worker(&Env::new()).unwrap();
    let pool = stack.pool().await.unwrap();
    wait_for_schema(&pool).await.unwrap();
    stack
        .wait_until_a_worker_reads(Duration::from_secs(60))
        .await
        .unwrap();
    let redis = stack.redis().await.unwrap();
    // The worker's insert waits on this lock while Redis goes away.
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("lock table logs in exclusive mode")
        .execute(&mut *lock)
        .await
        .unwrap();
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let batch = serde_json::json!({"logs": (0..10).map(|seq| devices::log("ack-after-outage", 0, seq)).collect::<Vec<_>>()});
    let answer = client
        .post(format!("{}/api/logs/batch", stack.api_url().unwrap()))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    eventually(
        "the worker holds the batch",
        Duration::from_secs(60),
        || {
            let mut redis = redis.clone();
            async move { Ok(pending_count(&mut redis).await? == 1) }
        },
    )
    .await
    .unwrap();
    stack.redis.stop().unwrap();
    lock.rollback().await.unwrap();
    let count = count_query("ack-after-outage");
    wait_for_count(&pool, &count, 10, Duration::from_secs(60))
        .await
        .unwrap();
    stack.redis.start_again().unwrap();
    let redis = stack.redis().await.unwrap();
    assert_eq!(
        pending_count(&mut redis.clone()).await.unwrap(),
        1,
        "Redis kept the delivery"
    );
    eventually(
        "the worker acknowledges its entry",
        Duration::from_secs(60),
        || {
            let mut redis = redis.clone();
            async move { Ok(pending_count(&mut redis).await? == 0) }
        },
    )
    .await
    .unwrap();
    let stored: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_that_refuses_every_write_is_an_outage_and_dead_letters_nothing() {
    let stack = Stack::builder()
        .own_postgres()
        .api()
        .workers(1)
        .worker_env("LOGPIPELINE_MAX_DELIVERIES", 2)
        .worker_env("LOGPIPELINE_CLAIM_IDLE_MS", 500)
        .start()
        .unwrap();
    let pool = stack.pool().await.unwrap();
    wait_for_schema(&pool).await.unwrap();
    // As after a failover onto a standby: every connection's transactions become
    // read-only, and each insert is refused by the server (SQLSTATE 25006), whatever the
    // log.
    let read_only = |on: bool| {
        let pool = pool.clone();
        async move {
            let mut connection = pool.acquire().await.unwrap();
            sqlx::query("set default_transaction_read_only = off")
                .execute(&mut *connection)
                .await
                .unwrap();
            let setting = if on {
                "alter system set default_transaction_read_only = on"
            } else {
                "alter system reset default_transaction_read_only"
            };
            sqlx::query(setting)
                .execute(&mut *connection)
                .await
                .unwrap();
            sqlx::query("select pg_reload_conf()")
                .execute(&mut *connection)
                .await
                .unwrap();
        }
    };
    // The worker's start-up writes (the partitions ahead) must not meet the read-only
    // server: a worker that cannot start exits, which is not what this test is about.
    stack
        .wait_until_a_worker_reads(Duration::from_secs(120))
        .await
        .unwrap();
    let mut redis = stack.redis().await.unwrap();
    read_only(true).await;

    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let url = stack.api_url().unwrap();
    let plan = Plan {
        run: "read-only".into(),
        devices: 10,
        single_logs_per_device: 10,
        batches_per_device: 2,
        batch_size: 5,
    };
    let sent = devices::send(&client, &url, &plan).await.unwrap();
    // Each retry would be a delivery if the refusals were held against the entries; with
    // two deliveries allowed, six retries are far past where they would be dead-lettered.
    eventually(
        "the worker retries the batch as a whole",
        Duration::from_secs(180),
        || async { Ok(stack.workers[0].metric("logpipeline_worker_insert_retries_total")? >= 6.0) },
    )
    .await
    .unwrap_or_else(|error| panic!("{error}{}", stack.worker_log()));
    assert_eq!(redis.xlen::<_, i64>("logs:stream:dead").await.unwrap(), 0);
    assert_eq!(
        stack.workers[0]
            .metric("logpipeline_worker_entries_dead_lettered_total{reason=\"rejected\"}")
            .unwrap(),
        0.0
    );

    read_only(false).await;
    wait_for_count(
        &pool,
        &count_query(&plan.run),
        200,
        Duration::from_secs(120),
    )
    .await
    .unwrap_or_else(|error| panic!("{error}{}", stack.worker_log()));
    assert_exactly_once(&pool, &plan.run, &sent.message_ids)
        .await
        .unwrap();
    assert_eq!(redis.xlen::<_, i64>("logs:stream:dead").await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_refuse_a_redis_that_may_evict_the_stream() {
    use logpipeline_local::redis::RedisOptions;
    use logpipeline_local::services::{ApiProcess, WorkerProcess};
    let stack = Stack::builder()
        .redis(RedisOptions {
            append_only: false,
            extra_args: vec!["--maxmemory-policy".into(), "allkeys-lru".into()],
        })
        .start()
        .unwrap();
    let api = ApiProcess::start(&stack.redis.url(), stack.database_url(), &Env::new()).unwrap_err();
    assert!(
        format!("{api:#}").contains("maxmemory-policy is allkeys-lru"),
        "{api:#}"
    );
    let worker =
        WorkerProcess::start(&stack.redis.url(), stack.database_url(), &Env::new()).unwrap_err();
    assert!(
        format!("{worker:#}").contains("maxmemory-policy is allkeys-lru"),
        "{worker:#}"
    );
}

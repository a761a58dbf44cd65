//! The write path end to end, on the real binaries: every accepted log reaches
//! PostgreSQL exactly once, through workers killed mid-batch or between commit and
//! acknowledgement, entries claimed from a consumer that died, and a full stream that
//! refuses new logs and loses none it accepted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::time::{Duration, Instant};

use logpipeline_e2e::devices::{self, Plan};
use logpipeline_e2e::runs::{assert_exactly_once, count_query};
use logpipeline_e2e::stack::{Stack, eventually, wait_for_count, wait_for_schema};
use logpipeline_e2e::stream::{holds_pending, pending_count};
use logpipeline_local::services::Env;
use nix::sys::signal::Signal;
use redis::AsyncCommands;
use sqlx::PgPool;

/// The seed-like load of the "done when" criteria: 100 devices, 100,000 logs, half one
/// per request, half in batches of 5.
fn hundred_thousand_logs(run: &str) -> Plan {
    Plan {
        run: run.into(),
        devices: 100,
        single_logs_per_device: 500,
        batches_per_device: 100,
        batch_size: 5,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_accepted_log_is_stored_exactly_once() {
    let stack = Stack::builder()
        .api()
        .workers(1)
        .api_env("LOGPIPELINE_STREAM_CAPACITY", 1_000_000)
        .start()
        .unwrap();
    let plan = hundred_thousand_logs("exactly-once");
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let started = Instant::now();
    let sent = devices::send(&client, &stack.api_url().unwrap(), &plan)
        .await
        .unwrap();
    let sending = started.elapsed();
    assert_eq!(sent.message_ids.len(), plan.total_logs());

    let pool = stack.pool().await.unwrap();
    let drain = wait_for_count(
        &pool,
        &count_query(&plan.run),
        100_000,
        Duration::from_secs(180),
    )
    .await
    .unwrap();
    assert_exactly_once(&pool, &plan.run, &sent.message_ids)
        .await
        .unwrap();
    println!(
        "sent {} logs in {} requests in {sending:?}; all 100000 stored, no duplicates, {drain:?} after the last was accepted",
        sent.message_ids.len(),
        sent.requests
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_batch_twice_loses_and_duplicates_nothing() {
    let mut stack = Stack::builder()
        .api()
        .api_env("LOGPIPELINE_STREAM_CAPACITY", 1_000_000)
        .worker_env("LOGPIPELINE_CLAIM_IDLE_MS", 1000)
        .start()
        .unwrap();
    let crashy = Env::from([("LOGPIPELINE_CONSUMER_NAME".into(), "crashy".into())]);
    stack.start_worker(&crashy).unwrap();
    let plan = hundred_thousand_logs("killed-twice");
    let url = stack.api_url().unwrap();
    let sending = tokio::spawn({
        let plan = plan.clone();
        async move {
            devices::send(
                &logpipeline_e2e::http_client(|builder| builder).unwrap(),
                &url,
                &plan,
            )
            .await
        }
    });
    let mut redis = stack.redis().await.unwrap();

    // First crash: SIGKILL while it holds unacknowledged entries; its successor of the
    // same name picks them up from its own pending list at start.
    let pool = stack.pool().await.unwrap();
    let count = count_query(&plan.run);
    wait_for_rows_above(&pool, &count, 10_000).await;
    eventually(
        "crashy holds pending entries",
        Duration::from_secs(60),
        || {
            let mut redis = redis.clone();
            async move { Ok(holds_pending(&mut redis, "crashy-").await.unwrap()) }
        },
    )
    .await
    .unwrap();
    stack.workers[0].process().signal(Signal::SIGKILL).unwrap();
    stack.workers[0]
        .process()
        .wait_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    stack.start_worker(&crashy).unwrap();

    // Second crash: its entries go to a worker of another name, which claims them once
    // they have been idle for the claim timeout.
    wait_for_rows_above(&pool, &count, 50_000).await;
    eventually(
        "crashy holds pending entries again",
        Duration::from_secs(60),
        || {
            let mut redis = redis.clone();
            async move { Ok(holds_pending(&mut redis, "crashy-").await.unwrap()) }
        },
    )
    .await
    .unwrap();
    stack.workers[1].process().signal(Signal::SIGKILL).unwrap();
    stack.workers[1]
        .process()
        .wait_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    let successor = Env::from([("LOGPIPELINE_CONSUMER_NAME".into(), "successor".into())]);
    stack.start_worker(&successor).unwrap();

    let sent = sending.await.unwrap().unwrap();
    let drain = wait_for_count(&pool, &count, 100_000, Duration::from_secs(180))
        .await
        .unwrap();
    assert_exactly_once(&pool, &plan.run, &sent.message_ids)
        .await
        .unwrap();
    assert_eq!(pending_count(&mut redis).await.unwrap(), 0);
    let claimed = stack.workers[2]
        .metric("logpipeline_worker_entries_claimed_total")
        .unwrap();
    let duplicates = stack.workers[2]
        .metric("logpipeline_worker_logs_duplicate_total")
        .unwrap();
    assert!(
        claimed > 0.0,
        "the successor claimed nothing from the killed worker"
    );
    println!(
        "100000 logs sent, worker killed twice: 100000 rows, no duplicates; {claimed} entries claimed, \
         {duplicates} re-delivered logs skipped by the successor as already stored; drained {drain:?} after the last accept"
    );
}

async fn wait_for_rows_above(pool: &PgPool, query: &str, rows: i64) {
    eventually("rows arrive", Duration::from_secs(120), || async {
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(query))
            .fetch_one(pool)
            .await?;
        Ok(count > rows)
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_pending_on_a_dead_consumer_are_claimed_after_the_idle_timeout() {
    let mut stack = Stack::builder()
        .api()
        .worker_env("LOGPIPELINE_CLAIM_IDLE_MS", 2000)
        .start()
        .unwrap();
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    for seq in 0..10 {
        let response = client
            .post(format!("{}/api/log", stack.api_url().unwrap()))
            .json(&devices::log("claimed", 1, seq))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // A consumer reads the ten entries and dies without acknowledging them.
    let mut redis = stack.redis().await.unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&[
            "GROUP",
            "log_workers",
            "ghost",
            "COUNT",
            "100",
            "STREAMS",
            "logs:stream",
            ">",
        ])
        .query_async(&mut redis)
        .await
        .unwrap();
    let died = Instant::now();
    assert_eq!(pending_count(&mut redis).await.unwrap(), 10);

    stack.start_worker(&Env::new()).unwrap();
    // While the entries are pending, trimming keeps them.
    eventually(
        "the worker has run its upkeep",
        Duration::from_secs(10),
        || async { Ok(stack.workers[0].metric("logpipeline_worker_stream_length")? == 10.0) },
    )
    .await
    .unwrap();
    let length: i64 = redis.xlen("logs:stream").await.unwrap();
    assert_eq!(length, 10);

    let pool = stack.pool().await.unwrap();
    wait_for_count(&pool, &count_query("claimed"), 10, Duration::from_secs(30))
        .await
        .unwrap();
    let waited = died.elapsed();
    assert!(
        waited >= Duration::from_secs(2),
        "claimed after {waited:?}, before the idle timeout"
    );
    assert_eq!(
        stack.workers[0]
            .metric("logpipeline_worker_entries_claimed_total")
            .unwrap(),
        10.0
    );
    eventually(
        "the claimed entries are acknowledged and trimmed",
        Duration::from_secs(10),
        || {
            let mut redis = redis.clone();
            async move {
                let length: i64 = redis.xlen("logs:stream").await?;
                Ok(pending_count(&mut redis).await.unwrap() == 0 && length == 0)
            }
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_refuses_new_logs_and_loses_none_it_accepted() {
    let mut stack = Stack::builder()
        .api()
        .api_env("LOGPIPELINE_STREAM_CAPACITY", 20)
        .start()
        .unwrap();
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let url = stack.api_url().unwrap();
    let mut accepted = Vec::new();
    for seq in 0..20 {
        let response = client
            .post(format!("{url}/api/log"))
            .json(&devices::log("full", 0, seq))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        accepted.push(body["message_id"].as_str().unwrap().to_owned());
    }
    let refused = client
        .post(format!("{url}/api/log"))
        .json(&devices::log("full", 0, 20))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "backpressure");

    // Nothing unread is trimmed to make room: a worker stores all twenty.
    stack.start_worker(&Env::new()).unwrap();
    let pool = stack.pool().await.unwrap();
    wait_for_count(&pool, &count_query("full"), 20, Duration::from_secs(30))
        .await
        .unwrap();
    assert_exactly_once(&pool, "full", &accepted).await.unwrap();
    // Acknowledged entries are trimmed, which makes room again.
    let mut redis = stack.redis().await.unwrap();
    eventually(
        "acknowledged entries are trimmed",
        Duration::from_secs(10),
        || {
            let mut redis = redis.clone();
            async move { Ok(redis.xlen::<_, i64>("logs:stream").await? == 0) }
        },
    )
    .await
    .unwrap();
    let again = client
        .post(format!("{url}/api/log"))
        .json(&devices::log("full", 0, 21))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    let _ = &mut redis;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_dying_between_commit_and_acknowledgement_causes_no_duplicate() {
    let mut stack = Stack::builder()
        .api()
        .worker_env("LOGPIPELINE_CLAIM_IDLE_MS", 500)
        .start()
        .unwrap();
    stack.start_worker(&Env::new()).unwrap();
    let pool = stack.pool().await.unwrap();
    wait_for_schema(&pool).await.unwrap();
    // The lock below must come once the worker reads.
    stack
        .wait_until_a_worker_reads(Duration::from_secs(60))
        .await
        .unwrap();
    let mut redis = stack.redis().await.unwrap();
    // Hold the insert until Redis refuses writes, so the commit lands and the XACK cannot.
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("lock table logs in exclusive mode")
        .execute(&mut *lock)
        .await
        .unwrap();
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let url = stack.api_url().unwrap();
    let batch = serde_json::json!({"logs": (0..10).map(|seq| devices::log("commit-no-ack", 0, seq)).collect::<Vec<_>>()});
    let response = client
        .post(format!("{url}/api/logs/batch"))
        .json(&batch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    eventually(
        "the worker holds the batch",
        Duration::from_secs(30),
        || {
            let mut redis = redis.clone();
            async move { Ok(pending_count(&mut redis).await.unwrap() == 1) }
        },
    )
    .await
    .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg(&["PAUSE", "60000", "WRITE"])
        .query_async(&mut redis)
        .await
        .unwrap();
    lock.rollback().await.unwrap();
    let count = count_query("commit-no-ack");
    wait_for_count(&pool, &count, 10, Duration::from_secs(10))
        .await
        .unwrap();
    stack.workers[0].process().signal(Signal::SIGKILL).unwrap();
    stack.workers[0]
        .process()
        .wait_timeout(Duration::from_secs(10))
        .unwrap()
        .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(
        pending_count(&mut redis).await.unwrap(),
        1,
        "the entry was acknowledged before the crash"
    );

    // A successor claims the entry, stores it again, and PostgreSQL keeps one copy.
    stack.start_worker(&Env::new()).unwrap();
    eventually(
        "the successor acknowledges the entry",
        Duration::from_secs(30),
        || {
            let mut redis = redis.clone();
            async move { Ok(pending_count(&mut redis).await.unwrap() == 0) }
        },
    )
    .await
    .unwrap();
    let successor = &stack.workers[1];
    assert_eq!(
        successor
            .metric("logpipeline_worker_logs_duplicate_total")
            .unwrap(),
        10.0
    );
    assert_eq!(
        successor
            .metric("logpipeline_worker_logs_inserted_total")
            .unwrap(),
        0.0
    );
    let stored: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 10);
    let counted: i64 = sqlx::query_scalar("select sum(count)::bigint from log_count_totals")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(counted, 10, "the statistics counted a log twice");
}

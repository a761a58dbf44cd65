//! The write path end to end, on the real binaries: every accepted log reaches
//! PostgreSQL exactly once, through worker crashes, a PostgreSQL outage, poison entries,
//! backpressure and shutdowns.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use futures::StreamExt;
use logpipeline_e2e::devices::{self, Plan};
use logpipeline_e2e::stack::{Stack, eventually, wait_for_count, wait_for_schema};
use logpipeline_local::services::{Env, http_get, metric_value};
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

/// Checks that the rows of `run` are exactly the logs accepted: as many, each id once,
/// each message once.
async fn assert_exactly_once(pool: &PgPool, run: &str, accepted: &[String]) {
    let accepted_ids: HashSet<&str> = accepted.iter().map(String::as_str).collect();
    assert_eq!(
        accepted_ids.len(),
        accepted.len(),
        "the api gave an id twice"
    );
    let stored = devices::stored(pool, run, accepted).await.unwrap();
    assert_eq!(stored.rows, accepted.len(), "rows stored vs logs accepted");
    assert_eq!(stored.duplicate_ids, 0, "duplicate message ids");
    assert_eq!(stored.duplicate_messages, 0, "a log was stored twice");
    assert_eq!(
        (stored.missing, stored.unexpected),
        (0, 0),
        "stored ids differ from accepted ids"
    );
}

fn run_count_query(run: &str) -> String {
    format!("select count(*) from logs where log_data @> '{{\"run\": \"{run}\"}}'")
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
        &run_count_query(&plan.run),
        100_000,
        Duration::from_secs(180),
    )
    .await
    .unwrap();
    assert_exactly_once(&pool, &plan.run, &sent.message_ids).await;
    println!(
        "sent {} logs in {} requests in {sending:?}; all 100000 stored, no duplicates, {drain:?} after the last was accepted",
        sent.message_ids.len(),
        sent.requests
    );
}

/// The first worker's last log lines, newest first, to explain a wait that timed out.
fn worker_log(stack: &Stack) -> String {
    let log = std::fs::read_to_string(stack.workers[0].log_path()).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(40).collect();
    format!(
        "; the worker's last lines, newest first:\n{}",
        tail.join("\n")
    )
}

/// Whether any consumer whose name starts with `prefix` holds unacknowledged entries.
async fn holds_pending(redis: &mut redis::aio::MultiplexedConnection, prefix: &str) -> bool {
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg("logs:stream")
        .arg("log_workers")
        .query_async(redis)
        .await
        .unwrap();
    let redis::Value::Array(parts) = summary else {
        return false;
    };
    let Some(redis::Value::Array(consumers)) = parts.get(3) else {
        return false;
    };
    consumers.iter().any(|consumer| match consumer {
        redis::Value::Array(pair) => matches!(pair.first(), Some(redis::Value::BulkString(name)) if name.starts_with(prefix.as_bytes())),
        _ => false,
    })
}

/// How many consumers the worker group has: a consumer appears with its first read.
async fn consumer_count(redis: &mut redis::aio::MultiplexedConnection) -> usize {
    redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg("logs:stream")
        .arg("log_workers")
        .query_async::<Vec<redis::Value>>(redis)
        .await
        .map_or(0, |consumers| consumers.len())
}

async fn pending_count(redis: &mut redis::aio::MultiplexedConnection) -> i64 {
    let summary: (i64, redis::Value, redis::Value, redis::Value) = redis::cmd("XPENDING")
        .arg("logs:stream")
        .arg("log_workers")
        .query_async(redis)
        .await
        .unwrap();
    summary.0
}

/// The dead-letter stream's entries, each as its fields.
async fn dead_letters(
    redis: &mut redis::aio::MultiplexedConnection,
) -> Vec<HashMap<String, String>> {
    let dead: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(&["logs:stream:dead", "-", "+"])
        .query_async(redis)
        .await
        .unwrap();
    dead.into_iter().map(|(_, fields)| fields).collect()
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
    let count = run_count_query(&plan.run);
    wait_for_rows_above(&pool, &count, 10_000).await;
    eventually(
        "crashy holds pending entries",
        Duration::from_secs(60),
        || {
            let mut redis = redis.clone();
            async move { Ok(holds_pending(&mut redis, "crashy-").await) }
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
            async move { Ok(holds_pending(&mut redis, "crashy-").await) }
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
    assert_exactly_once(&pool, &plan.run, &sent.message_ids).await;
    assert_eq!(pending_count(&mut redis).await, 0);
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

async fn wait_for_rows_above(pool: &PgPool, count_query: &str, rows: i64) {
    eventually("rows arrive", Duration::from_secs(120), || async {
        let count: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count_query))
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
    assert_eq!(pending_count(&mut redis).await, 10);

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
    wait_for_count(
        &pool,
        &run_count_query("claimed"),
        10,
        Duration::from_secs(30),
    )
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
                Ok(pending_count(&mut redis).await == 0 && length == 0)
            }
        },
    )
    .await
    .unwrap();
}

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
        &run_count_query(&before.run),
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
        &run_count_query(&during.run),
        2000,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert_exactly_once(&pool, &during.run, &sent.message_ids).await;
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
        &run_count_query(&before.run),
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
        &run_count_query(&after.run),
        100,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_exactly_once(&pool, &after.run, &sent.message_ids).await;
    stack.workers[0].process().ensure_running().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn entries_that_keep_failing_are_dead_lettered_without_blocking_the_rest() {
    let stack = Stack::builder()
        .api()
        .workers(1)
        .worker_env("LOGPIPELINE_MAX_DELIVERIES", 3)
        .start()
        .unwrap();
    let pool = stack.pool().await.unwrap();
    wait_for_schema(&pool).await.unwrap();
    // A rule PostgreSQL enforces and the api does not know about.
    sqlx::query("alter table logs add constraint no_poison check (device_id <> 'poison')")
        .execute(&pool)
        .await
        .unwrap();

    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let url = stack.api_url().unwrap();
    let poison = |seq| {
        let mut log = devices::log("poisoned", 0, seq);
        log["device_id"] = "poison".into();
        log
    };
    let mut poisoned_ids = HashSet::new();
    for seq in 0..3 {
        let response = client
            .post(format!("{url}/api/log"))
            .json(&poison(seq))
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = response.json().await.unwrap();
        poisoned_ids.insert(body["message_id"].as_str().unwrap().to_owned());
    }
    // A poisoned log does not take the valid logs of its request with it: they are
    // stored, and only the poisoned one is held back.
    let mixed = serde_json::json!({"logs": [devices::log("poisoned", 1, 0), poison(3)]});
    let response = client
        .post(format!("{url}/api/logs/batch"))
        .json(&mixed)
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    let mixed_entry = body["message_ids"][0]
        .as_str()
        .unwrap()
        .trim_end_matches(".0")
        .to_owned();
    poisoned_ids.insert(mixed_entry.clone());
    // An entry no worker can decode, as a foreign producer might write.
    let mut redis = stack.redis().await.unwrap();
    let garbage: String = redis
        .xadd(
            "logs:stream",
            "*",
            &[("v", "1"), ("t", "0"), ("logs", "not json")],
        )
        .await
        .unwrap();
    // Healthy traffic behind and around them.
    let healthy = Plan {
        run: "healthy".into(),
        devices: 10,
        single_logs_per_device: 20,
        batches_per_device: 4,
        batch_size: 5,
    };
    let sent = devices::send(&client, &url, &healthy).await.unwrap();
    wait_for_count(
        &pool,
        &run_count_query("healthy"),
        400,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_exactly_once(&pool, "healthy", &sent.message_ids).await;

    eventually(
        "five entries are dead-lettered",
        Duration::from_secs(30),
        || {
            let mut redis = redis.clone();
            async move { Ok(redis.xlen::<_, i64>("logs:stream:dead").await? == 5) }
        },
    )
    .await
    .unwrap();
    let mut rejected = HashSet::new();
    for fields in dead_letters(&mut redis).await {
        if fields["source_id"] == garbage {
            assert!(fields["reason"].contains("invalid"), "{fields:?}");
            assert_eq!(fields["logs"], "not json", "the entry is kept as it was");
        } else {
            assert!(fields["reason"].contains("no_poison"), "{fields:?}");
            assert_eq!(fields["deliveries"], "3", "{fields:?}");
            if fields["source_id"] == mixed_entry {
                let held_back: Vec<serde_json::Value> =
                    serde_json::from_str(&fields["logs"]).unwrap();
                assert_eq!(held_back, vec![poison(3)], "only the refused log");
                assert_eq!(fields["log_indexes"], "1", "{fields:?}");
            }
            rejected.insert(fields["source_id"].clone());
        }
    }
    assert_eq!(rejected, poisoned_ids);
    let worker = &stack.workers[0];
    assert_eq!(
        worker
            .metric("logpipeline_worker_entries_dead_lettered_total{reason=\"rejected\"}")
            .unwrap(),
        4.0
    );
    assert_eq!(
        worker
            .metric("logpipeline_worker_entries_dead_lettered_total{reason=\"undecodable\"}")
            .unwrap(),
        1.0
    );
    assert_eq!(pending_count(&mut redis).await, 0);
    let poisoned_rows: Vec<String> =
        sqlx::query_scalar("select message_id from logs where log_data->>'run' = 'poisoned'")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        poisoned_rows,
        vec![format!("{mixed_entry}.0")],
        "the valid log of the spoilt request is stored, the poisoned ones are not"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn entries_refused_with_any_sqlstate_are_dead_lettered_while_the_logs_behind_them_are_stored()
{
    // One worker process with its default four consumers, and more poison entries than
    // consumers: before the fix, four entries of class 54 (what PostgreSQL answers to a
    // `log_data` nested 20,000 deep) stopped every consumer for good.
    let stack = Stack::builder()
        .api()
        .workers(1)
        .worker_env("LOGPIPELINE_MAX_DELIVERIES", 3)
        .start()
        .unwrap();
    let pool = stack.pool().await.unwrap();
    wait_for_schema(&pool).await.unwrap();
    // PostgreSQL refuses the logs of device `refused-<SQLSTATE>` with that SQLSTATE,
    // while it stores every other log: program limits, resources, internal errors,
    // operator intervention, even a code that claims a lost connection.
    sqlx::raw_sql(
        "create function refuse_by_device() returns trigger language plpgsql as $$
         begin
             if new.device_id like 'refused-%' then
                 raise exception 'refused for the test' using errcode = substr(new.device_id, 9);
             end if;
             return new;
         end $$;
         create trigger refuse_by_device before insert on logs
             for each row execute function refuse_by_device()",
    )
    .execute(&pool)
    .await
    .unwrap();
    let classes = [
        "54001", "53200", "XX000", "57014", "P0001", "08006", "42501",
    ];

    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let url = stack.api_url().unwrap();
    let mut refused_ids = HashSet::new();
    for (seq, class) in classes.iter().enumerate() {
        let mut log = devices::log("refused", 0, seq);
        log["device_id"] = format!("refused-{class}").into();
        let response = client
            .post(format!("{url}/api/log"))
            .json(&log)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        refused_ids.insert(body["message_id"].as_str().unwrap().to_owned());
    }
    // The real thing, written by a producer that does not check the nesting cap: the
    // worker refuses to decode it and dead-letters it at once.
    let mut redis = stack.redis().await.unwrap();
    let deep = format!(
        r#"[{{"device_id":"deep","log_level":"INFO","message":"m","log_data":{{"a":{}{}}}}}]"#,
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let deep_id: String = redis
        .xadd(
            "logs:stream",
            "*",
            &[("v", "1"), ("t", "0"), ("logs", &deep)],
        )
        .await
        .unwrap();

    let healthy = Plan {
        run: "behind-refused".into(),
        devices: 10,
        single_logs_per_device: 20,
        batches_per_device: 4,
        batch_size: 5,
    };
    let sent = devices::send(&client, &url, &healthy).await.unwrap();
    wait_for_count(
        &pool,
        &run_count_query(&healthy.run),
        400,
        Duration::from_secs(120),
    )
    .await
    .unwrap_or_else(|error| panic!("{error}{}", worker_log(&stack)));
    assert_exactly_once(&pool, &healthy.run, &sent.message_ids).await;

    let expected = classes.len() + 1;
    eventually(
        "every refused entry is dead-lettered",
        Duration::from_secs(120),
        || {
            let mut redis = redis.clone();
            async move { Ok(redis.xlen::<_, usize>("logs:stream:dead").await? == expected) }
        },
    )
    .await
    .unwrap_or_else(|error| panic!("{error}{}", worker_log(&stack)));
    let mut dead_lettered = HashSet::new();
    for fields in dead_letters(&mut redis).await {
        if fields["source_id"] == deep_id {
            assert!(
                fields["reason"].contains("more than 64 levels deep"),
                "{fields:?}"
            );
        } else {
            let class = classes
                .iter()
                .find(|class| fields["reason"].contains(&format!("({class})")))
                .unwrap_or_else(|| panic!("no SQLSTATE in the reason: {fields:?}"));
            assert!(
                fields["logs"].contains(&format!("refused-{class}")),
                "{fields:?}"
            );
            assert_eq!(fields["deliveries"], "3", "{fields:?}");
            dead_lettered.insert(fields["source_id"].clone());
        }
    }
    assert_eq!(dead_lettered, refused_ids);
    assert_eq!(pending_count(&mut redis).await, 0);
    let worker = &stack.workers[0];
    let metric = |reason: &str| {
        worker
            .metric(&format!(
                "logpipeline_worker_entries_dead_lettered_total{{reason=\"{reason}\"}}"
            ))
            .unwrap()
    };
    assert_eq!(metric("rejected"), classes.len() as f64);
    assert_eq!(metric("undecodable"), 1.0);
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
    let mut redis = stack.redis().await.unwrap();
    eventually(
        "the worker reads the stream",
        Duration::from_secs(120),
        || {
            let mut redis = redis.clone();
            async move { Ok(consumer_count(&mut redis).await > 0) }
        },
    )
    .await
    .unwrap_or_else(|error| panic!("{error}{}", worker_log(&stack)));
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
    .unwrap_or_else(|error| panic!("{error}{}", worker_log(&stack)));
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
        &run_count_query(&plan.run),
        200,
        Duration::from_secs(120),
    )
    .await
    .unwrap_or_else(|error| panic!("{error}{}", worker_log(&stack)));
    assert_exactly_once(&pool, &plan.run, &sent.message_ids).await;
    assert_eq!(redis.xlen::<_, i64>("logs:stream:dead").await.unwrap(), 0);
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
    wait_for_count(&pool, &run_count_query("full"), 20, Duration::from_secs(30))
        .await
        .unwrap();
    assert_exactly_once(&pool, "full", &accepted).await;
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
        async move { Ok(pending_count(&mut redis).await > 0) }
    })
    .await
    .unwrap();
    let in_hand = pending_count(&mut redis).await;
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
        pending_count(&mut redis).await,
        0,
        "the batch in hand was not acknowledged"
    );
    let stored: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(run_count_query("terminated")))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(stored >= in_hand, "stored {stored}, held {in_hand}");
    // What it had not read yet is there for the next worker.
    stack.start_worker(&Env::new()).unwrap();
    wait_for_count(
        &pool,
        &run_count_query("terminated"),
        50,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
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
    let mut redis = stack.redis().await.unwrap();
    eventually(
        "the worker holds the batch",
        Duration::from_secs(10),
        || {
            let mut redis = redis.clone();
            async move { Ok(pending_count(&mut redis).await == 1) }
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
    let count = run_count_query("commit-no-ack");
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
        pending_count(&mut redis).await,
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
            async move { Ok(pending_count(&mut redis).await == 0) }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_delivered_too_often_is_dead_lettered_when_claimed() {
    let mut stack = Stack::builder()
        .api()
        .worker_env("LOGPIPELINE_CLAIM_IDLE_MS", 300)
        .worker_env("LOGPIPELINE_MAX_DELIVERIES", 3)
        .start()
        .unwrap();
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let response = client
        .post(format!("{}/api/log", stack.api_url().unwrap()))
        .json(&devices::log("crashing", 0, 0))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = response.json().await.unwrap();
    let id = body["message_id"].as_str().unwrap().to_owned();
    // Consumers that each died while holding it: three deliveries already.
    let mut redis = stack.redis().await.unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&[
            "GROUP",
            "log_workers",
            "ghost",
            "STREAMS",
            "logs:stream",
            ">",
        ])
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: redis::Value = redis::cmd("XCLAIM")
        .arg(&[
            "logs:stream",
            "log_workers",
            "ghost",
            "0",
            &id,
            "RETRYCOUNT",
            "3",
        ])
        .query_async(&mut redis)
        .await
        .unwrap();

    stack.start_worker(&Env::new()).unwrap();
    eventually(
        "the entry is dead-lettered",
        Duration::from_secs(30),
        || {
            let mut redis = redis.clone();
            async move { Ok(redis.xlen::<_, i64>("logs:stream:dead").await? == 1) }
        },
    )
    .await
    .unwrap();
    let dead = dead_letters(&mut redis).await;
    let fields = &dead[0];
    assert_eq!(fields["source_id"], id, "{fields:?}");
    assert_eq!(
        fields["reason"], "delivered 4 times without being stored",
        "{fields:?}"
    );
    let metric = "logpipeline_worker_entries_dead_lettered_total{reason=\"too_many_deliveries\"}";
    assert_eq!(stack.workers[0].metric(metric).unwrap(), 1.0);
    assert_eq!(pending_count(&mut redis).await, 0);
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

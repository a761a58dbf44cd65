//! `logpipeline-worker admin`, on a real stack: showing the stream, listing and replaying
//! dead letters, deleting consumers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::time::Duration;

use logpipeline_e2e::devices;
use logpipeline_e2e::stack::{Stack, wait_for_count, wait_for_schema};
use logpipeline_e2e::stream::wait_for_dead_letters;
use redis::AsyncCommands;
use serde_json::Value;

/// Runs `logpipeline-worker admin <args>` against `stack`; (succeeded, printed).
fn admin(stack: &Stack, args: &[&str]) -> (bool, String) {
    stack.worker_admin(args).unwrap()
}

fn admin_json(stack: &Stack, args: &[&str]) -> Value {
    let (ok, printed) = admin(stack, args);
    assert!(ok, "{printed}");
    serde_json::from_str(&printed).unwrap_or_else(|error| panic!("{error}: {printed}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed_once_their_cause_is_fixed() {
    let stack = Stack::builder()
        .api()
        .workers(1)
        .worker_env("LOGPIPELINE_MAX_DELIVERIES", 2)
        .start()
        .unwrap();
    let pool = stack.pool().await.unwrap();
    wait_for_schema(&pool).await.unwrap();
    sqlx::query("alter table logs add constraint no_poison check (device_id <> 'poison')")
        .execute(&pool)
        .await
        .unwrap();
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let url = stack.api_url().unwrap();
    for seq in 0..3 {
        let mut log = devices::log("replayed", 0, seq);
        log["device_id"] = "poison".into();
        let answer = client
            .post(format!("{url}/api/log"))
            .json(&log)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
    }
    let mut redis = stack.redis().await.unwrap();
    wait_for_dead_letters(&redis, "three dead letters", 3, Duration::from_secs(90))
        .await
        .unwrap_or_else(|error| {
            let worker = std::fs::read_to_string(stack.workers[0].log_path()).unwrap_or_default();
            let tail: Vec<&str> = worker.lines().rev().take(40).collect();
            panic!(
                "{error}; the worker's last lines, newest first:\n{}",
                tail.join("\n")
            )
        });

    let report = admin_json(&stack, &["stream", "--json"]);
    assert_eq!(report["dead_letters"], 3, "{report}");
    assert_eq!(report["group"], "log_workers");
    assert_eq!(report["pending"], 0, "{report}");
    let (ok, text) = admin(&stack, &["stream"]);
    assert!(
        ok && text.contains("dead letters 3 in logs:stream:dead"),
        "{text}"
    );

    let letters = admin_json(&stack, &["dead-letters", "list", "--json"]);
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 3);
    for letter in letters {
        assert!(
            letter["reason"].as_str().unwrap().contains("(23514)"),
            "{letter}"
        );
        assert_eq!(letter["deliveries"], "2");
        assert_eq!(letter["logs"], 1);
    }

    let (ok, printed) = admin(&stack, &["dead-letters", "replay", "--dry-run"]);
    assert!(
        ok && printed.contains("would replay 3, kept 0"),
        "{printed}"
    );
    assert_eq!(redis.xlen::<_, i64>("logs:stream:dead").await.unwrap(), 3);

    // The cause goes; the replayed logs are stored, once each.
    sqlx::query("alter table logs drop constraint no_poison")
        .execute(&pool)
        .await
        .unwrap();
    let first = letters[0]["id"].as_str().unwrap();
    let (ok, printed) = admin(&stack, &["dead-letters", "replay", "--id", first]);
    assert!(ok && printed.contains("replayed 1, kept 0"), "{printed}");
    let (ok, printed) = admin(&stack, &["dead-letters", "replay"]);
    assert!(ok && printed.contains("replayed 2, kept 0"), "{printed}");
    assert_eq!(redis.xlen::<_, i64>("logs:stream:dead").await.unwrap(), 0);
    let count = "select count(*) from logs where log_data->>'run' = 'replayed'";
    wait_for_count(&pool, count, 3, Duration::from_secs(30))
        .await
        .unwrap();
    let distinct: i64 = sqlx::query_scalar(
        "select count(distinct message) from logs where log_data->>'run' = 'replayed'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(distinct, 3);

    // An entry no worker can decode stays where it is.
    let _: String = redis
        .xadd(
            "logs:stream",
            "*",
            &[("v", "1"), ("t", "0"), ("logs", "not json")],
        )
        .await
        .unwrap();
    wait_for_dead_letters(
        &redis,
        "the garbage is dead-lettered",
        1,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let (ok, printed) = admin(&stack, &["dead-letters", "replay"]);
    assert!(ok && printed.contains("replayed 0, kept 1"), "{printed}");
    assert_eq!(redis.xlen::<_, i64>("logs:stream:dead").await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_is_deleted_only_once_it_holds_nothing() {
    let stack = Stack::builder().api().start().unwrap();
    let mut redis = stack.redis().await.unwrap();
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    client
        .post(format!("{}/api/log", stack.api_url().unwrap()))
        .json(&devices::log("consumers", 0, 0))
        .send()
        .await
        .unwrap();
    // A worker that read an entry and died.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&[
            "GROUP",
            "log_workers",
            "dead-worker-0",
            "STREAMS",
            "logs:stream",
            ">",
        ])
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: i64 = redis::cmd("XGROUP")
        .arg(&[
            "CREATECONSUMER",
            "logs:stream",
            "log_workers",
            "idle-worker-0",
        ])
        .query_async(&mut redis)
        .await
        .unwrap();

    let (ok, printed) = admin(&stack, &["consumers", "delete", "dead-worker-0"]);
    assert!(
        !ok && printed.contains("still holds 1 pending entries"),
        "{printed}"
    );
    let (ok, printed) = admin(&stack, &["consumers", "delete", "idle-worker-0"]);
    assert!(ok, "{printed}");
    let (ok, printed) = admin(&stack, &["consumers", "delete", "no-such-worker"]);
    assert!(
        !ok && printed.contains("has no consumer no-such-worker"),
        "{printed}"
    );

    let report = admin_json(&stack, &["stream", "--json"]);
    let names: Vec<&str> = report["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|consumer| consumer["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["dead-worker-0"], "{report}");
    assert_eq!(report["pending"], 1);
    assert!(report["oldest_pending_id"].as_str().is_some(), "{report}");
}

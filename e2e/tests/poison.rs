//! Poison entries, on the real binaries: entries PostgreSQL refuses (a check constraint,
//! any SQLSTATE), that no worker can decode, or that were delivered too often are
//! dead-lettered with their reason, while the logs around and behind them are stored
//! exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::collections::HashSet;
use std::time::Duration;

use logpipeline_e2e::devices::{self, Plan};
use logpipeline_e2e::runs::{assert_exactly_once, count_query};
use logpipeline_e2e::stack::{Stack, wait_for_count, wait_for_schema};
use logpipeline_e2e::stream::{dead_letters, pending_count, wait_for_dead_letters};
use logpipeline_local::services::Env;
use redis::AsyncCommands;

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
    wait_for_count(&pool, &count_query("healthy"), 400, Duration::from_secs(30))
        .await
        .unwrap();
    assert_exactly_once(&pool, "healthy", &sent.message_ids)
        .await
        .unwrap();

    wait_for_dead_letters(
        &redis,
        "five entries are dead-lettered",
        5,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let mut rejected = HashSet::new();
    for fields in dead_letters(&mut redis).await.unwrap() {
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
    assert_eq!(pending_count(&mut redis).await.unwrap(), 0);
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
        &count_query(&healthy.run),
        400,
        Duration::from_secs(120),
    )
    .await
    .unwrap_or_else(|error| panic!("{error}{}", stack.worker_log()));
    assert_exactly_once(&pool, &healthy.run, &sent.message_ids)
        .await
        .unwrap();

    let expected = classes.len() + 1;
    wait_for_dead_letters(
        &redis,
        "every refused entry is dead-lettered",
        expected,
        Duration::from_secs(120),
    )
    .await
    .unwrap_or_else(|error| panic!("{error}{}", stack.worker_log()));
    let mut dead_lettered = HashSet::new();
    for fields in dead_letters(&mut redis).await.unwrap() {
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
    assert_eq!(pending_count(&mut redis).await.unwrap(), 0);
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
    wait_for_dead_letters(
        &redis,
        "the entry is dead-lettered",
        1,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    let dead = dead_letters(&mut redis).await.unwrap();
    let fields = &dead[0];
    assert_eq!(fields["source_id"], id, "{fields:?}");
    assert_eq!(
        fields["reason"], "delivered 4 times without being stored",
        "{fields:?}"
    );
    let metric = "logpipeline_worker_entries_dead_lettered_total{reason=\"too_many_deliveries\"}";
    assert_eq!(stack.workers[0].metric(metric).unwrap(), 1.0);
    assert_eq!(pending_count(&mut redis).await.unwrap(), 0);
}

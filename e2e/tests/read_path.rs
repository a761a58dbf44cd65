//! The read path end to end, on the real binaries: queries see every persisted log at
//! once, statistics are exact, and both services report metrics Prometheus can read.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::collections::{BTreeMap, HashMap};

use std::time::Duration;

use logpipeline_e2e::devices::{self, Plan};
use logpipeline_e2e::stack::{Stack, eventually, wait_for_count, wait_for_schema};
use logpipeline_local::services::{Env, http_get};
use serde_json::json;

async fn get(client: &reqwest::Client, url: &str) -> serde_json::Value {
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persisted_log_is_visible_to_the_very_next_query() {
    let stack = Stack::builder().api().workers(1).start().unwrap();
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let api = stack.api_url().unwrap();
    let query = format!("{api}/api/logs/sensor-9?limit=1000");
    wait_for_schema(&stack.pool().await.unwrap()).await.unwrap();
    for round in 0..20 {
        // The device's page is cached…
        get(&client, &query).await;
        let cached = get(&client, &query).await;
        assert_eq!(cached["source"], "cache", "round {round}");
        assert_eq!(cached["total"], round);
        // …a new log is accepted and persisted (stored, cache retired, acknowledged)…
        let sent = client
            .post(format!("{api}/api/log"))
            .json(&json!({"device_id": "sensor-9", "log_level": "INFO", "message": format!("reading {round}")}))
            .send()
            .await
            .unwrap();
        let accepted: serde_json::Value = sent.json().await.unwrap();
        let worker = &stack.workers[0];
        eventually(
            "the worker acknowledges the log",
            Duration::from_secs(10),
            || async {
                Ok(
                    worker.metric("logpipeline_worker_entries_acked_total")?
                        == f64::from(round + 1),
                )
            },
        )
        .await
        .unwrap();
        // …and the next query shows it.
        let fresh = get(&client, &query).await;
        assert_eq!(fresh["total"], round + 1, "round {round}: {fresh}");
        assert_eq!(fresh["data"][0]["message_id"], accepted["message_id"]);
        assert_eq!(fresh["source"], "database");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stats_are_exact_after_a_known_load() {
    let stack = Stack::builder().api().workers(2).start().unwrap();
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let api = stack.api_url().unwrap();
    // Twelve devices send 50 logs each, whose levels cycle through all five; a
    // thirteenth sends one more, to lead the ranking.
    let plan = Plan {
        run: "stats".into(),
        devices: 12,
        single_logs_per_device: 25,
        batches_per_device: 5,
        batch_size: 5,
    };
    devices::send(&client, &api, &plan).await.unwrap();
    let extra = json!({"device_id": "device-011", "log_level": "ERROR", "message": "one more"});
    client
        .post(format!("{api}/api/log"))
        .json(&extra)
        .send()
        .await
        .unwrap();
    let pool = stack.pool().await.unwrap();
    wait_for_count(
        &pool,
        "select count(*) from logs",
        601,
        Duration::from_secs(60),
    )
    .await
    .unwrap();

    let stats = get(&client, &format!("{api}/api/stats")).await;
    assert_eq!(stats["total_logs"], 601);
    let by_level: BTreeMap<String, i64> =
        serde_json::from_value(stats["logs_by_level"].clone()).unwrap();
    let expected = BTreeMap::from([
        ("CRITICAL".to_owned(), 120),
        ("DEBUG".to_owned(), 120),
        ("ERROR".to_owned(), 121),
        ("INFO".to_owned(), 120),
        ("WARNING".to_owned(), 120),
    ]);
    assert_eq!(by_level, expected);
    let top: Vec<String> = std::iter::once("device-011".to_owned())
        .chain((0..9).map(|d| format!("device-{d:03}")))
        .collect();
    assert_eq!(stats["recent_devices"], json!(top));
    assert_eq!(stats["most_active_devices"][0]["count"], 51);
    assert_eq!(stats["most_active_devices"][1]["count"], 50);
    // The same numbers from the counters as from counting the table.
    let counted: i64 = sqlx::query_scalar("select count(*) from logs where log_level = 'ERROR'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(counted, 121);
}

/// The type of each metric family of a scrape in the text exposition format that has
/// samples, by name, as its `# TYPE` line declares it.
fn families(text: &str) -> HashMap<String, &'static str> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("# TYPE ")?.split_whitespace();
            let name = words.next()?;
            let kind = match words.next()? {
                "counter" => "counter",
                "gauge" => "gauge",
                "histogram" => "histogram",
                "summary" => "summary",
                _ => "untyped",
            };
            has_samples(text, name, kind).then(|| (name.to_owned(), kind))
        })
        .collect()
}

/// Whether `text` holds a sample of the family `name` of type `kind`.
fn has_samples(text: &str, name: &str, kind: &str) -> bool {
    let suffixes: &[&str] = match kind {
        "histogram" => &["_bucket", "_sum", "_count"],
        "summary" => &["", "_sum", "_count"],
        _ => &[""],
    };
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.strip_prefix(name))
        .any(|rest| {
            suffixes.iter().any(|suffix| {
                rest.strip_prefix(suffix)
                    .is_some_and(|rest| rest.starts_with(['{', ' ']))
            })
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_services_expose_prometheus_metrics() {
    let mut stack = Stack::builder().api().start().unwrap();
    stack.start_worker(&Env::new()).unwrap();
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let api = stack.api_url().unwrap();
    let plan = Plan {
        run: "metrics".into(),
        devices: 2,
        single_logs_per_device: 5,
        batches_per_device: 1,
        batch_size: 5,
    };
    devices::send(&client, &api, &plan).await.unwrap();
    client
        .post(format!("{api}/api/log"))
        .json(&json!({"device_id": ""}))
        .send()
        .await
        .unwrap();
    // Queries need the schema, which the services apply in the background.
    let pool = stack.pool().await.unwrap();
    wait_for_schema(&pool).await.unwrap();
    get(&client, &format!("{api}/api/logs/device-000")).await;
    wait_for_count(
        &pool,
        "select count(*) from logs",
        20,
        Duration::from_secs(30),
    )
    .await
    .unwrap();

    let text = client
        .get(format!("{api}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let api_families = families(&text);
    for (name, kind) in [
        ("logpipeline_api_http_requests_total", "counter"),
        ("logpipeline_api_http_request_duration_seconds", "histogram"),
        ("logpipeline_api_logs_accepted_total", "counter"),
        ("logpipeline_api_requests_rejected_total", "counter"),
        (
            "logpipeline_api_redis_command_duration_seconds",
            "histogram",
        ),
        (
            "logpipeline_api_postgres_query_duration_seconds",
            "histogram",
        ),
        ("logpipeline_api_cache_lookups_total", "counter"),
    ] {
        assert_eq!(
            api_families.get(name).copied(),
            Some(kind),
            "api: {name}\n{text}"
        );
    }
    let port = stack.workers[0]
        .metrics_url()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let text = http_get(port, "/metrics").unwrap();
    let worker_families = families(&text);
    for (name, kind) in [
        ("logpipeline_worker_batches_total", "counter"),
        ("logpipeline_worker_batch_logs", "histogram"),
        ("logpipeline_worker_insert_duration_seconds", "histogram"),
        ("logpipeline_worker_logs_inserted_total", "counter"),
        ("logpipeline_worker_logs_duplicate_total", "counter"),
        ("logpipeline_worker_entries_dead_lettered_total", "counter"),
        ("logpipeline_worker_entries_claimed_total", "counter"),
        (
            "logpipeline_worker_redis_command_duration_seconds",
            "histogram",
        ),
        ("logpipeline_worker_stream_length", "gauge"),
        ("logpipeline_worker_group_lag", "gauge"),
        ("logpipeline_worker_group_pending", "gauge"),
    ] {
        assert_eq!(
            worker_families.get(name).copied(),
            Some(kind),
            "worker: {name}\n{text}"
        );
    }
    let inserted = stack.workers[0]
        .metric("logpipeline_worker_logs_inserted_total")
        .unwrap();
    assert_eq!(inserted, 20.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_propagated_and_logs_can_be_json() {
    let stack = Stack::builder()
        .api()
        .api_env("LOGPIPELINE_LOG_FORMAT", "json")
        .api_env("RUST_LOG", "info,logpipeline_api=debug")
        .start()
        .unwrap();
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let api = stack.api_url().unwrap();
    let given = client
        .get(format!("{api}/livez"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(given.headers()["x-request-id"], "trace-me-42");
    let made = client.get(format!("{api}/livez")).send().await.unwrap();
    let id = made.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a UUID: {id}");

    let log = stack.api.as_ref().unwrap().log_path().to_owned();
    eventually(
        "the request is logged with its id",
        Duration::from_secs(10),
        || {
            let log = log.clone();
            async move {
                let text = std::fs::read_to_string(&log)?;
                for line in text.lines() {
                    let _: serde_json::Value = serde_json::from_str(line)?;
                }
                Ok(text.contains("trace-me-42"))
            }
        },
    )
    .await
    .unwrap();
}

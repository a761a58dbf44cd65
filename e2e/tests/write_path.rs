//! The write path end to end, on the real binaries: every accepted log reaches
//! PostgreSQL exactly once, through worker crashes, a PostgreSQL outage, poison entries,
//! backpressure and shutdowns.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use logpipeline_e2e::devices::{self, Plan};
use logpipeline_e2e::services::Env;
use logpipeline_e2e::stack::{Stack, eventually, wait_for_count};
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
    let rows: Vec<(String, String)> = sqlx::query_as(
        "select message_id, message from logs where log_data @> jsonb_build_object('run', $1::text)",
    )
    .bind(run)
    .fetch_all(pool)
    .await
    .unwrap();
    let ids: HashSet<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
    let messages: HashSet<&str> = rows.iter().map(|(_, message)| message.as_str()).collect();
    let accepted_ids: HashSet<&str> = accepted.iter().map(String::as_str).collect();
    assert_eq!(accepted_ids.len(), accepted.len(), "the api gave an id twice");
    assert_eq!(rows.len(), accepted.len(), "rows stored vs logs accepted");
    assert_eq!(ids.len(), rows.len(), "duplicate message ids");
    assert_eq!(messages.len(), rows.len(), "a log was stored twice");
    assert_eq!(ids, accepted_ids, "stored ids differ from accepted ids");
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
    let client = reqwest::Client::new();
    let started = Instant::now();
    let sent = devices::send(&client, &stack.api_url().unwrap(), &plan).await.unwrap();
    let sending = started.elapsed();
    assert_eq!(sent.message_ids.len(), plan.total_logs());

    let pool = stack.pool().await.unwrap();
    let drain = wait_for_count(&pool, &run_count_query(&plan.run), 100_000, Duration::from_secs(180))
        .await
        .unwrap();
    assert_exactly_once(&pool, &plan.run, &sent.message_ids).await;
    println!(
        "sent {} logs in {} requests in {sending:?}; all 100000 stored, no duplicates, {drain:?} after the last was accepted",
        sent.message_ids.len(),
        sent.requests
    );
}

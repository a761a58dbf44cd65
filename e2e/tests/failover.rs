//! A PostgreSQL standby that takes over, on the real binaries: a primary with a streaming
//! standby (`pg_basebackup`), the api and a worker given both in one multi-host URL. The
//! primary stops mid-load and the standby is promoted (`pg_ctl promote`): the worker and
//! the api follow it, every accepted log is stored exactly once, and the counters and
//! queries answer from the new primary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::time::Duration;

use logpipeline_e2e::devices::{Flow, send_until};
use logpipeline_e2e::runs::{assert_exactly_once, count_query, pool};
use logpipeline_e2e::stack::{eventually, wait_for_count};
use logpipeline_local::postgres::{self, PostgresServer};
use logpipeline_local::redis::RedisServer;
use logpipeline_local::services::{ApiProcess, Env, WorkerProcess};
use serde_json::Value;
use sqlx::PgPool;

async fn count(pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(pool)
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_worker_and_the_api_follow_a_promoted_standby_and_store_every_log_once() {
    let redis = RedisServer::start().unwrap();
    let mut primary = PostgresServer::start().unwrap();
    let primary_url = primary.create_database().unwrap();
    let database = primary_url.rsplit('/').next().unwrap().to_owned();
    let standby = PostgresServer::start_standby_of(&primary).unwrap();
    let url = format!(
        "{}?target_session_attrs=read-write",
        postgres::multi_host_url(&[&primary, &standby], &database)
    );
    let api = ApiProcess::start(&redis.url(), &url, &Env::new()).unwrap();
    let mut worker = WorkerProcess::start(&redis.url(), &url, &Env::new()).unwrap();
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let api_url = api.url();

    let run = "failover";
    let flow = Flow::default();
    let sending = send_until(
        &client,
        &api_url,
        run,
        10,
        5,
        Duration::from_millis(20),
        &flow,
    );
    let switch = async {
        // Stored on the primary, and streamed to the standby, before the switch.
        let on_primary = pool(&primary_url).await.unwrap();
        eventually(
            "logs are stored on the primary",
            Duration::from_secs(120),
            || async { Ok(count(&on_primary, &count_query(run)).await? >= 2_000) },
        )
        .await
        .unwrap();
        on_primary.close().await;
        // The primary goes (a fast shutdown sends the standby all of its WAL first),
        // and the standby takes over while the devices go on sending.
        primary.stop().unwrap();
        let accepted_at_stop = flow.accepted();
        standby.promote().unwrap();
        let on_standby = pool(&standby.url(&database)).await.unwrap();
        let stored_at_promotion = count(&on_standby, &count_query(run)).await.unwrap();
        // Logs accepted after the promotion, stored there: the worker followed.
        eventually(
            "logs accepted after the promotion are stored on the new primary",
            Duration::from_secs(120),
            || async {
                Ok(flow.accepted() >= accepted_at_stop + 200
                    && count(&on_standby, &count_query(run)).await? >= stored_at_promotion + 1_000)
            },
        )
        .await
        .unwrap();
        flow.stop();
        on_standby
    };
    let (sent, on_standby) = tokio::join!(sending, switch);
    assert!(
        sent.failed.is_empty(),
        "{:?}",
        &sent.failed[..sent.failed.len().min(5)]
    );

    let accepted = i64::try_from(sent.message_ids.len()).unwrap();
    wait_for_count(
        &on_standby,
        &count_query(run),
        accepted,
        Duration::from_secs(120),
    )
    .await
    .unwrap();
    assert_exactly_once(&on_standby, run, &sent.message_ids)
        .await
        .unwrap();
    worker.process().ensure_running().unwrap();
    let worker_log = std::fs::read_to_string(worker.log_path()).unwrap();
    assert!(
        worker_log.contains("PostgreSQL's primary moved; following it"),
        "the worker did not report the move:\n{worker_log}"
    );

    // The api reads from the new primary too: its counters hold every stored log.
    eventually(
        "the api's stats count every log",
        Duration::from_secs(60),
        || async {
            let stats: Value = client
                .get(format!("{api_url}/api/stats"))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            Ok(stats["total_logs"] == accepted)
        },
    )
    .await
    .unwrap();
    println!(
        "{accepted} logs accepted across the failover, all stored once on the promoted standby ({} refused with a retry)",
        sent.refused.values().sum::<usize>()
    );
}

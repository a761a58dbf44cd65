//! The pipeline on a real Redis Cluster (3 masters, 3 replicas, Debian's redis-server in
//! cluster mode, joined by `redis-cli --cluster create`), through the redis crate's
//! cluster client: three shards spread over the masters store every log once and in
//! each device's order, and `admin` reads each of them; with replicated acceptance a
//! master SIGKILLed mid-load, whose replica the cluster promotes, loses nothing and
//! duplicates nothing; and a master that fails stops only its own shards.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use logpipeline_core::stream::Shards;
use logpipeline_e2e::devices::{self, Plan};
use logpipeline_e2e::runs::{
    assert_in_device_order, assert_stored_exactly_once, count_query, pool, run_id, shard_of,
};
use logpipeline_e2e::stack::eventually;
use logpipeline_local::postgres::PostgresServer;
use logpipeline_local::redis::RedisCluster;
use logpipeline_local::services::{ApiProcess, Env, WorkerProcess, binaries_dir};
use serde_json::{Value, json};
use sqlx::PgPool;

fn on_cluster(more: &[(&str, &str)]) -> Env {
    let mut env = Env::from([
        ("LOGPIPELINE_REDIS_CLUSTER".into(), "true".into()),
        ("LOGPIPELINE_STREAM_SHARDS".into(), "3".into()),
    ]);
    env.extend(more.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_shards_on_a_redis_cluster_store_every_log_once_and_in_order() {
    let cluster = RedisCluster::start(3, 1).unwrap();
    let postgres = PostgresServer::start().unwrap();
    let database = postgres.create_database().unwrap();
    let env = on_cluster(&[]);
    let api = ApiProcess::start(&cluster.url(), &database, &env).unwrap();
    let _workers = [
        WorkerProcess::start(&cluster.url(), &database, &env).unwrap(),
        WorkerProcess::start(&cluster.url(), &database, &env).unwrap(),
    ];
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let plan = Plan {
        run: run_id("cluster"),
        devices: 100,
        single_logs_per_device: 20,
        batches_per_device: 4,
        batch_size: 50,
    };
    let sent = devices::send(&client, &api.url(), &plan).await.unwrap();
    let used: BTreeSet<u32> = sent
        .message_ids
        .iter()
        .map(|id| shard_of(id).unwrap())
        .collect();
    assert_eq!(used, BTreeSet::from([0, 1, 2]));
    let masters: BTreeSet<usize> = Shards::on_cluster("logs:stream", 3)
        .keys()
        .iter()
        .map(|key| cluster.master_of(key).unwrap())
        .collect();
    println!("3 shards on {} of the 3 masters", masters.len());

    let pool = pool(&database).await.unwrap();
    assert_eq!(sent.message_ids.len(), plan.total_logs());
    assert_stored_exactly_once(
        &pool,
        &plan.run,
        &sent.message_ids,
        Duration::from_secs(300),
    )
    .await
    .unwrap();
    assert_in_device_order(&pool, &plan.run).await.unwrap();

    // `admin stream` reads each shard through the cluster client.
    for (shard, key) in Shards::on_cluster("logs:stream", 3)
        .keys()
        .iter()
        .enumerate()
    {
        let output = Command::new(binaries_dir().unwrap().join("logpipeline-worker"))
            .args(["admin", "--shard", &shard.to_string(), "stream", "--json"])
            .env("REDIS_URL", cluster.url())
            .env("LOGPIPELINE_REDIS_CLUSTER", "true")
            .output()
            .unwrap();
        let printed = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{printed}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: Value = serde_json::from_str(&printed).unwrap();
        assert_eq!(report["stream"], key.as_str(), "{report}");
        assert!(report["length"].is_u64(), "{report}");
        let consumers = report["consumers"].as_array().unwrap();
        assert_eq!(consumers.len(), 2, "each worker reads each shard: {report}");
        assert_eq!(report["group"], "log_workers", "{report}");
        assert!(report["lag"].is_u64(), "{report}");
    }
}

/// Sends `batches` batches of 5 logs as device `device`, one at a time, each with an
/// Idempotency-Key of its own, again and again until it is answered 200 (a 503, a 504,
/// a broken connection are retried, as a client should); returns when each batch was
/// answered 200, and the ids of its logs.
async fn send_with_retries(
    client: &reqwest::Client,
    api: &str,
    run: &str,
    device: usize,
    batches: usize,
) -> Vec<(Instant, Vec<String>)> {
    let mut answered = Vec::new();
    for batch in 0..batches {
        let logs: Vec<Value> = (batch * 5..batch * 5 + 5)
            .map(|seq| devices::log(run, device, seq))
            .collect();
        let key = format!("{run}-{device}-{batch}");
        loop {
            let answer = client
                .post(format!("{api}/api/logs/batch"))
                .header("Idempotency-Key", &key)
                .json(&json!({ "logs": logs }))
                .send()
                .await;
            if let Ok(response) = answer
                && response.status().as_u16() == 200
                && let Ok(body) = response.json::<Value>().await
            {
                let ids = body["message_ids"].as_array().unwrap();
                let ids = ids.iter().map(|id| id.as_str().unwrap().to_owned());
                answered.push((Instant::now(), ids.collect()));
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    answered
}

/// Kills the master of shard 1 once `run` has logs stored, waits until the cluster has
/// promoted its replica, and brings the killed node back as a replica; returns when the
/// master was killed.
async fn fail_over_shard_1(cluster: &mut RedisCluster, pool: &PgPool, run: &str) -> Instant {
    eventually("logs flow", Duration::from_secs(120), || async {
        let stored: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(count_query(run)))
            .fetch_one(pool)
            .await?;
        Ok(stored >= 500)
    })
    .await
    .unwrap();
    let shard = Shards::on_cluster("logs:stream", 3).keys()[1].clone();
    let master = cluster.master_of(&shard).unwrap();
    cluster.kill(master).unwrap();
    let killed_at = Instant::now();
    // The cluster promotes the master's replica; the killed node comes back as a
    // replica of it, so the shard has a replica to acknowledge again.
    cluster.wait_until_whole().unwrap();
    assert_ne!(cluster.master_of(&shard).unwrap(), master);
    cluster.restart(master).unwrap();
    cluster.wait_until_whole().unwrap();
    killed_at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_replicated_acceptance_a_killed_master_loses_and_duplicates_nothing() {
    let mut cluster = RedisCluster::start(3, 1).unwrap();
    let postgres = PostgresServer::start().unwrap();
    let database = postgres.create_database().unwrap();
    let env = on_cluster(&[
        ("LOGPIPELINE_REDIS_DURABILITY", "replicated"),
        ("LOGPIPELINE_REDIS_REPLICA_TIMEOUT_MS", "2000"),
        ("LOGPIPELINE_REDIS_TIMEOUT_SECS", "3"),
    ]);
    let api = ApiProcess::start(&cluster.url(), &database, &env).unwrap();
    let _worker = WorkerProcess::start(&cluster.url(), &database, &env).unwrap();
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let run = run_id("cluster-failover");
    let (devices, batches) = (20, 200);

    let api_url = api.url();
    let sending = futures::future::join_all(
        (0..devices).map(|device| send_with_retries(&client, &api_url, &run, device, batches)),
    );
    let pool = pool(&database).await.unwrap();
    let failover = fail_over_shard_1(&mut cluster, &pool, &run);
    let (sent, _) = tokio::join!(sending, failover);
    let accepted: Vec<String> = sent
        .into_iter()
        .flatten()
        .flat_map(|(_, ids)| ids)
        .collect();
    assert_eq!(accepted.len(), devices * batches * 5);
    assert_stored_exactly_once(&pool, &run, &accepted, Duration::from_secs(300))
        .await
        .unwrap();
    assert_in_device_order(&pool, &run).await.unwrap();
}

/// With the default acceptance (the master's copy), a master SIGKILLed mid-load loses
/// at most what it answered in the moment before, which its replica had not received
/// yet (docs/operations.md, "Redis Cluster"); everything else is stored exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn with_the_default_acceptance_a_killed_master_loses_at_most_its_last_moment() {
    let mut cluster = RedisCluster::start(3, 1).unwrap();
    let postgres = PostgresServer::start().unwrap();
    let database = postgres.create_database().unwrap();
    let env = on_cluster(&[("LOGPIPELINE_REDIS_TIMEOUT_SECS", "3")]);
    let api = ApiProcess::start(&cluster.url(), &database, &env).unwrap();
    let worker = WorkerProcess::start(&cluster.url(), &database, &env).unwrap();
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let run = run_id("cluster-default");
    let api_url = api.url();
    let sending = futures::future::join_all(
        (0..20).map(|device| send_with_retries(&client, &api_url, &run, device, 200)),
    );
    let pool = pool(&database).await.unwrap();
    let failover = fail_over_shard_1(&mut cluster, &pool, &run);
    let (sent, killed_at) = tokio::join!(sending, failover);
    let answered: Vec<(Instant, Vec<String>)> = sent.into_iter().flatten().collect();
    let accepted: Vec<String> = answered.iter().flat_map(|(_, ids)| ids.clone()).collect();
    assert_eq!(accepted.len(), 20 * 200 * 5);
    // Done when every shard's group has read and acknowledged all its entries.
    eventually("the worker is done", Duration::from_secs(300), || async {
        let lag = worker.metric("logpipeline_worker_group_lag")?;
        let pending = worker.metric("logpipeline_worker_group_pending")?;
        Ok(lag == 0.0 && pending == 0.0)
    })
    .await
    .unwrap();
    let stored = devices::stored(&pool, &run, &accepted).await.unwrap();
    let rows: BTreeSet<String> = sqlx::query_scalar(
        "select message_id from logs where log_data @> jsonb_build_object('run', $1::text)",
    )
    .bind(&run)
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let moment = Duration::from_secs(1);
    for (at, ids) in &answered {
        if ids.iter().any(|id| !rows.contains(id)) {
            assert!(
                *at <= killed_at && killed_at.duration_since(*at) <= moment,
                "a log answered {:?} before the kill is lost",
                killed_at.saturating_duration_since(*at)
            );
        }
    }
    println!(
        "default acceptance across a master's SIGKILL: {} of {} logs lost (answered within {moment:?} before it), {} stored twice",
        stored.missing,
        accepted.len(),
        stored.duplicate_messages
    );
}

/// A master that holds some shards and not all of them, a device whose logs go to one
/// of its shards, and one whose logs go to another master's.
fn a_master_and_devices_on_and_off_it(cluster: &RedisCluster) -> (usize, usize, usize) {
    let shards = Shards::on_cluster("logs:stream", 3);
    let masters: Vec<usize> = shards
        .keys()
        .iter()
        .map(|key| cluster.master_of(key).unwrap())
        .collect();
    let master = *masters
        .iter()
        .find(|master| masters.iter().any(|other| other != *master))
        .expect("the shards' keys are on more than one master");
    let device_where = |on: bool| {
        (0..1000)
            .find(|device| {
                let shard = shards.of("default", &format!("device-{device:03}"));
                (masters[shard] == master) == on
            })
            .unwrap()
    };
    (master, device_where(true), device_where(false))
}

/// A shard whose master stops answering holds up only the requests that go to it: with
/// more of them in flight than the api has writers, the other shards' devices are still
/// answered at once, while the frozen shard's requests wait; once the master thaws,
/// they are answered too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_master_holds_up_only_its_own_shard() {
    let cluster = RedisCluster::start(3, 0).unwrap();
    let postgres = PostgresServer::start().unwrap();
    let database = postgres.create_database().unwrap();
    // A long Redis timeout: the frozen shard's requests wait as long as the test looks.
    let env = on_cluster(&[("LOGPIPELINE_REDIS_TIMEOUT_SECS", "120")]);
    let api = ApiProcess::start(&cluster.url(), &database, &env).unwrap();
    let (frozen, held_device, healthy_device) = a_master_and_devices_on_and_off_it(&cluster);
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let post = |device: usize, seq: usize| {
        client
            .post(format!("{}/api/log", api.url()))
            .json(&devices::log("frozen-shard", device, seq))
            .send()
    };
    assert_eq!(post(healthy_device, 0).await.unwrap().status(), 200);

    cluster.nodes()[frozen]
        .signal(nix::sys::signal::Signal::SIGSTOP)
        .unwrap();
    // More requests of the frozen shard than the api has writers, all in flight.
    let held: Vec<_> = (1..=8)
        .map(|seq| tokio::spawn(post(held_device, seq)))
        .collect();
    let metrics = format!("{}/metrics", api.url());
    eventually(
        "the frozen shard's requests are in flight",
        Duration::from_secs(60),
        || async {
            let text = client.get(&metrics).send().await?.text().await?;
            let in_flight = logpipeline_local::services::metric_value(
                &text,
                "logpipeline_api_http_requests_in_flight{route=\"/api/log\"}",
            );
            Ok(in_flight.is_some_and(|count| count >= 8.0))
        },
    )
    .await
    .unwrap();
    for seq in 1..=5 {
        let answer = post(healthy_device, seq).await.unwrap();
        assert_eq!(answer.status(), 200, "a healthy shard's device");
    }
    assert!(
        held.iter().all(|request| !request.is_finished()),
        "the healthy shard's requests were answered only once the frozen ones were"
    );

    cluster.nodes()[frozen]
        .signal(nix::sys::signal::Signal::SIGCONT)
        .unwrap();
    for request in held {
        let status = request.await.unwrap().unwrap().status();
        assert_eq!(status, 200, "the frozen shard's requests, once it thaws");
    }
}

/// A master that has failed for good (no replica to take over; the cluster holds it
/// failed) stops only its own shards: the others' devices are still answered, since the
/// cluster does not refuse every command while some slots have no master
/// (`cluster-require-full-coverage no`), and its own shard's devices are told to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_master_stops_only_its_own_shard() {
    let mut cluster = RedisCluster::start(3, 0).unwrap();
    let postgres = PostgresServer::start().unwrap();
    let database = postgres.create_database().unwrap();
    let api = ApiProcess::start(&cluster.url(), &database, &on_cluster(&[])).unwrap();
    let (failed, lost_device, healthy_device) = a_master_and_devices_on_and_off_it(&cluster);
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let post = |device: usize, seq: usize| {
        client
            .post(format!("{}/api/log", api.url()))
            .json(&devices::log("failed-shard", device, seq))
            .send()
    };
    assert_eq!(post(healthy_device, 0).await.unwrap().status(), 200);
    assert_eq!(post(lost_device, 0).await.unwrap().status(), 200);

    cluster.kill(failed).unwrap();
    cluster.wait_until_failed(failed).unwrap();
    for seq in 1..=5 {
        let answer = post(healthy_device, seq).await.unwrap();
        let status = answer.status();
        assert_eq!(
            status,
            200,
            "a healthy shard's device: {}",
            answer.text().await.unwrap()
        );
    }
    let status = post(lost_device, 1).await.unwrap().status();
    assert!(
        [503, 504].contains(&status.as_u16()),
        "the failed shard's device is answered {status}"
    );
}

//! A second pipeline, with 3 shards on a Redis Cluster of 6 pods (3 masters, 3
//! replicas) and replicated acceptance: devices send through the Ingress, every log is
//! stored once and in each device's order, each shard lives on a master of its own, and
//! the operator reads each shard's lag through the cluster.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use logpipeline_core::stream::Shards;
use logpipeline_e2e::devices::{self, Plan};
use logpipeline_e2e::runs::{assert_in_device_order, shard_of};
use logpipeline_local::auth::keys_file;
use logpipeline_local::kube::repo_root;
use logpipeline_local::node::{INGRESS_HTTP_PORT, NodeCluster};
use logpipeline_local::process::wait_until;
use serde_json::{Value, json};

use crate::support::{self, assert_stored_exactly_once, wait_for_condition};

const NS: &str = "logs-sharded";
const PIPELINE: &str = "sharded";
const HOST: &str = "sharded.example.com";
const SHARDS: u32 = 3;

/// `redis-cli` with `args` in the Redis Cluster's pod `pod`.
fn redis_cli(cluster: &NodeCluster, pod: &str, args: &[&str]) -> Result<String> {
    let mut command = vec!["exec", "-n", NS, pod, "--", "redis-cli"];
    command.extend_from_slice(args);
    cluster.kubectl(&command)
}

/// The Redis Cluster's pods by name, with their addresses.
fn redis_pods(cluster: &NodeCluster) -> Result<BTreeMap<String, String>> {
    let list = cluster.get_json(&["-n", NS, "pods", "-l", "app=redis-cluster"])?;
    list["items"]
        .as_array()
        .context("no pod list")?
        .iter()
        .map(|pod| {
            let name = pod["metadata"]["name"]
                .as_str()
                .context("a pod without name")?;
            let ip = pod["status"]["podIP"]
                .as_str()
                .context("a pod without address")?;
            Ok((name.to_owned(), ip.to_owned()))
        })
        .collect()
}

/// Starts the six pods and joins them into 3 masters with a replica each, as an operator
/// of Redis would with `redis-cli --cluster create`; waits until every node sees all six
/// and every slot served, and every replica is in sync with its master.
fn start_redis_cluster(cluster: &NodeCluster) -> Result<BTreeMap<String, String>> {
    let fixture = repo_root().join("local/k8s/fixtures/redis-cluster.yaml");
    cluster.kubectl(&["apply", "-n", NS, "-f", &fixture.to_string_lossy()])?;
    cluster.kubectl(&[
        "rollout",
        "status",
        "-n",
        NS,
        "statefulset/redis-cluster",
        "--timeout=180s",
    ])?;
    let pods = redis_pods(cluster)?;
    let nodes: Vec<String> = pods.values().map(|ip| format!("{ip}:6379")).collect();
    let mut create = vec!["--cluster", "create"];
    create.extend(nodes.iter().map(String::as_str));
    create.extend(["--cluster-replicas", "1", "--cluster-yes"]);
    let first = pods.keys().next().context("no Redis pod")?;
    redis_cli(cluster, first, &create)?;
    wait_until(
        "every Redis node sees six nodes and every slot served, every replica in sync",
        Duration::from_secs(120),
        || {
            for pod in pods.keys() {
                let info = redis_cli(cluster, pod, &["cluster", "info"])?;
                if !info.contains("cluster_state:ok") || !info.contains("cluster_known_nodes:6") {
                    return Ok(false);
                }
                let replication = redis_cli(cluster, pod, &["info", "replication"])?;
                let replica = replication.lines().any(|line| line.trim() == "role:slave");
                if replica
                    && !replication
                        .lines()
                        .any(|line| line.trim() == "master_link_status:up")
                {
                    return Ok(false);
                }
            }
            Ok(true)
        },
    )?;
    Ok(pods)
}

/// The Secrets the pipeline names, and the pipeline: 3 shards on the Redis Cluster,
/// answered once a replica holds the logs, storing into the shared pipeline's
/// PostgreSQL, behind an Ingress of its own without TLS.
fn apply_pipeline(cluster: &NodeCluster, keys: &str) -> Result<()> {
    let secret = |name: &str, key: &str, value: &str| {
        json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "type": "Opaque",
            "stringData": {key: value},
        })
    };
    let resources =
        json!({"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}});
    let pipeline = json!({
        "apiVersion": "logpipeline.io/v1alpha1",
        "kind": "LogPipeline",
        "metadata": {"name": PIPELINE},
        "spec": {
            "redisSecretRef": {"name": "sharded-redis", "key": "url"},
            "databaseSecretRef": {"name": "sharded-postgres", "key": "url"},
            "redis": {"shards": SHARDS, "cluster": true, "durability": "replicated"},
            "auth": {"keysSecretRef": {"name": "sharded-keys", "key": "keys.yaml"}},
            "api": {
                "image": "logpipeline-api:0.1.0",
                "autoscaling": {"minReplicas": 1, "maxReplicas": 1},
                "resources": resources,
                "ingress": {"host": HOST},
            },
            "worker": {
                "image": "logpipeline-worker:0.1.0",
                "minReplicas": 1,
                "maxReplicas": 1,
                "lagPollSecs": 2,
                "resources": resources,
            },
        },
    });
    let list = json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            secret("sharded-redis", "url", "redis://redis-cluster:6379"),
            secret(
                "sharded-postgres",
                "url",
                &format!("postgres://logpipeline:change-me@postgres.{}.svc:5432/logpipeline", support::NS),
            ),
            secret("sharded-keys", "keys.yaml", keys),
            pipeline,
        ],
    });
    cluster.kubectl_stdin(&["apply", "-n", NS, "-f", "-"], &list.to_string())?;
    Ok(())
}

/// Which of the shards' streams each Redis pod holds (masters and replicas alike).
fn streams_by_pod(
    cluster: &NodeCluster,
    pods: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, Vec<String>>> {
    let shards: BTreeSet<String> = Shards::on_cluster("logs:stream", SHARDS)
        .keys()
        .iter()
        .cloned()
        .collect();
    let mut held = BTreeMap::new();
    for pod in pods.keys() {
        let keys = redis_cli(cluster, pod, &["--scan", "--pattern", "*logs:stream*"])?;
        let streams: Vec<String> = keys
            .lines()
            .filter(|key| shards.contains(*key))
            .map(str::to_owned)
            .collect();
        let role = redis_cli(cluster, pod, &["role"])?;
        if role.starts_with("master") {
            held.insert(pod.clone(), streams);
        }
    }
    Ok(held)
}

#[test]
fn three_shards_on_a_redis_cluster_in_pods_store_every_log_once_and_in_order() {
    let (_turn, cluster, shared) = support::start();
    cluster.create_namespace(NS).unwrap();
    let pods = start_redis_cluster(cluster).unwrap();
    apply_pipeline(cluster, &keys_file(&[&shared.key])).unwrap();
    wait_for_condition(
        cluster,
        (NS, PIPELINE),
        ("Ready", "True"),
        Duration::from_secs(300),
    )
    .unwrap();

    let node_ip = cluster.info().node_ip;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        shared.key.bearer().parse().unwrap(),
    );
    let client = logpipeline_e2e::http_client(|builder| {
        builder
            .resolve(HOST, SocketAddr::from((node_ip, INGRESS_HTTP_PORT)))
            .timeout(Duration::from_secs(30))
            .default_headers(headers)
    })
    .unwrap();
    let base_url = format!("http://{HOST}:{INGRESS_HTTP_PORT}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    wait_until(
        "the Ingress routes to the sharded pipeline's api",
        Duration::from_secs(180),
        || {
            let answer = runtime
                .block_on(async { client.get(format!("{base_url}/api/stats")).send().await });
            Ok(answer.is_ok_and(|response| response.status() == 200))
        },
    )
    .unwrap();

    let plan = Plan {
        run: "k8s-redis-cluster".to_owned(),
        devices: 30,
        single_logs_per_device: 10,
        batches_per_device: 10,
        batch_size: 20,
    };
    let sent = runtime
        .block_on(devices::send(&client, &base_url, &plan))
        .unwrap();
    assert_eq!(sent.message_ids.len(), plan.total_logs());
    let used: BTreeSet<u32> = sent
        .message_ids
        .iter()
        .map(|id| shard_of(id).unwrap())
        .collect();
    assert_eq!(used, BTreeSet::from([0, 1, 2]), "every shard took logs");
    runtime.block_on(async {
        assert_stored_exactly_once(&plan.run, &sent.message_ids, Duration::from_secs(300)).await;
        let pool = shared.pool().await.unwrap();
        assert_in_device_order(&pool, &plan.run).await.unwrap();
    });

    // Each shard is a key of its own slot, and the three land on the three masters.
    let held = streams_by_pod(cluster, &pods).unwrap();
    println!("the shards' streams on each master: {held:?}");
    assert_eq!(held.len(), 3, "three masters: {held:?}");
    assert!(
        held.values().all(|streams| streams.len() == 1),
        "one shard per master: {held:?}"
    );

    // The operator reads every shard's lag through the cluster client.
    let mut status = Value::Null;
    wait_until(
        "the operator reports each shard's lag, all of it consumed",
        Duration::from_secs(120),
        || {
            let lp = cluster.get_json(&["-n", NS, "logpipeline", PIPELINE])?;
            status = lp["status"].clone();
            Ok(status["shardLag"] == json!([0, 0, 0]) && status["lag"] == json!(0))
        },
    )
    .unwrap_or_else(|error| panic!("{error:#}; last status: {status}"));
    println!(
        "{} logs from {} devices over {SHARDS} shards; status {status}",
        sent.message_ids.len(),
        plan.devices
    );
    cluster
        .kubectl(&["delete", "namespace", NS, "--wait=false"])
        .unwrap();
}

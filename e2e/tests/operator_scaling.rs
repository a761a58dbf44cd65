//! The operator's lag-based scaling against a real kube-apiserver and a real Redis: the
//! workers scale up at once with the backlog and down after the stabilisation window,
//! and status, Events and metrics say so.
//!
//! Every test has its own namespace and its own operator process (watching only that
//! namespace) on one shared control plane.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use anyhow::{Context, Result};
use logpipeline_e2e::operator::{WAIT, apply, cluster, get, pipeline, secret, start_operator};
use logpipeline_local::kube::KubeCluster;
use logpipeline_local::process::wait_until;
use logpipeline_local::redis::RedisServer;

fn worker_replicas(cluster: &KubeCluster, ns: &str, deployment: &str) -> Result<i64> {
    get(cluster, ns, &format!("deployment/{deployment}"))?["spec"]["replicas"]
        .as_i64()
        .context("no replicas")
}

#[test]
fn lag_in_redis_scales_the_workers_up_at_once_and_down_after_the_window() {
    let cluster = cluster();
    let ns = "scaling";
    cluster.create_namespace(ns).unwrap();
    let redis = RedisServer::start().unwrap();
    secret(cluster, ns, "redis", &redis.url()).unwrap();
    secret(
        cluster,
        ns,
        "postgres",
        "postgres://unused@127.0.0.1:1/unused",
    )
    .unwrap();
    apply(cluster, ns, &pipeline("logs", "redis")).unwrap();

    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_connection().unwrap();
    redis::cmd("XGROUP")
        .arg(&["CREATE", "logs:stream", "log_workers", "$", "MKSTREAM"])
        .exec(&mut con)
        .unwrap();
    for i in 0..450 {
        redis::cmd("XADD")
            .arg("logs:stream")
            .arg("*")
            .arg("n")
            .arg(i)
            .exec(&mut con)
            .unwrap();
    }

    let operator = start_operator(cluster, ns);
    wait_until("the workers scale up to clear 450 entries", WAIT, || {
        Ok(worker_replicas(cluster, ns, "logs-worker").is_ok_and(|n| n == 5))
    })
    .unwrap_or_else(|error| panic!("{error:#}\n{}", operator.log_tail(40)));
    wait_until("the status shows the lag", WAIT, || {
        let lp = get(cluster, ns, "logpipeline/logs")?;
        Ok(lp["status"]["lag"] == 450
            && lp["status"]["workerReplicas"] == 5
            && lp["status"]["lastScaleTime"].is_string())
    })
    .unwrap();

    // The workers catch up: read and acknowledge everything.
    let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg(&[
            "GROUP",
            "log_workers",
            "test",
            "COUNT",
            "1000",
            "STREAMS",
            "logs:stream",
            ">",
        ])
        .query(&mut con)
        .unwrap();
    let ids: Vec<String> = read.keys[0]
        .ids
        .iter()
        .map(|entry| entry.id.clone())
        .collect();
    assert_eq!(ids.len(), 450);
    let acked: usize = redis::cmd("XACK")
        .arg("logs:stream")
        .arg("log_workers")
        .arg(&ids)
        .query(&mut con)
        .unwrap();
    assert_eq!(acked, 450);

    wait_until("the workers scale back down", WAIT, || {
        Ok(worker_replicas(cluster, ns, "logs-worker").is_ok_and(|n| n == 1))
    })
    .unwrap_or_else(|error| panic!("{error:#}\n{}", operator.log_tail(40)));
    let events = cluster
        .get_json(&[
            "events",
            "-n",
            ns,
            "--field-selector",
            "reason=ScaledWorkers",
        ])
        .unwrap();
    let notes: Vec<String> = events["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["message"]
                .as_str()
                .or(e["note"].as_str())
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("Scaled workers from 1 to 5")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("Scaled workers from 5 to 1")),
        "{notes:?}"
    );
    let scaled = operator
        .metric(&format!(
            "logpipeline_operator_scaling_decisions_total{{direction=\"down\",namespace=\"{ns}\",pipeline=\"logs\"}}"
        ))
        .unwrap();
    assert_eq!(scaled, Some(1.0));
}

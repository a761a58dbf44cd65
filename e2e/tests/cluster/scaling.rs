//! Scaling under real load: the operator adds workers on lag, the HPA adds api pods on
//! CPU, and both go after the load.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use logpipeline_e2e::devices::Flow;
use logpipeline_local::process::wait_until;
use serde_json::json;

use crate::support::{
    self, NS, PIPELINE, Timeline, add_backlog, assert_stored_exactly_once, backlog, cluster,
    consumers, is_ready, patch_pipeline, pods, send_in_background, wait_rolled_out,
};

/// The worker Deployment's `spec.replicas` (what the operator asks for).
fn worker_replicas() -> u64 {
    let deployment = cluster()
        .get_json(&["-n", NS, "deployment", &format!("{PIPELINE}-worker")])
        .unwrap();
    deployment["spec"]["replicas"].as_u64().unwrap_or(0)
}

#[test]
fn a_burst_scales_the_workers_up_the_new_pods_consume_and_scale_down_after_the_window() {
    let (_turn, cluster, pipeline) = support::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    // Slow workers (one consumer of batches of 10 on a tenth of a CPU each), 1,000
    // entries of backlog per pod, a lag read every 2 s and a 20 s window.
    patch_pipeline(
        cluster,
        &json!({"worker": {
            "concurrency": 1,
            "batchSize": 10,
            "minReplicas": 1,
            "maxReplicas": 3,
            "lagTargetPerReplica": 1000,
            "scaleDownStabilizationSecs": 20,
            "lagPollSecs": 2,
            "resources": {
                "requests": {"cpu": "50m", "memory": "64Mi"},
                "limits": {"cpu": "100m", "memory": "256Mi"},
            },
        }}),
    )
    .unwrap();
    wait_rolled_out(
        cluster,
        &format!("{PIPELINE}-worker"),
        Duration::from_secs(180),
    )
    .unwrap();
    wait_until("one worker", Duration::from_secs(180), || {
        Ok(worker_replicas() == 1)
    })
    .unwrap();
    let before: BTreeSet<String> = pods(cluster, "worker")
        .unwrap()
        .iter()
        .map(|pod| pod["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();

    let timeline = Timeline::start(Duration::from_secs(1), move || {
        let lp = cluster.get_json(&["-n", NS, "logpipeline", PIPELINE])?;
        let ready = pods(cluster, "worker")?
            .iter()
            .filter(|pod| is_ready(pod))
            .count();
        Ok(format!(
            "lag {:>6}  workers asked {}  ready {ready}",
            lp["status"]["lag"], lp["status"]["workerReplicas"]
        ))
    });
    // The burst: 30,000 entries put on the stream at once, thirty times the lag one worker
    // may have, whatever the CPU, and devices that keep sending.
    let started = Instant::now();
    let backlog_run = "lag-backlog";
    let backlog_ids = runtime.block_on(async {
        let mut redis = pipeline.redis().await.unwrap();
        add_backlog(&mut redis, backlog_run, 30_000).await.unwrap()
    });
    let run = "lag-burst";
    let flow = Flow::default();
    let (sent, scaled_up_after, deleted, added) = std::thread::scope(|scope| {
        let sender = send_in_background(scope, run, 50, 1, Duration::ZERO, &flow);
        let waited = wait_until(
            "the operator scales the workers up",
            Duration::from_secs(180),
            || Ok(worker_replicas() >= 2),
        );
        let scaled_up_after = started.elapsed();
        // Every pod the scale-up started joins the group while the load lasts: the
        // pods are looked at now, before the lag falls and the operator scales down.
        let mut added = Vec::new();
        let joined = wait_until(
            "the new worker pods join the consumer group",
            Duration::from_secs(180),
            || {
                added = pods(cluster, "worker")?
                    .iter()
                    .filter_map(|pod| pod["metadata"]["name"].as_str())
                    .filter(|name| !before.contains(*name))
                    .map(str::to_owned)
                    .collect();
                let names =
                    runtime.block_on(async { consumers(&mut pipeline.redis().await?).await })?;
                Ok(!added.is_empty()
                    && added
                        .iter()
                        .all(|pod| names.iter().any(|name| name.starts_with(pod.as_str()))))
            },
        );
        // A worker pod deleted mid-load, one that was there before the burst and so has
        // work in hand: its batch is stored and acknowledged on SIGTERM, or claimed by
        // another consumer.
        let deleted = before.iter().next().unwrap().clone();
        cluster
            .kubectl(&["delete", "pod", "-n", NS, &deleted, "--wait=false"])
            .unwrap();
        // Devices go on sending until the pod is gone and 500 more logs were accepted.
        let accepted_at_delete = flow.accepted();
        let gone = wait_until(
            "the deleted worker pod is gone while devices send",
            Duration::from_secs(180),
            || {
                let listed = pods(cluster, "worker")?
                    .iter()
                    .any(|pod| pod["metadata"]["name"] == deleted.as_str());
                Ok(!listed && flow.accepted() >= accepted_at_delete + 500)
            },
        );
        flow.stop();
        let sent = sender.join().unwrap();
        waited.unwrap();
        joined.unwrap();
        gone.unwrap();
        (sent, scaled_up_after, deleted, added)
    });
    assert!(
        sent.failed.is_empty(),
        "{:?}",
        &sent.failed[..sent.failed.len().min(5)]
    );
    println!(
        "sent {} logs in {:.1?}; the operator asked for more workers {scaled_up_after:.1?} after the burst began; the new pods {added:?} joined the group; deleted pod {deleted}",
        sent.message_ids.len(),
        started.elapsed()
    );

    runtime.block_on(async {
        let mut redis = pipeline.redis().await.unwrap();
        let mut drained = false;
        for _ in 0..3000 {
            if backlog(&mut redis).await.unwrap() == (0, 0) {
                drained = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            drained,
            "the backlog did not drain: {:?}",
            backlog(&mut redis).await
        );
    });
    let drained_after = started.elapsed();
    wait_until(
        "the workers scale back down",
        Duration::from_secs(240),
        || Ok(worker_replicas() == 1),
    )
    .unwrap();
    let scaled_down_after = started.elapsed();
    println!(
        "backlog drained {drained_after:.1?} after the burst began; back to one worker at {scaled_down_after:.1?}\n{}",
        timeline.stop().unwrap()
    );
    let stored = Duration::from_secs(120);
    runtime.block_on(assert_stored_exactly_once(
        backlog_run,
        &backlog_ids,
        stored,
    ));
    runtime.block_on(assert_stored_exactly_once(run, &sent.message_ids, stored));
}

/// The api HPA's `status` fields that tell its story.
fn hpa_status() -> anyhow::Result<(u64, u64, Option<u64>)> {
    let hpa = cluster().get_json(&["-n", NS, "hpa", &format!("{PIPELINE}-api")])?;
    let status = &hpa["status"];
    let utilization =
        status["currentMetrics"][0]["resource"]["current"]["averageUtilization"].as_u64();
    Ok((
        status["currentReplicas"].as_u64().unwrap_or(0),
        status["desiredReplicas"].as_u64().unwrap_or(0),
        utilization,
    ))
}

/// Requests `pod` has served on `route`, from its own `/metrics`, through the API
/// server's pod proxy.
fn requests_served(pod: &str, route: &str) -> anyhow::Result<f64> {
    let metrics = cluster().kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{NS}/pods/{pod}:8080/proxy/metrics"),
    ])?;
    Ok(metrics
        .lines()
        .filter(|line| {
            line.starts_with("logpipeline_api_http_requests_total")
                && line.contains(&format!("route=\"{route}\""))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

#[test]
fn sustained_load_makes_the_autoscaler_add_api_pods_that_serve_and_go_after_the_load() {
    let (_turn, cluster, _pipeline) = support::start();
    patch_pipeline(
        cluster,
        &json!({"api": {
            "autoscaling": {
                "minReplicas": 1,
                "maxReplicas": 3,
                "targetCPUUtilizationPercentage": 50,
                "scaleDownStabilizationSecs": 20,
            },
            "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
        }}),
    )
    .unwrap();
    let api = format!("{PIPELINE}-api");
    wait_rolled_out(cluster, &api, Duration::from_secs(180)).unwrap();
    wait_until("one api pod", Duration::from_secs(240), || {
        Ok(hpa_status()?.0 == 1 && pods(cluster, "api")?.len() == 1)
    })
    .unwrap();

    let timeline = Timeline::start(Duration::from_secs(1), move || {
        let (current, desired, utilization) = hpa_status()?;
        let ready = pods(cluster, "api")?
            .iter()
            .filter(|pod| is_ready(pod))
            .count();
        let utilization = utilization.map_or("-".to_owned(), |u| format!("{u}%"));
        Ok(format!(
            "cpu {utilization:>5} of request  replicas {current} -> {desired}  ready {ready}"
        ))
    });
    let run = "hpa-load";
    let flow = Flow::default();
    let started = Instant::now();
    let (sent, served) = std::thread::scope(|scope| {
        let sender = send_in_background(scope, run, 40, 10, Duration::ZERO, &flow);
        let mut served = BTreeMap::new();
        let waited = wait_until(
            "the autoscaler adds api pods that serve requests",
            Duration::from_secs(300),
            || {
                let pods = pods(cluster, "api")?;
                if hpa_status()?.1 < 2 || pods.len() < 2 || !pods.iter().all(is_ready) {
                    return Ok(false);
                }
                for pod in &pods {
                    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
                    served.insert(name.to_owned(), requests_served(name, "/api/logs/batch")?);
                }
                Ok(served.values().all(|requests| *requests > 0.0))
            },
        );
        flow.stop();
        let sent = sender.join().unwrap();
        waited.unwrap();
        (sent, served)
    });
    let scaled_up_after = started.elapsed();
    assert!(
        sent.failed.is_empty(),
        "{:?}",
        &sent.failed[..sent.failed.len().min(5)]
    );
    wait_until(
        "the autoscaler removes the added pods",
        Duration::from_secs(300),
        || Ok(hpa_status()?.0 == 1 && pods(cluster, "api")?.len() == 1),
    )
    .unwrap();
    println!(
        "{} api pods served the load ({served:?}), reached {scaled_up_after:.1?} after it began; back to one at {:.1?}\n{}",
        served.len(),
        started.elapsed(),
        timeline.stop().unwrap()
    );
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(assert_stored_exactly_once(
            run,
            &sent.message_ids,
            Duration::from_secs(300),
        ));
}

//! A change of the pipeline rolls every pod while a device sends, refusing and losing
//! nothing.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use logpipeline_e2e::devices::Flow;
use logpipeline_local::process::wait_until;
use serde_json::json;

use crate::support::{
    self, NS, PIPELINE, assert_stored_exactly_once, is_ready, patch_pipeline, pods,
    send_in_background, wait_for_condition, wait_rolled_out,
};

#[test]
fn changing_the_pipeline_rolls_its_pods_while_a_device_sends_and_nothing_is_lost() {
    let (_turn, cluster, _pipeline) = support::start();
    // Two api pods, so one serves while the other rolls.
    patch_pipeline(
        cluster,
        &json!({"api": {"autoscaling": {"minReplicas": 2, "maxReplicas": 3}}}),
    )
    .unwrap();
    let (api, worker) = (format!("{PIPELINE}-api"), format!("{PIPELINE}-worker"));
    // Two or more: the autoscaler may answer the new pod's start-up with a third, which
    // it keeps for its scale-down window.
    wait_until("two or more api pods", Duration::from_secs(240), || {
        let pods = pods(cluster, "api")?;
        Ok(pods.len() >= 2 && pods.iter().all(is_ready))
    })
    .unwrap();
    wait_rolled_out(cluster, &worker, Duration::from_secs(180)).unwrap();
    let settings = cluster
        .get_json(&["-n", NS, "configmap", &format!("{PIPELINE}-settings")])
        .unwrap();
    let batch_size: u64 = settings["data"]["LOGPIPELINE_BATCH_SIZE"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let old_pods: BTreeSet<String> = [
        pods(cluster, "api").unwrap(),
        pods(cluster, "worker").unwrap(),
    ]
    .concat()
    .iter()
    .map(|pod| pod["metadata"]["name"].as_str().unwrap().to_owned())
    .collect();

    let run = "rolling-change";
    let flow = Flow::default();
    let started = Instant::now();
    let (sent, rolled_after) = std::thread::scope(|scope| {
        let sender = send_in_background(scope, run, 4, 1, Duration::from_millis(20), &flow);
        // The change begins while the old pods take a device's logs.
        let sending = wait_until("the old pods take logs", Duration::from_secs(60), || {
            Ok(flow.accepted() >= 50)
        });
        patch_pipeline(
            cluster,
            &json!({
                "worker": {"batchSize": batch_size + 25},
                "stream": {"capacity": 2_000_000},
                "logLevel": "info,logpipeline_api=debug",
            }),
        )
        .unwrap();
        let rolled = wait_until("every pod is replaced", Duration::from_secs(300), || {
            let now: BTreeSet<String> = [pods(cluster, "api")?, pods(cluster, "worker")?]
                .concat()
                .iter()
                .map(|pod| {
                    pod["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect();
            Ok(now.is_disjoint(&old_pods))
        });
        let rolled_after = started.elapsed();
        for deployment in [&api, &worker] {
            wait_rolled_out(cluster, deployment, Duration::from_secs(120)).unwrap();
        }
        // And ends once the new pods took logs too.
        let accepted_when_rolled = flow.accepted();
        let sent_to_new = wait_until("the new pods take logs", Duration::from_secs(60), || {
            Ok(flow.accepted() >= accepted_when_rolled + 50)
        });
        flow.stop();
        let sent = sender.join().unwrap();
        sending.unwrap();
        rolled.unwrap();
        sent_to_new.unwrap();
        (sent, rolled_after)
    });
    wait_for_condition(
        cluster,
        (NS, PIPELINE),
        ("Ready", "True"),
        Duration::from_secs(120),
    )
    .unwrap();
    println!(
        "a device sent {} logs while every pod rolled ({rolled_after:.1?}); refused: {:?}; unanswered: {}",
        sent.message_ids.len(),
        sent.refused,
        sent.failed.len()
    );
    assert!(
        sent.failed.is_empty(),
        "{:?}",
        &sent.failed[..sent.failed.len().min(5)]
    );
    if sent.refused.keys().any(|status| *status != 503) {
        // The Ingress controller logs each 5xx it answers: show whence it came.
        let access_log = cluster
            .kubectl(&["logs", "-n", "traefik", "deployment/traefik", "--tail=50"])
            .unwrap_or_else(|error| format!("{error:#}"));
        panic!(
            "only a retryable 503 may refuse a log: {:?}\nthe Ingress controller's log:\n{access_log}",
            sent.refused
        );
    }
    tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(assert_stored_exactly_once(
            run,
            &sent.message_ids,
            Duration::from_secs(120),
        ));
}

//! Devices through the Ingress: their logs stored exactly once, API keys checked, keys
//! changed without a restart.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use logpipeline_e2e::devices::{self, Plan};
use logpipeline_local::auth::ApiKey;
use logpipeline_local::process::wait_until;

use crate::support::{self, assert_stored_exactly_once, cluster, keys_secret, pipeline, pods};

#[test]
fn devices_send_through_the_ingress_and_every_log_is_stored_exactly_once() {
    let (_turn, _, pipeline) = support::start();
    let plan = Plan {
        run: "through-ingress".into(),
        devices: 100,
        single_logs_per_device: 500,
        batches_per_device: 100,
        batch_size: 5,
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let started = Instant::now();
        let sent = devices::send(&pipeline.devices, &pipeline.base_url, &plan)
            .await
            .unwrap();
        let sending = started.elapsed();
        assert_eq!(sent.message_ids.len(), 100_000);
        let drained =
            assert_stored_exactly_once(&plan.run, &sent.message_ids, Duration::from_secs(300))
                .await;
        println!(
            "100 devices sent 100,000 logs in {} requests through the Ingress (HTTPS, Traefik) in {sending:.1?}; stored {drained:.1?} after the last answer",
            sent.requests
        );
    });
}

/// The status of `POST /api/log` of one log of run `auth` through the Ingress.
async fn post_log(client: &reqwest::Client, bearer: Option<&str>) -> anyhow::Result<u16> {
    let mut request = client
        .post(format!("{}/api/log", pipeline().base_url))
        .json(&devices::log("auth", 0, 0));
    if let Some(bearer) = bearer {
        request = request.header(reqwest::header::AUTHORIZATION, bearer);
    }
    Ok(request.send().await?.status().as_u16())
}

/// The api pods' names and restart counts.
fn api_pods_and_restarts() -> BTreeMap<String, u64> {
    pods(cluster(), "api")
        .unwrap()
        .iter()
        .map(|pod| {
            let restarts = pod["status"]["containerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["restartCount"].as_u64())
                .sum();
            (
                pod["metadata"]["name"].as_str().unwrap().to_owned(),
                restarts,
            )
        })
        .collect()
}

/// Waits until `times` answers in a row (spread over the api pods behind the Ingress)
/// to a log sent with `bearer` have `status`; returns how long that took.
fn wait_for_answers(
    runtime: &tokio::runtime::Runtime,
    bearer: &str,
    status: u16,
    times: usize,
) -> Duration {
    let started = Instant::now();
    let mut in_a_row = 0;
    let mut last = None;
    wait_until(
        &format!("{times} answers {status} in a row"),
        Duration::from_secs(240),
        || {
            let answer = runtime.block_on(post_log(&pipeline().anonymous, Some(bearer)));
            in_a_row = match &answer {
                Ok(answered) if *answered == status => in_a_row + 1,
                _ => 0,
            };
            last = Some(format!("{answer:?}"));
            Ok(in_a_row >= times)
        },
    )
    .unwrap_or_else(|error| panic!("{error:#}; last answer {last:?}"));
    started.elapsed()
}

#[test]
fn the_ingress_refuses_requests_without_a_valid_key_and_keys_change_without_a_restart() {
    let (_turn, cluster, pipeline) = support::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let anonymous = &pipeline.anonymous;
        assert_eq!(post_log(anonymous, None).await.unwrap(), 401, "no key");
        let unknown = ApiKey::new("acme", "unknown", &["write"]);
        assert_eq!(
            post_log(anonymous, Some(&unknown.bearer())).await.unwrap(),
            401,
            "a key the Secret does not list"
        );
        let read = anonymous
            .get(format!("{}/api/logs/device-000", pipeline.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(read.status(), 401, "reads need a key too");
        assert_eq!(
            post_log(&pipeline.devices, None).await.unwrap(),
            200,
            "the devices' key"
        );
        let livez = anonymous
            .get(format!("{}/livez", pipeline.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(livez.status(), 200, "probes need no key");
    });

    // A key added to the Secret works once the kubelet has updated the api pods'
    // mount, and a removed one stops working, each without a restart.
    let pods_before = api_pods_and_restarts();
    let added = ApiKey::new("acme", "added", &["write"]);
    keys_secret(cluster, &[&pipeline.key, &added]).unwrap();
    let accepted_after = wait_for_answers(&runtime, &added.bearer(), 200, 10);
    keys_secret(cluster, &[&pipeline.key]).unwrap();
    let refused_after = wait_for_answers(&runtime, &added.bearer(), 401, 10);
    let pods_after = api_pods_and_restarts();
    for (pod, restarts) in &pods_before {
        assert_eq!(
            pods_after.get(pod),
            Some(restarts),
            "api pod {pod} was replaced or restarted: {pods_after:?}"
        );
    }
    runtime.block_on(async {
        assert_eq!(
            post_log(&pipeline.devices, None).await.unwrap(),
            200,
            "the devices' key still works"
        );
    });
    println!(
        "401 without a key or with an unknown one through the Ingress; a key added to the Secret was accepted after {accepted_after:.1?} and refused {refused_after:.1?} after its removal, by the same {} api pods",
        pods_before.len()
    );
}

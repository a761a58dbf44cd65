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

#[test]
fn a_live_tail_streams_through_the_ingress_to_its_tenants_subscriber() {
    let (_turn, _, pipeline) = support::start();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let device = format!("tail-{}", std::process::id());
        let send = |messages: Vec<String>| {
            let logs: Vec<serde_json::Value> = messages
                .iter()
                .map(|message| {
                    serde_json::json!({"device_id": device, "log_level": "ERROR", "message": message})
                })
                .collect();
            let request = pipeline
                .devices
                .post(format!("{}/api/logs/batch", pipeline.base_url))
                .json(&serde_json::json!({ "logs": logs }));
            async move {
                let answer = request.send().await.unwrap();
                assert_eq!(answer.status(), 200);
                let body: serde_json::Value = answer.json().await.unwrap();
                body["message_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|id| id.as_str().unwrap().to_owned())
                    .collect::<Vec<String>>()
            }
        };
        // Without a key the Ingress passes the request and the api refuses it.
        let anonymous = pipeline
            .anonymous
            .get(format!("{}/api/logs/tail", pipeline.base_url))
            .send()
            .await
            .unwrap();
        assert_eq!(anonymous.status(), 401);

        // A subscription lives longer than the client's timeout for plain requests.
        let answer = pipeline
            .devices
            .get(format!(
                "{}/api/logs/tail?device_id={device}",
                pipeline.base_url
            ))
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        assert_eq!(answer.headers()["content-type"], "text/event-stream");
        let mut events = logpipeline::logs::SseReader::new(answer);
        let mut next = async || {
            let (event, data) = tokio::time::timeout(Duration::from_secs(60), events.next())
                .await
                .expect("no event through the Ingress within 60 s")
                .unwrap()
                .expect("the tail ended");
            assert_eq!(event, "log", "{data}");
            serde_json::from_str::<serde_json::Value>(&data).unwrap()
        };
        // Sent once the subscription's answer began: every one of them arrives, in order.
        let started = Instant::now();
        let ids = send((0..50).map(|n| format!("live {n}")).collect()).await;
        for (n, id) in ids.iter().enumerate() {
            let log = next().await;
            assert_eq!(log["message_id"], id.as_str(), "{log}");
            assert_eq!(log["message"], format!("live {n}"));
            assert_eq!(log["device_id"], device.as_str());
        }
        println!(
            "50 logs sent through the Ingress reached a tail subscriber through it, in order, within {:.1?}",
            started.elapsed()
        );
    });
}

//! LogPipeline on a real one-node Kubernetes cluster (see `logpipeline_local::node`): the
//! images built here, the chart installed with helm, the sample applied as written (with
//! the test's API key in its keys Secret), and then API keys through the Ingress,
//! devices sending with their key, lag scaling, the autoscaler and a rolling change,
//! each with real pods under real load.
//!
//! The tests run one at a time on one shared cluster and one shared pipeline; each
//! prints what it measured.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use logpipeline_e2e::devices::{self, Flow, Plan};
use logpipeline_e2e::runs::count_query;
use logpipeline_e2e::stack::wait_for_count;
use logpipeline_local::auth::ApiKey;
use logpipeline_local::node::{self, NodeCluster, NodeInfo, NodeOptions};
use logpipeline_local::process::{output_of, wait_until};
use nix::sys::signal::Signal;
use serde_json::json;
use support::{
    NS, OPERATOR_NS, PIPELINE, Timeline, add_backlog, backlog, cluster, consumers, is_ready,
    keys_secret, patch_pipeline, pipeline, pods, wait_for_condition, wait_rolled_out,
};

/// Checks that what `run` stored is exactly what was accepted, and says so.
async fn assert_stored_exactly_once(run: &str, accepted: &[String]) {
    let pool = pipeline().pool().await.unwrap();
    let stored = devices::stored(&pool, run, accepted).await.unwrap();
    assert!(stored.exactly_once(), "{run}: {stored:?}");
    println!(
        "{run}: {} logs accepted, {} stored, {} duplicated, {} missing",
        stored.accepted,
        stored.rows,
        stored.duplicate_ids + stored.duplicate_messages,
        stored.missing
    );
}

#[test]
fn helm_and_the_sample_manifests_run_a_pipeline_of_real_pods() {
    let (_turn, cluster, pipeline) = support::start();
    println!(
        "kubectl apply of manifests/sample/ to Ready: {:.1?}",
        pipeline.apply_to_ready
    );

    // The operator runs as pods of the chart, under its own ServiceAccount, whose RBAC
    // is all it has.
    let operators = cluster
        .get_json(&[
            "-n",
            OPERATOR_NS,
            "pods",
            "-l",
            "app.kubernetes.io/name=logpipeline-operator",
        ])
        .unwrap();
    let operators = operators["items"].as_array().unwrap();
    assert_eq!(operators.len(), 2, "the chart runs two operator replicas");
    for pod in operators {
        assert!(is_ready(pod), "{}", pod["status"]);
        assert_eq!(pod["spec"]["serviceAccountName"], "logpipeline-operator");
        assert_eq!(
            pod["spec"]["containers"][0]["image"],
            format!("logpipeline-operator:{}", env!("CARGO_PKG_VERSION"))
        );
    }
    let account = format!("--as=system:serviceaccount:{OPERATOR_NS}:logpipeline-operator");
    let can = |verb: &str, what: &str| {
        cluster
            .kubectl_output(&["auth", "can-i", &account, verb, what, "-n", NS], None)
            .unwrap()
            .status
            .success()
    };
    assert!(can("patch", "deployments.apps"));
    assert!(can("delete", "networkpolicies.networking.k8s.io"));
    assert!(
        !can("create", "clusterrolebindings"),
        "the operator is no admin"
    );

    // The pipeline's pods pass their real probes. Other tests of the shared pipeline may
    // have run first and left the autoscaler adding or removing pods: each new one
    // becomes ready.
    for component in ["api", "worker"] {
        let mut last = Vec::new();
        wait_until(
            &format!("every {component} pod is ready"),
            Duration::from_secs(180),
            || {
                last = pods(cluster, component)?;
                Ok(!last.is_empty() && last.iter().all(is_ready))
            },
        )
        .unwrap_or_else(|error| {
            let statuses: Vec<_> = last.iter().map(|pod| &pod["status"]).collect();
            panic!("{error:#}: {statuses:?}")
        });
    }
    // Its NetworkPolicies exist (this node's bridge network does not enforce them).
    for component in ["api", "worker"] {
        let policy = cluster
            .get_json(&[
                "-n",
                NS,
                "networkpolicy",
                &format!("{PIPELINE}-{component}"),
            ])
            .unwrap();
        assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
    }
    let table = &pipeline.table_at_ready;
    let mut lines = table.lines();
    let header: Vec<_> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["NAME", "READY", "WORKERS", "LAG", "AGE"]);
    let row: Vec<_> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(row[..4], [PIPELINE, "True", "1", "0"], "{table}");
    println!("{table}");
}

#[test]
fn the_images_are_small_run_as_nonroot_without_a_shell_on_a_read_only_root() {
    let (_turn, cluster, _) = support::start();
    // A podman of its own: its image store in a temporary directory, and the ulimits
    // this machine allows (its hard limits are below podman's defaults).
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("containers.conf");
    std::fs::write(
        &conf,
        "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n[engine]\nruntime = \"runc\"\n",
    )
    .unwrap();
    let storage = dir.path().join("storage.conf");
    std::fs::write(
        &storage,
        format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            dir.path().join("storage").display(),
            dir.path().join("run").display()
        ),
    )
    .unwrap();
    let with_podman = |mut command: Command| {
        command
            .env("CONTAINERS_CONF", &conf)
            .env("CONTAINERS_STORAGE_CONF", &storage);
        command
    };
    let podman = |args: &[&str]| {
        let mut command = Command::new("podman");
        command.args(args);
        with_podman(command)
    };
    let version = env!("CARGO_PKG_VERSION");
    // The images hold the binaries this test run built.
    let binaries = logpipeline_local::services::binaries_dir().unwrap();
    for binary in [
        "logpipeline-api",
        "logpipeline-worker",
        "logpipeline-operator",
    ] {
        let archive = cluster
            .info()
            .dir
            .join(format!("images/archives/{binary}.tar"));
        output_of(podman(&[
            "load",
            "--quiet",
            "--input",
            &archive.to_string_lossy(),
        ]))
        .unwrap();
        let image = format!("docker.io/library/{binary}:{version}");

        let printed = output_of(podman(&[
            "run",
            "--rm",
            "--read-only",
            "--network=none",
            &image,
            "--version",
        ]))
        .unwrap();
        assert_eq!(printed.trim(), format!("{binary} {version}"));

        let config = output_of(podman(&["image", "inspect", &image])).unwrap();
        let config: serde_json::Value = serde_json::from_str(&config).unwrap();
        let config = &config[0];
        assert_eq!(config["Config"]["User"], "65532:65532");
        let labels = &config["Config"]["Labels"];
        assert_eq!(labels["org.opencontainers.image.title"], binary);
        assert_eq!(labels["org.opencontainers.image.version"], version);
        assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
        // Small: the binary without debug sections, and besides it only its shared
        // libraries, CA certificates and a passwd file (a few MB in all).
        let size = config["Size"].as_u64().unwrap();
        let stripped = dir.path().join(format!("{binary}.stripped"));
        output_of({
            let mut strip = Command::new("strip");
            strip
                .arg("--strip-debug")
                .arg("-o")
                .arg(&stripped)
                .arg(binaries.join(binary));
            strip
        })
        .unwrap();
        let binary_size = std::fs::metadata(&stripped).unwrap().len();
        assert!(
            size <= binary_size + 5 * 1024 * 1024,
            "{binary}: the image is {size} bytes, its binary {binary_size}"
        );

        let shell = podman(&[
            "run",
            "--rm",
            "--network=none",
            "--entrypoint",
            "/bin/sh",
            &image,
        ])
        .output()
        .unwrap();
        assert!(!shell.status.success(), "{binary} has a shell");
        println!(
            "{image}: {:.1} MB, user 65532, no shell, `--version` on a read-only root",
            size as f64 / 1e6
        );
    }

    // The same recipe with podman (or docker) instead of buildah.
    let mut build = Command::new(logpipeline_local::kube::repo_root().join("deploy/build.sh"));
    build
        .args(["--engine", "podman", "--tag", "podman-build", "--binaries"])
        .arg(binaries)
        .arg("worker");
    output_of(with_podman(build)).unwrap();
    let printed = output_of(podman(&[
        "run",
        "--rm",
        "--read-only",
        "--network=none",
        "localhost/logpipeline-worker:podman-build",
        "--version",
    ]))
    .unwrap();
    assert_eq!(printed.trim(), format!("logpipeline-worker {version}"));
}

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
        let pool = pipeline.pool().await.unwrap();
        let drained = wait_for_count(
            &pool,
            &count_query(&plan.run),
            100_000,
            Duration::from_secs(300),
        )
        .await
        .unwrap();
        println!(
            "100 devices sent 100,000 logs in {} requests through the Ingress (HTTPS, Traefik) in {sending:.1?}; stored {drained:.1?} after the last answer",
            sent.requests
        );
        assert_stored_exactly_once(&plan.run, &sent.message_ids).await;
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

/// The worker Deployment's `spec.replicas` (what the operator asks for).
fn worker_replicas() -> u64 {
    let deployment = cluster()
        .get_json(&["-n", NS, "deployment", &format!("{PIPELINE}-worker")])
        .unwrap();
    deployment["spec"]["replicas"].as_u64().unwrap_or(0)
}

/// Sends logs of `run` through the Ingress from a thread of its own until `flow` stops.
fn send_in_background<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    run: &'scope str,
    devices: usize,
    logs_per_request: usize,
    pause: Duration,
    flow: &'scope Flow,
) -> std::thread::ScopedJoinHandle<'scope, devices::Continuous> {
    scope.spawn(move || {
        let pipeline = pipeline();
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(devices::send_until(
                &pipeline.devices,
                &pipeline.base_url,
                run,
                devices,
                logs_per_request,
                pause,
                flow,
            ))
    })
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
    let (sent, scaled_up_after, deleted) = std::thread::scope(|scope| {
        let sender = send_in_background(scope, run, 50, 1, Duration::ZERO, &flow);
        let waited = wait_until(
            "the operator scales the workers up",
            Duration::from_secs(180),
            || Ok(worker_replicas() >= 2),
        );
        let scaled_up_after = started.elapsed();
        // A worker pod deleted mid-load: its batch in hand is stored and acknowledged
        // on SIGTERM, or claimed by another consumer.
        let deleted = pods(cluster, "worker").unwrap()[0]["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_owned();
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
        gone.unwrap();
        (sent, scaled_up_after, deleted)
    });
    assert!(
        sent.failed.is_empty(),
        "{:?}",
        &sent.failed[..sent.failed.len().min(5)]
    );
    println!(
        "sent {} logs in {:.1?}; the operator asked for more workers {scaled_up_after:.1?} after the burst began; deleted pod {deleted}",
        sent.message_ids.len(),
        started.elapsed()
    );

    runtime.block_on(async {
        let mut redis = pipeline.redis().await.unwrap();
        // Every pod the scale-up started joined the group.
        let added: Vec<String> = pods(cluster, "worker")
            .unwrap()
            .iter()
            .map(|pod| pod["metadata"]["name"].as_str().unwrap().to_owned())
            .filter(|name| !before.contains(name))
            .collect();
        assert!(!added.is_empty(), "no worker pod was added");
        let consumer_names = {
            let mut names = Vec::new();
            for _ in 0..600 {
                names = consumers(&mut redis).await.unwrap();
                if added
                    .iter()
                    .all(|pod| names.iter().any(|name| name.starts_with(pod.as_str())))
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            names
        };
        for pod in &added {
            assert!(
                consumer_names
                    .iter()
                    .any(|name| name.starts_with(pod.as_str())),
                "{pod} is not among the consumers {consumer_names:?}"
            );
        }
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
    runtime.block_on(assert_stored_exactly_once(backlog_run, &backlog_ids));
    runtime.block_on(assert_stored_exactly_once(run, &sent.message_ids));
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
    let (_turn, cluster, pipeline) = support::start();
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
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let pool = pipeline.pool().await.unwrap();
        wait_for_count(
            &pool,
            &count_query(run),
            sent.message_ids.len() as i64,
            Duration::from_secs(300),
        )
        .await
        .unwrap();
        assert_stored_exactly_once(run, &sent.message_ids).await;
    });
}

#[test]
fn changing_the_pipeline_rolls_its_pods_while_a_device_sends_and_nothing_is_lost() {
    let (_turn, cluster, pipeline) = support::start();
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
    wait_for_condition(cluster, "Ready", "True", Duration::from_secs(120)).unwrap();
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
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let pool = pipeline.pool().await.unwrap();
        wait_for_count(
            &pool,
            &count_query(run),
            sent.message_ids.len() as i64,
            Duration::from_secs(120),
        )
        .await
        .unwrap();
        assert_stored_exactly_once(run, &sent.message_ids).await;
    });
}

/// What of the node `info` describes is still on this machine.
fn leftovers(info: &NodeInfo) -> Vec<String> {
    let mut found = Vec::new();
    if info.dir.exists() {
        found.push(format!("directory {}", info.dir.display()));
    }
    if std::path::Path::new("/run/netns")
        .join(&info.netns)
        .exists()
    {
        found.push(format!("network namespace {}", info.netns));
    }
    if std::path::Path::new("/sys/class/net")
        .join(&info.host_veth)
        .exists()
    {
        found.push(format!("interface {}", info.host_veth));
    }
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let cgroup = hierarchy.path().join(&info.cgroup);
        if cgroup.exists() {
            found.push(format!("cgroup {}", cgroup.display()));
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = info.dir.to_string_lossy();
    found.extend(
        mountinfo
            .lines()
            .filter(|line| line.contains(dir.as_ref()))
            .map(|line| format!("mount {line}")),
    );
    found
}

/// Lines of this machine's own iptables rules that name Kubernetes chains.
fn host_kube_rules() -> usize {
    output_of(Command::new("iptables-save"))
        .unwrap()
        .lines()
        .filter(|line| line.contains("KUBE-"))
        .count()
}

#[test]
fn a_node_leaves_nothing_behind_when_stopped_or_killed() {
    let _turn = support::turn();
    let options = NodeOptions {
        product_images: false,
        binaries: None,
    };
    let rules_before = host_kube_rules();

    // Stopped: SIGTERM, as Ctrl-C, or the death of the test process that started it.
    let mut stopped = NodeCluster::start(&options).unwrap();
    let info = stopped.info().clone();
    let running = leftovers(&info);
    for part in [
        "directory",
        "network namespace",
        "interface",
        "cgroup",
        "mount",
    ] {
        assert!(
            running.iter().any(|what| what.starts_with(part)),
            "no {part} while running: {running:?}"
        );
    }
    let pods = stopped.get_json(&["pods", "-A"]).unwrap();
    assert_eq!(
        pods["items"].as_array().unwrap().len(),
        3,
        "the add-ons run"
    );
    let status = stopped
        .process()
        .stop_with(Signal::SIGTERM, Duration::from_secs(120))
        .unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(leftovers(&info), Vec::<String>::new());
    assert_eq!(host_kube_rules(), rules_before);

    // Killed: with SIGKILL nothing could clean up, and the pods outlive their owner,
    // until the next node starts (here: its sweep alone).
    let mut killed = NodeCluster::start(&options).unwrap();
    let info = killed.info().clone();
    killed.process().kill();
    let left = leftovers(&info);
    assert!(
        left.iter()
            .any(|what| what.starts_with("network namespace")),
        "{left:?}"
    );
    node::sweep_orphans();
    assert_eq!(leftovers(&info), Vec::<String>::new());
    assert_eq!(host_kube_rules(), rules_before);
    println!("a stopped node and a killed one (swept) left nothing: {left:?} went");
}

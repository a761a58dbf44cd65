//! The operator against a real kube-apiserver: the CRD, the objects it creates, status,
//! Events, lag-based scaling from a real Redis, idempotency and leader election.
//!
//! Every test has its own namespace and its own operator process (watching only that
//! namespace) on one shared control plane.

use std::time::Duration;

use anyhow::{Context, Result};
use logpipeline_e2e::kube::{KubeCluster, Operator, OperatorOptions, repo_root, shared};
use logpipeline_e2e::process::wait_until;
use logpipeline_e2e::redis::RedisServer;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn cluster() -> &'static KubeCluster {
    shared().unwrap_or_else(|error| panic!("{error:#}"))
}

fn apply(cluster: &KubeCluster, ns: &str, object: &Value) -> Result<String> {
    cluster.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], &object.to_string())
}

fn secret(cluster: &KubeCluster, ns: &str, name: &str, url: &str) {
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name},
        "stringData": {"url": url},
    });
    apply(cluster, ns, &secret).unwrap();
}

/// A pipeline that reads the lag every second and scales 100 entries per worker.
fn pipeline(name: &str, redis_secret: &str) -> Value {
    json!({
        "apiVersion": "logpipeline.io/v1alpha1",
        "kind": "LogPipeline",
        "metadata": {"name": name},
        "spec": {
            "redisSecretRef": {"name": redis_secret},
            "databaseSecretRef": {"name": "postgres"},
            "api": {"image": "logpipeline-api:test", "replicas": 1},
            "worker": {
                "image": "logpipeline-worker:test",
                "minReplicas": 1,
                "maxReplicas": 6,
                "lagTargetPerReplica": 100,
                "scaleDownStabilizationSecs": 2,
                "lagPollSecs": 1,
            },
        },
    })
}

fn get(cluster: &KubeCluster, ns: &str, what: &str) -> Result<Value> {
    cluster.get_json(&["-n", ns, what])
}

fn condition(cluster: &KubeCluster, ns: &str, lp: &str, type_: &str) -> Result<Option<Value>> {
    let lp = get(cluster, ns, &format!("logpipeline/{lp}"))?;
    let conditions = lp["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(conditions.into_iter().find(|c| c["type"] == type_))
}

fn wait_condition(cluster: &KubeCluster, ns: &str, lp: &str, type_: &str, status: &str) -> Value {
    let mut found = None;
    let waited = wait_until(&format!("{lp} has {type_}={status}"), WAIT, || {
        found = condition(cluster, ns, lp, type_)?;
        Ok(found.as_ref().is_some_and(|c| c["status"] == status))
    });
    waited.unwrap_or_else(|error| panic!("{error:#}; last {type_}: {found:?}"));
    found.unwrap_or_default()
}

fn worker_replicas(cluster: &KubeCluster, ns: &str, deployment: &str) -> Result<i64> {
    get(cluster, ns, &format!("deployment/{deployment}"))?["spec"]["replicas"]
        .as_i64()
        .context("no replicas")
}

fn start_operator(cluster: &KubeCluster, ns: &str) -> Operator {
    Operator::start(cluster, &OperatorOptions::new(ns)).unwrap_or_else(|error| panic!("{error:#}"))
}

#[test]
fn the_server_rejects_invalid_pipelines_with_the_schema_and_cel_messages() {
    let cluster = cluster();
    cluster.create_namespace("invalid").unwrap();

    let mut bounds = pipeline("bounds", "redis");
    bounds["spec"]["worker"]["minReplicas"] = json!(5);
    bounds["spec"]["worker"]["maxReplicas"] = json!(2);
    let refused = cluster
        .kubectl_output(
            &["apply", "-n", "invalid", "-f", "-"],
            Some(&bounds.to_string()),
        )
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("worker.minReplicas must not exceed worker.maxReplicas"),
        "{stderr}"
    );

    let mut autoscaling = pipeline("autoscaling", "redis");
    autoscaling["spec"]["api"]["autoscaling"] = json!({"minReplicas": 8, "maxReplicas": 3});
    let refused = cluster
        .kubectl_output(
            &["apply", "-n", "invalid", "-f", "-"],
            Some(&autoscaling.to_string()),
        )
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("api.autoscaling.minReplicas must not exceed"),
        "{stderr}"
    );

    let mut batch = pipeline("batch", "redis");
    batch["spec"]["worker"]["batchSize"] = json!(0);
    let refused = cluster
        .kubectl_output(
            &["apply", "-n", "invalid", "-f", "-"],
            Some(&batch.to_string()),
        )
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("spec.worker.batchSize"), "{stderr}");

    // A valid one is accepted, with the schema's defaults filled in.
    apply(cluster, "invalid", &pipeline("fine", "redis")).unwrap();
    let fine = get(cluster, "invalid", "logpipeline/fine").unwrap();
    assert_eq!(fine["spec"]["worker"]["batchSize"], 100);
    assert_eq!(fine["spec"]["stream"]["name"], "logs:stream");

    let explained = cluster
        .kubectl(&["explain", "logpipelines.spec.worker.lagTargetPerReplica"])
        .unwrap();
    assert!(
        explained.contains("Backlog (lag plus pending entries)"),
        "{explained}"
    );
    let short = cluster.kubectl(&["get", "lp", "-n", "invalid"]).unwrap();
    assert!(short.contains("fine"), "{short}");
}

#[test]
fn the_sample_gets_every_child_updates_follow_the_spec_and_a_restart_changes_nothing() {
    let cluster = cluster();
    let ns = "sample";
    cluster.create_namespace(ns).unwrap();
    let redis = RedisServer::start().unwrap();
    let sample = repo_root().join("manifests/sample");
    cluster
        .kubectl(&["apply", "-n", ns, "-f", &sample.to_string_lossy()])
        .unwrap();
    // The sample names an in-cluster Redis; point it at the test's.
    secret(cluster, ns, "logpipeline-redis", &redis.url());
    let mut operator = start_operator(cluster, ns);

    let children = [
        "configmap/logs-settings",
        "deployment/logs-api",
        "service/logs-api",
        "horizontalpodautoscaler/logs-api",
        "ingress/logs-api",
        "poddisruptionbudget/logs-api",
        "deployment/logs-worker",
        "poddisruptionbudget/logs-worker",
    ];
    wait_until("every child exists", WAIT, || {
        operator.ensure_running()?;
        Ok(children.iter().all(|child| get(cluster, ns, child).is_ok()))
    })
    .unwrap_or_else(|error| panic!("{error:#}\n{}", operator.log_tail(40)));

    let lp_uid = get(cluster, ns, "logpipeline/logs").unwrap()["metadata"]["uid"].clone();
    for child in children {
        let object = get(cluster, ns, child).unwrap();
        let owner = &object["metadata"]["ownerReferences"][0];
        assert_eq!(
            (owner["kind"].as_str(), owner["uid"].clone()),
            (Some("LogPipeline"), lp_uid.clone()),
            "{child}"
        );
        assert_eq!(owner["controller"], true, "{child}");
        let labels = &object["metadata"]["labels"];
        assert_eq!(labels["app.kubernetes.io/instance"], "logs", "{child}");
        assert_eq!(
            labels["app.kubernetes.io/managed-by"], "logpipeline-operator",
            "{child}"
        );
    }

    let settings = get(cluster, ns, "configmap/logs-settings").unwrap();
    assert_eq!(settings["data"]["LOGPIPELINE_BATCH_SIZE"], "100");
    assert_eq!(settings["data"]["LOGPIPELINE_LOG_FORMAT"], "json");
    assert_eq!(settings["data"]["LOGPIPELINE_STREAM_CAPACITY"], "1000000");

    let worker = get(cluster, ns, "deployment/logs-worker").unwrap();
    let pod = &worker["spec"]["template"];
    let container = &pod["spec"]["containers"][0];
    assert_eq!(container["image"], "logpipeline-worker:0.1.0");
    assert_eq!(
        container["envFrom"][0]["configMapRef"]["name"],
        "logs-settings"
    );
    let env = container["env"].as_array().unwrap();
    let redis_env = env.iter().find(|e| e["name"] == "REDIS_URL").unwrap();
    assert_eq!(
        redis_env["valueFrom"]["secretKeyRef"]["name"],
        "logpipeline-redis"
    );
    let consumer = env
        .iter()
        .find(|e| e["name"] == "LOGPIPELINE_CONSUMER_NAME")
        .unwrap();
    assert_eq!(
        consumer["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(
        pod["spec"]["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/livez");
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], "9090");
    let checksum = pod["metadata"]["annotations"]["logpipeline.io/settings-checksum"].clone();
    assert!(checksum.is_string());
    assert_eq!(worker["spec"]["replicas"], 1);

    let hpa = get(cluster, ns, "horizontalpodautoscaler/logs-api").unwrap();
    assert_eq!(
        (
            hpa["spec"]["minReplicas"].clone(),
            hpa["spec"]["maxReplicas"].clone()
        ),
        (json!(2), json!(10))
    );
    let ingress = get(cluster, ns, "ingress/logs-api").unwrap();
    assert_eq!(
        ingress["spec"]["ingressClassName"],
        Value::Null,
        "the sample uses the cluster's default IngressClass"
    );
    assert_eq!(ingress["spec"]["rules"][0]["host"], "logs.example.com");
    assert_eq!(
        ingress["spec"]["tls"][0]["secretName"],
        "logs-example-com-tls"
    );
    let api = get(cluster, ns, "deployment/logs-api").unwrap();
    assert_eq!(
        api["spec"]["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"],
        5
    );

    // No kubelet runs here, so no pod starts and the pipeline stays unready; the
    // cluster tests (tests/cluster) see it become Ready with real pods.
    let ready = wait_condition(cluster, ns, "logs", "Ready", "False");
    assert_eq!(ready["reason"], "RollingOut", "{ready}");

    // A spec change: a new batch size rolls the pods, dropping the Ingress deletes it.
    cluster
        .kubectl(&[
            "patch",
            "-n",
            ns,
            "lp",
            "logs",
            "--type=merge",
            "-p",
            r#"{"spec":{"worker":{"batchSize":500},"api":{"ingress":null}}}"#,
        ])
        .unwrap();
    wait_until("the settings and the pods follow the spec", WAIT, || {
        let settings = get(cluster, ns, "configmap/logs-settings")?;
        let worker = get(cluster, ns, "deployment/logs-worker")?;
        let rolled = worker["spec"]["template"]["metadata"]["annotations"]["logpipeline.io/settings-checksum"] != checksum;
        let ingress_gone = get(cluster, ns, "ingress/logs-api").is_err();
        Ok(settings["data"]["LOGPIPELINE_BATCH_SIZE"] == "500" && rolled && ingress_gone)
    })
    .unwrap_or_else(|error| panic!("{error:#}\n{}", operator.log_tail(40)));
    let progressing = wait_condition(cluster, ns, "logs", "Progressing", "True");
    assert_eq!(progressing["reason"], "RollingOut");
    let observed = get(cluster, ns, "logpipeline/logs").unwrap();
    assert_eq!(
        observed["status"]["observedGeneration"],
        observed["metadata"]["generation"]
    );

    // A second start of the operator changes nothing.
    let status = operator.stop().unwrap();
    assert!(
        status.success(),
        "the operator exits cleanly on SIGTERM: {status}"
    );
    let mut watched: Vec<&str> = children
        .iter()
        .copied()
        .filter(|c| !c.starts_with("ingress"))
        .collect();
    watched.push("logpipeline/logs");
    let versions = |cluster: &KubeCluster| -> Vec<Value> {
        watched
            .iter()
            .map(|child| get(cluster, ns, child).unwrap()["metadata"]["resourceVersion"].clone())
            .collect()
    };
    let before = versions(cluster);
    let mut again = start_operator(cluster, ns);
    wait_until("the restarted operator reconciles", WAIT, || {
        again.ensure_running()?;
        Ok(again
            .metric("logpipeline_operator_reconciles_total{result=\"ok\"}")?
            .unwrap_or(0.0)
            >= 2.0)
    })
    .unwrap_or_else(|error| panic!("{error:#}\n{}", again.log_tail(40)));
    assert_eq!(
        before,
        versions(cluster),
        "a reconcile without changes wrote something"
    );
    drop(redis);
}

#[test]
fn lag_in_redis_scales_the_workers_up_at_once_and_down_after_the_window() {
    let cluster = cluster();
    let ns = "scaling";
    cluster.create_namespace(ns).unwrap();
    let redis = RedisServer::start().unwrap();
    secret(cluster, ns, "redis", &redis.url());
    secret(
        cluster,
        ns,
        "postgres",
        "postgres://unused@127.0.0.1:1/unused",
    );
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

#[test]
fn a_missing_secret_degrades_the_pipeline_until_it_appears() {
    let cluster = cluster();
    let ns = "degraded";
    cluster.create_namespace(ns).unwrap();
    let redis = RedisServer::start().unwrap();
    secret(
        cluster,
        ns,
        "postgres",
        "postgres://unused@127.0.0.1:1/unused",
    );
    apply(cluster, ns, &pipeline("logs", "redis-url")).unwrap();
    let operator = start_operator(cluster, ns);

    let degraded = wait_condition(cluster, ns, "logs", "Degraded", "True");
    assert_eq!(degraded["reason"], "SecretNotFound");
    assert_eq!(degraded["message"], "Secret degraded/redis-url not found");
    let ready = condition(cluster, ns, "logs", "Ready").unwrap().unwrap();
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("SecretNotFound"))
    );
    let warnings = cluster
        .get_json(&[
            "events",
            "-n",
            ns,
            "--field-selector",
            "reason=SecretNotFound,type=Warning",
        ])
        .unwrap();
    assert_eq!(
        warnings["items"].as_array().map(Vec::len),
        Some(1),
        "one Event, not one per reconcile"
    );

    secret(cluster, ns, "redis-url", &redis.url());
    let recovered = wait_condition(cluster, ns, "logs", "Degraded", "False");
    assert_eq!(recovered["reason"], "AsExpected");
    wait_until("a Recovered event", WAIT, || {
        let events =
            cluster.get_json(&["events", "-n", ns, "--field-selector", "reason=Recovered"])?;
        Ok(events["items"]
            .as_array()
            .is_some_and(|items| !items.is_empty()))
    })
    .unwrap_or_else(|error| panic!("{error:#}\n{}", operator.log_tail(40)));
}

#[test]
fn two_operators_share_one_lease_and_the_second_takes_over() {
    let cluster = cluster();
    let ns = "leader";
    cluster.create_namespace(ns).unwrap();
    let options = |identity: &str| OperatorOptions {
        identity: identity.to_owned(),
        lease_duration_secs: 6,
        ..OperatorOptions::new(ns)
    };
    let mut first = Operator::start(cluster, &options("first")).unwrap();
    wait_until("the first operator leads", WAIT, || {
        Ok(first.metric("logpipeline_operator_leader")? == Some(1.0))
    })
    .unwrap_or_else(|error| panic!("{error:#}\n{}", first.log_tail(40)));
    let second = Operator::start(cluster, &options("second")).unwrap();
    // The second one serves metrics and health but does not lead while the first holds the Lease.
    assert_eq!(
        second.metric("logpipeline_operator_leader").unwrap(),
        Some(0.0)
    );
    let lease = get(cluster, ns, "lease/logpipeline-operator").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "first");

    first.stop().unwrap();
    wait_until("the second operator takes over", WAIT, || {
        Ok(second.metric("logpipeline_operator_leader")? == Some(1.0))
    })
    .unwrap_or_else(|error| panic!("{error:#}\n{}", second.log_tail(40)));
    let lease = get(cluster, ns, "lease/logpipeline-operator").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "second");
}

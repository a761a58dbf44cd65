//! The operator against a real kube-apiserver: the CRD's schema and CEL rules, the
//! children it makes of the sample and how they follow the spec, status and Events for a
//! missing Secret, a restart that changes nothing, and leader election.
//!
//! Every test has its own namespace and its own operator process (watching only that
//! namespace) on one shared control plane.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use logpipeline_e2e::operator::{
    WAIT, apply, cluster, condition, env_of, get, pipeline, secret, start_operator, wait_condition,
};
use logpipeline_local::kube::{KubeCluster, Operator, OperatorOptions, repo_root};
use logpipeline_local::process::wait_until;
use logpipeline_local::redis::RedisServer;
use serde_json::{Value, json};

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

    for shards in [0, 17] {
        let mut sharded = pipeline("shards", "redis");
        sharded["spec"]["redis"] = json!({ "shards": shards });
        let refused = cluster
            .kubectl_output(
                &["apply", "-n", "invalid", "-f", "-"],
                Some(&sharded.to_string()),
            )
            .unwrap();
        assert!(!refused.status.success(), "{shards} shards were accepted");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(stderr.contains("spec.redis.shards"), "{stderr}");
    }

    // A valid one is accepted, with the schema's defaults filled in.
    apply(cluster, "invalid", &pipeline("fine", "redis")).unwrap();
    let fine = get(cluster, "invalid", "logpipeline/fine").unwrap();
    assert_eq!(fine["spec"]["worker"]["batchSize"], 100);
    assert_eq!(fine["spec"]["stream"]["name"], "logs:stream");
    assert_eq!(fine["spec"]["redis"]["shards"], 1);

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
    secret(cluster, ns, "logpipeline-redis", &redis.url()).unwrap();
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
        "networkpolicy/logs-api",
        "networkpolicy/logs-worker",
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
        10
    );
    // The sample names its API keys Secret, which the api reads from its mount.
    let api_env = env_of(&api["spec"]["template"]["spec"]["containers"][0]);
    assert_eq!(api_env["LOGPIPELINE_AUTH"], "keys");
    assert_eq!(
        api_env["LOGPIPELINE_API_KEYS_FILE"],
        "/etc/logpipeline/keys/keys.yaml"
    );
    assert_eq!(
        api["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"],
        "logpipeline-api-keys"
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
    )
    .unwrap();
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

    secret(cluster, ns, "redis-url", &redis.url()).unwrap();
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

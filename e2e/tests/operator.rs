//! The operator against a real kube-apiserver: the CRD, the objects it creates, status,
//! Events, lag-based scaling from a real Redis, idempotency and leader election.
//!
//! Every test has its own namespace and its own operator process (watching only that
//! namespace) on one shared control plane.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result};
use logpipeline_local::auth::{ApiKey, keys_file};
use logpipeline_local::kube::{KubeCluster, Operator, OperatorOptions, repo_root, shared};
use logpipeline_local::process::wait_until;
use logpipeline_local::redis::RedisServer;
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

/// Secret `name` holding the keys file of `keys` under `keys.yaml`.
fn keys_secret(cluster: &KubeCluster, ns: &str, name: &str, keys: &[&ApiKey]) {
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name},
        "stringData": {"keys.yaml": keys_file(keys)},
    });
    apply(cluster, ns, &secret).unwrap();
}

/// A pipeline that reads the lag every second and scales 100 entries per worker. Its
/// api accepts requests without a key: the tests of API keys set `spec.auth` themselves.
fn pipeline(name: &str, redis_secret: &str) -> Value {
    json!({
        "apiVersion": "logpipeline.io/v1alpha1",
        "kind": "LogPipeline",
        "metadata": {"name": name},
        "spec": {
            "redisSecretRef": {"name": redis_secret},
            "databaseSecretRef": {"name": "postgres"},
            "auth": {"enabled": false},
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

/// The plain values of a container's environment, by name.
fn env_of(container: &Value) -> BTreeMap<String, String> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// Applies a merge patch to pipeline `name`.
fn patch(cluster: &KubeCluster, ns: &str, name: &str, patch: &Value) {
    cluster
        .kubectl(&[
            "patch",
            "-n",
            ns,
            "lp",
            name,
            "--type=merge",
            "-p",
            &patch.to_string(),
        ])
        .unwrap();
}

/// Reconciles the operator has finished without error.
fn reconciles(operator: &Operator) -> f64 {
    operator
        .metric("logpipeline_operator_reconciles_total{result=\"ok\"}")
        .unwrap()
        .unwrap_or(0.0)
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
fn api_keys_are_required_mounted_and_read_in_place_and_network_policies_follow_the_spec() {
    let cluster = cluster();
    let ns = "security";
    cluster.create_namespace(ns).unwrap();

    // Without API keys the API server refuses a pipeline: running without them must be
    // said explicitly, with `auth: {enabled: false}`.
    for auth in [None, Some(json!({})), Some(json!({"enabled": true}))] {
        let mut keyless = pipeline("keyless", "redis");
        match &auth {
            Some(auth) => keyless["spec"]["auth"] = auth.clone(),
            None => {
                keyless["spec"].as_object_mut().unwrap().remove("auth");
            }
        }
        let refused = cluster
            .kubectl_output(&["apply", "-n", ns, "-f", "-"], Some(&keyless.to_string()))
            .unwrap();
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "auth {auth:?} was accepted");
        assert!(
            stderr.contains("auth.keysSecretRef is required"),
            "auth {auth:?}: {stderr}"
        );
    }
    let mut proxies = pipeline("proxies", "redis");
    proxies["spec"]["api"]["trustedProxies"] = json!(["10.244.0.0/16", "10.0.0.300/8"]);
    let refused = cluster
        .kubectl_output(&["apply", "-n", ns, "-f", "-"], Some(&proxies.to_string()))
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("api.trustedProxies holds CIDRs"),
        "{stderr}"
    );

    let redis = RedisServer::start().unwrap();
    secret(cluster, ns, "redis", &redis.url());
    secret(
        cluster,
        ns,
        "postgres",
        "postgres://unused@127.0.0.1:1/unused",
    );
    let mut lp = pipeline("logs", "redis");
    lp["spec"]["auth"] = json!({"keysSecretRef": {"name": "api-keys"}});
    apply(cluster, ns, &lp).unwrap();
    let operator = start_operator(cluster, ns);

    // A missing keys Secret degrades the pipeline like a missing Redis Secret.
    let degraded = wait_condition(cluster, ns, "logs", "Degraded", "True");
    assert_eq!(degraded["reason"], "SecretNotFound", "{degraded}");
    assert_eq!(degraded["message"], "Secret security/api-keys not found");
    let key = ApiKey::new("acme", "collector", &["write", "read"]);
    keys_secret(cluster, ns, "api-keys", &[&key]);
    wait_condition(cluster, ns, "logs", "Degraded", "False");

    // The api reads the whole Secret from a read-only mount; the workers see no keys.
    let api = get(cluster, ns, "deployment/logs-api").unwrap();
    let pod = &api["spec"]["template"]["spec"];
    let env = env_of(&pod["containers"][0]);
    assert_eq!(env["LOGPIPELINE_AUTH"], "keys");
    assert_eq!(
        env["LOGPIPELINE_API_KEYS_FILE"],
        "/etc/logpipeline/keys/keys.yaml"
    );
    assert_eq!(env["LOGPIPELINE_MAX_CONNECTIONS_PER_ADDRESS"], "1000");
    assert!(
        !env.keys()
            .any(|name| name.starts_with("LOGPIPELINE_RATE_LIMIT")
                || name == "LOGPIPELINE_TRUSTED_PROXIES"),
        "{env:?}"
    );
    let volume = &pod["volumes"][0];
    assert_eq!(volume["secret"]["secretName"], "api-keys");
    assert!(volume["secret"].get("items").is_none(), "{volume}");
    let mount = &pod["containers"][0]["volumeMounts"][0];
    assert_eq!(
        (&mount["name"], &mount["mountPath"], &mount["readOnly"]),
        (
            &volume["name"],
            &json!("/etc/logpipeline/keys"),
            &json!(true)
        )
    );
    assert!(
        mount.get("subPath").is_none(),
        "a subPath mount never sees the Secret's updates"
    );
    let worker = get(cluster, ns, "deployment/logs-worker").unwrap();
    assert!(worker["spec"]["template"]["spec"]["volumes"].is_null());
    assert!(
        !env_of(&worker["spec"]["template"]["spec"]["containers"][0])
            .contains_key("LOGPIPELINE_AUTH")
    );

    // A key added to the Secret changes no pod template: the api reads it in place.
    let api_template = api["spec"]["template"].clone();
    let worker_template = worker["spec"]["template"].clone();
    let before = reconciles(&operator);
    let rotated = ApiKey::new("acme", "rotated", &["write"]);
    keys_secret(cluster, ns, "api-keys", &[&key, &rotated]);
    wait_until("two more reconciles", WAIT, || {
        Ok(reconciles(&operator) >= before + 2.0)
    })
    .unwrap_or_else(|error| panic!("{error:#}\n{}", operator.log_tail(40)));
    let api = get(cluster, ns, "deployment/logs-api").unwrap();
    assert_eq!(
        api["spec"]["template"], api_template,
        "the api pods would roll"
    );

    // Limits and trusted proxies reach the api's environment, and only the api rolls.
    patch(
        cluster,
        ns,
        "logs",
        &json!({"spec": {"api": {
            "rateLimits": {
                "perKey": {"requestsPerSecond": 100, "burst": 300},
                "perAddress": {"requestsPerSecond": 20},
            },
            "maxConnectionsPerAddress": 64,
            "trustedProxies": ["10.244.0.0/16", "fd00::/64"],
        }}}),
    );
    let mut env = BTreeMap::new();
    wait_until("the api gets the limits", WAIT, || {
        let api = get(cluster, ns, "deployment/logs-api")?;
        env = env_of(&api["spec"]["template"]["spec"]["containers"][0]);
        Ok(env.contains_key("LOGPIPELINE_RATE_LIMIT_PER_KEY"))
    })
    .unwrap_or_else(|error| panic!("{error:#}\n{}", operator.log_tail(40)));
    for (name, value) in [
        ("LOGPIPELINE_RATE_LIMIT_PER_KEY", "100"),
        ("LOGPIPELINE_RATE_LIMIT_PER_KEY_BURST", "300"),
        ("LOGPIPELINE_RATE_LIMIT_PER_ADDRESS", "20"),
        ("LOGPIPELINE_RATE_LIMIT_PER_ADDRESS_BURST", "20"),
        ("LOGPIPELINE_MAX_CONNECTIONS_PER_ADDRESS", "64"),
        ("LOGPIPELINE_TRUSTED_PROXIES", "10.244.0.0/16,fd00::/64"),
    ] {
        assert_eq!(env.get(name).map(String::as_str), Some(value), "{name}");
    }
    let worker = get(cluster, ns, "deployment/logs-worker").unwrap();
    assert_eq!(
        worker["spec"]["template"], worker_template,
        "the workers rolled"
    );

    // The NetworkPolicies: owned, one per component, ingress to its port only.
    let lp_uid = get(cluster, ns, "logpipeline/logs").unwrap()["metadata"]["uid"].clone();
    let mut froms = Vec::new();
    for (name, component, ports) in [
        (
            "logs-api",
            "api",
            json!([{"port": "http", "protocol": "TCP"}, {"port": "grpc", "protocol": "TCP"}]),
        ),
        (
            "logs-worker",
            "worker",
            json!([{"port": "metrics", "protocol": "TCP"}]),
        ),
    ] {
        let policy = get(cluster, ns, &format!("networkpolicy/{name}")).unwrap();
        let owner = &policy["metadata"]["ownerReferences"][0];
        assert_eq!(
            (&owner["kind"], &owner["uid"]),
            (&json!("LogPipeline"), &lp_uid)
        );
        let spec = &policy["spec"];
        assert_eq!(
            spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
            component
        );
        assert_eq!(
            spec["podSelector"]["matchLabels"]["app.kubernetes.io/instance"],
            "logs"
        );
        assert_eq!(spec["policyTypes"], json!(["Ingress"]));
        assert_eq!(spec["ingress"][0]["ports"], ports);
        froms.push(spec["ingress"][0]["from"].clone());
    }
    let api_access =
        json!({"namespaceSelector": {"matchLabels": {"logpipeline.io/api-access": "true"}}});
    let metrics_access =
        json!({"namespaceSelector": {"matchLabels": {"logpipeline.io/metrics-access": "true"}}});
    assert_eq!(
        froms,
        [
            json!([{"podSelector": {}}, api_access, metrics_access]),
            json!([metrics_access]),
        ]
    );

    // Disabled, they go; enabled again, they come back.
    for (enabled, what) in [(false, "deleted"), (true, "back")] {
        patch(
            cluster,
            ns,
            "logs",
            &json!({"spec": {"api": {"networkPolicy": {"enabled": enabled}}}}),
        );
        wait_until(&format!("the NetworkPolicies are {what}"), WAIT, || {
            Ok(["networkpolicy/logs-api", "networkpolicy/logs-worker"]
                .iter()
                .all(|policy| get(cluster, ns, policy).is_ok() == enabled))
        })
        .unwrap_or_else(|error| panic!("{error:#}\n{}", operator.log_tail(40)));
    }

    // Authentication off: said to the api, and nothing mounted.
    patch(
        cluster,
        ns,
        "logs",
        &json!({"spec": {"auth": {"enabled": false, "keysSecretRef": null}}}),
    );
    wait_until("the api runs without keys", WAIT, || {
        let api = get(cluster, ns, "deployment/logs-api")?;
        let pod = &api["spec"]["template"]["spec"];
        let env = env_of(&pod["containers"][0]);
        Ok(
            env.get("LOGPIPELINE_AUTH").map(String::as_str) == Some("off")
                && !env.contains_key("LOGPIPELINE_API_KEYS_FILE")
                && pod["volumes"].is_null()
                && pod["containers"][0]["volumeMounts"].is_null(),
        )
    })
    .unwrap_or_else(|error| panic!("{error:#}\n{}", operator.log_tail(40)));
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

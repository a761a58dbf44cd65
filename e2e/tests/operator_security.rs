//! The operator's security settings against a real kube-apiserver: API keys required,
//! mounted read-only and read in place by the api; rate limits and trusted proxies that
//! reach the api alone; NetworkPolicies that follow the spec; authentication turned off.
//!
//! Every test has its own namespace and its own operator process (watching only that
//! namespace) on one shared control plane.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::collections::BTreeMap;

use logpipeline_e2e::operator::{
    WAIT, apply, cluster, env_of, get, pipeline, secret, start_operator, wait_condition,
};
use logpipeline_local::auth::{ApiKey, keys_file};
use logpipeline_local::kube::{KubeCluster, Operator};
use logpipeline_local::process::wait_until;
use logpipeline_local::redis::RedisServer;
use serde_json::{Value, json};

/// Secret `name` holding the keys file of `keys` under `keys.yaml`.
fn keys_secret(cluster: &KubeCluster, ns: &str, name: &str, keys: &[&ApiKey]) {
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name},
        "stringData": {"keys.yaml": keys_file(keys)},
    });
    apply(cluster, ns, &secret).unwrap();
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
    secret(cluster, ns, "redis", &redis.url()).unwrap();
    secret(
        cluster,
        ns,
        "postgres",
        "postgres://unused@127.0.0.1:1/unused",
    )
    .unwrap();
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

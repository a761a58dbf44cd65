//! What the operator's tests do on the shared control plane: write `LogPipeline`s and
//! the Secrets they name, read objects back, wait on status conditions, and start an
//! operator that watches one namespace. Each test works in a namespace of its own.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use logpipeline_local::kube::{KubeCluster, Operator, OperatorOptions, shared};
use logpipeline_local::process::wait_until;
use serde_json::{Value, json};

/// How long a test waits for the operator or the API server to get somewhere.
pub const WAIT: Duration = Duration::from_secs(60);

/// The control plane shared by the tests of this process, started on first use. Panics
/// if it cannot start.
pub fn cluster() -> &'static KubeCluster {
    shared().unwrap_or_else(|error| panic!("{error:#}"))
}

/// `kubectl apply`s `object` in namespace `ns`.
pub fn apply(cluster: &KubeCluster, ns: &str, object: &Value) -> Result<String> {
    cluster.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], &object.to_string())
}

/// Secret `name` holding `url` under `url`, as a pipeline's Redis or database Secret.
pub fn secret(cluster: &KubeCluster, ns: &str, name: &str, url: &str) -> Result<()> {
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name},
        "stringData": {"url": url},
    });
    apply(cluster, ns, &secret)?;
    Ok(())
}

/// A pipeline that reads the lag every second and scales 100 entries per worker. Its
/// api accepts requests without a key: the tests of API keys set `spec.auth` themselves.
pub fn pipeline(name: &str, redis_secret: &str) -> Value {
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

/// Object `what` (`kind/name`) of namespace `ns`, as JSON.
pub fn get(cluster: &KubeCluster, ns: &str, what: &str) -> Result<Value> {
    cluster.get_json(&["-n", ns, what])
}

/// Condition `type_` of pipeline `lp`, if its status has one.
pub fn condition(cluster: &KubeCluster, ns: &str, lp: &str, type_: &str) -> Result<Option<Value>> {
    let lp = get(cluster, ns, &format!("logpipeline/{lp}"))?;
    let conditions = lp["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    Ok(conditions.into_iter().find(|c| c["type"] == type_))
}

/// Waits until pipeline `lp` has condition `type_` with `status`, and returns the
/// condition. Panics, with the last one seen, after [`WAIT`].
pub fn wait_condition(
    cluster: &KubeCluster,
    ns: &str,
    lp: &str,
    type_: &str,
    status: &str,
) -> Value {
    let mut found = None;
    let waited = wait_until(&format!("{lp} has {type_}={status}"), WAIT, || {
        found = condition(cluster, ns, lp, type_)?;
        Ok(found.as_ref().is_some_and(|c| c["status"] == status))
    });
    waited.unwrap_or_else(|error| panic!("{error:#}; last {type_}: {found:?}"));
    found.unwrap_or_default()
}

/// The plain values of a container's environment, by name.
pub fn env_of(container: &Value) -> BTreeMap<String, String> {
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

/// Starts an operator watching namespace `ns`. Panics if it does not start.
pub fn start_operator(cluster: &KubeCluster, ns: &str) -> Operator {
    Operator::start(cluster, &OperatorOptions::new(ns)).unwrap_or_else(|error| panic!("{error:#}"))
}

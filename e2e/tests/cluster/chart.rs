//! The chart installed with helm and the sample applied as written: real pods under the
//! operator, Ready through their probes.

use std::time::Duration;

use logpipeline_local::process::wait_until;
use serde_json::json;

use crate::support::{self, NS, OPERATOR_NS, PIPELINE, is_ready, pods};

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

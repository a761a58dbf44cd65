//! The Helm chart and the plain manifests against a real kube-apiserver.

use logpipeline_e2e::kube::{KubeCluster, Operator, OperatorOptions, repo_root};
use logpipeline_e2e::process::wait_until;
use logpipeline_e2e::redis::RedisServer;
use serde_json::json;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

fn start() -> KubeCluster {
    KubeCluster::start().unwrap_or_else(|error| panic!("{error:#}"))
}

#[test]
fn the_chart_lints_renders_installs_and_its_rbac_is_enough_for_the_operator() {
    let cluster = start();
    let chart = repo_root().join("charts/logpipeline");
    let chart = chart.to_string_lossy();

    let lint = cluster
        .helm(&["lint", "--strict", &chart, "--set", "sample.enabled=true"])
        .unwrap();
    assert!(lint.contains("0 chart(s) failed"), "{lint}");
    let refused = cluster.helm(&["lint", &chart, "--set", "operator.logFormat=xml"]);
    assert!(
        refused.is_err(),
        "values.schema.json refuses an unknown log format"
    );

    let rendered = cluster
        .helm(&[
            "template",
            "lp",
            &chart,
            "--namespace",
            "logpipeline-system",
        ])
        .unwrap();
    for kind in [
        "CustomResourceDefinition",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
    ] {
        assert!(
            rendered.contains(&format!("\nkind: {kind}\n")),
            "helm template renders a {kind}"
        );
    }
    assert!(
        !rendered.contains("\nkind: LogPipeline\n"),
        "no sample unless asked for"
    );
    let without_crd = cluster
        .helm(&["template", "lp", &chart, "--set", "crds.create=false"])
        .unwrap();
    assert!(!without_crd.contains("kind: CustomResourceDefinition"));

    let installed = cluster
        .helm(&[
            "install",
            "lp",
            &chart,
            "--namespace",
            "logpipeline-system",
            "--create-namespace",
            "--set",
            "sample.enabled=true",
        ])
        .unwrap();
    assert!(installed.contains("STATUS: deployed"), "{installed}");
    assert!(
        installed.contains("kubectl -n logpipeline-system get lp logs -w"),
        "NOTES say what to do next: {installed}"
    );
    let ns = "logpipeline-system";
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/logpipelines.logpipeline.io",
        ])
        .unwrap();
    let deployment = cluster
        .get_json(&["-n", ns, "deployment/lp-logpipeline-operator"])
        .unwrap();
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "lp-logpipeline-operator");
    assert_eq!(
        pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"],
        true
    );
    assert_eq!(deployment["spec"]["replicas"], 2);
    cluster.get_json(&["-n", ns, "logpipeline/logs"]).unwrap();

    // The operator, authenticated as the chart's ServiceAccount, does its whole job.
    let redis = RedisServer::start().unwrap();
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "logs-redis"},
        "stringData": {"url": redis.url()},
    });
    cluster
        .kubectl_stdin(&["apply", "-n", ns, "-f", "-"], &secret.to_string())
        .unwrap();
    let kubeconfig = cluster
        .service_account_kubeconfig(ns, "lp-logpipeline-operator")
        .unwrap();
    let denied = cluster.kubectl_output(
        &[
            "--kubeconfig",
            &kubeconfig.to_string_lossy(),
            "auth",
            "can-i",
            "delete",
            "deployments",
            "-n",
            ns,
        ],
        None,
    );
    assert!(
        !denied.unwrap().status.success(),
        "the operator may not delete Deployments"
    );
    let options = OperatorOptions {
        kubeconfig: Some(kubeconfig),
        ..OperatorOptions::new(ns)
    };
    let mut operator = Operator::start(&cluster, &options).unwrap();
    wait_until(
        "the sample is reconciled under the chart's RBAC",
        WAIT,
        || {
            operator.ensure_running()?;
            let lp = cluster.get_json(&["-n", ns, "logpipeline/logs"])?;
            let conditions = lp["status"]["conditions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let healthy = conditions
                .iter()
                .any(|c| c["type"] == "Degraded" && c["status"] == "False");
            Ok(healthy
                && cluster
                    .get_json(&["-n", ns, "deployment/logs-worker"])
                    .is_ok())
        },
    )
    .unwrap_or_else(|error| panic!("{error:#}\n{}", operator.log_tail(40)));
    assert_eq!(
        operator
            .metric("logpipeline_operator_reconcile_errors_total{kind=\"kube\"}")
            .unwrap(),
        None
    );
    operator.stop().unwrap();

    // The CRD stays when the release goes (deleting it would delete every pipeline).
    cluster
        .helm(&["uninstall", "lp", "--namespace", ns])
        .unwrap();
    cluster
        .kubectl(&["get", "crd", "logpipelines.logpipeline.io"])
        .unwrap();
}

#[test]
fn the_plain_manifests_pass_a_server_side_dry_run() {
    let cluster = start();
    let manifests = repo_root().join("manifests");
    // A dry run creates nothing, so what later files need must exist for real first.
    for file in ["install/00-namespace.yaml", "install/01-crd.yaml"] {
        cluster
            .kubectl(&["apply", "-f", &manifests.join(file).to_string_lossy()])
            .unwrap();
    }
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/logpipelines.logpipeline.io",
        ])
        .unwrap();
    let output = cluster
        .kubectl(&[
            "apply",
            "--dry-run=server",
            "--recursive",
            "-f",
            &manifests.to_string_lossy(),
        ])
        .unwrap();
    for object in [
        "clusterrole.rbac.authorization.k8s.io/logpipeline-operator",
        "deployment.apps/logpipeline-operator",
        "logpipeline.logpipeline.io/logs",
        "secret/logpipeline-redis",
    ] {
        assert!(
            output.contains(object),
            "{object} is in the dry run: {output}"
        );
    }
}

//! The Helm chart and the plain manifests against a real kube-apiserver.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use logpipeline_local::kube::{KubeCluster, Operator, OperatorOptions, repo_root};
use logpipeline_local::process::wait_until;
use logpipeline_local::redis::RedisServer;
use serde_json::{Value, json};
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
        "NetworkPolicy",
    ] {
        assert!(
            rendered.contains(&format!("\nkind: {kind}\n")),
            "helm template renders a {kind}"
        );
    }
    let without_policy = cluster
        .helm(&[
            "template",
            "lp",
            &chart,
            "--set",
            "networkPolicy.enabled=false",
        ])
        .unwrap();
    assert!(!without_policy.contains("kind: NetworkPolicy"));
    assert!(
        !rendered.contains("\nkind: LogPipeline\n"),
        "no sample unless asked for"
    );
    let without_crd = cluster
        .helm(&["template", "lp", &chart, "--set", "crds.create=false"])
        .unwrap();
    assert!(!without_crd.contains("kind: CustomResourceDefinition"));

    // The sample's API keys: by default a Secret of the chart's, which the pipeline
    // names; or an existing Secret; or, said explicitly, none.
    let sample = |extra: &[&str]| -> Vec<Value> {
        let mut args = vec!["template", "lp", &chart, "--set", "sample.enabled=true"];
        for value in extra {
            args.extend(["--set", *value]);
        }
        let rendered = cluster.helm(&args).unwrap();
        rendered
            .split("\n---")
            .filter_map(|document| serde_yaml::from_str(document).ok())
            .filter(|object: &Value| object.is_object())
            .collect()
    };
    let find = |objects: &[Value], kind: &str, name: &str| -> Option<Value> {
        objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .cloned()
    };
    let objects = sample(&[]);
    let keys = find(&objects, "Secret", "logs-api-keys").expect("the sample's keys Secret");
    let file: Value =
        serde_yaml::from_str(keys["stringData"]["keys.yaml"].as_str().unwrap()).unwrap();
    assert!(file["tenants"].is_object(), "{file}");
    let lp = find(&objects, "LogPipeline", "logs").unwrap();
    assert_eq!(
        lp["spec"]["auth"],
        json!({"keysSecretRef": {"name": "logs-api-keys", "key": "keys.yaml"}})
    );
    let objects = sample(&["sample.auth.keysSecretRef.name=my-keys"]);
    assert!(find(&objects, "Secret", "logs-api-keys").is_none());
    let lp = find(&objects, "LogPipeline", "logs").unwrap();
    assert_eq!(lp["spec"]["auth"]["keysSecretRef"]["name"], "my-keys");
    let objects = sample(&["sample.auth.enabled=false"]);
    assert!(find(&objects, "Secret", "logs-api-keys").is_none());
    let lp = find(&objects, "LogPipeline", "logs").unwrap();
    assert_eq!(lp["spec"]["auth"], json!({"enabled": false}));

    // The sample comes on an upgrade: its kind is the CRD this release installs, which
    // a post-install hook may not find registered yet without `--wait`, and `--wait`
    // needs a kubelet (the cluster tests install with it).
    let ns = "logpipeline-system";
    let installed = cluster
        .helm(&[
            "install",
            "lp",
            &chart,
            "--namespace",
            ns,
            "--create-namespace",
        ])
        .unwrap();
    assert!(installed.contains("STATUS: deployed"), "{installed}");
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/logpipelines.logpipeline.io",
        ])
        .unwrap();
    let upgraded = cluster
        .helm(&[
            "upgrade",
            "lp",
            &chart,
            "--namespace",
            ns,
            "--set",
            "sample.enabled=true",
        ])
        .unwrap();
    assert!(
        upgraded.contains("kubectl -n logpipeline-system get lp logs -w"),
        "NOTES say what to do next: {upgraded}"
    );
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
    for (verb, what) in [
        ("create", "networkpolicies.networking.k8s.io"),
        ("patch", "networkpolicies.networking.k8s.io"),
        ("delete", "networkpolicies.networking.k8s.io"),
    ] {
        let allowed = cluster
            .kubectl_output(
                &[
                    "--kubeconfig",
                    &kubeconfig.to_string_lossy(),
                    "auth",
                    "can-i",
                    verb,
                    what,
                    "-n",
                    "elsewhere",
                ],
                None,
            )
            .unwrap();
        assert!(allowed.status.success(), "the operator may {verb} {what}");
    }
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
                    .is_ok()
                && cluster
                    .get_json(&["-n", ns, "networkpolicy/logs-worker"])
                    .is_ok())
        },
    )
    .unwrap_or_else(|error| panic!("{error:#}\n{}", operator.log_tail(40)));
    assert_eq!(
        operator
            .metric("logpipeline_operator_reconcile_errors_total{kind=\"kube\"}")
            .unwrap(),
        Some(0.0)
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
    // A dry run creates nothing, so what later files need must exist for real first:
    // the namespace, the CRD, and the Prometheus Operator's CRDs the monitoring
    // manifests' PodMonitors and PrometheusRule are checked against.
    let crds = cluster.tools().dir.join("crds");
    for file in [
        manifests.join("install/00-namespace.yaml"),
        manifests.join("install/01-crd.yaml"),
        crds.join("monitoring.coreos.com_podmonitors.yaml"),
        crds.join("monitoring.coreos.com_prometheusrules.yaml"),
    ] {
        cluster
            .kubectl(&["apply", "--server-side", "-f", &file.to_string_lossy()])
            .unwrap();
    }
    for crd in [
        "logpipelines.logpipeline.io",
        "podmonitors.monitoring.coreos.com",
        "prometheusrules.monitoring.coreos.com",
    ] {
        cluster
            .kubectl(&[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                &format!("crd/{crd}"),
            ])
            .unwrap();
    }
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
        "secret/logpipeline-api-keys",
        "podmonitor.monitoring.coreos.com/logpipeline-pipelines",
        "prometheusrule.monitoring.coreos.com/logpipeline",
        "configmap/logpipeline-overview-dashboard",
    ] {
        assert!(
            output.contains(object),
            "{object} is in the dry run: {output}"
        );
    }
}

#[test]
fn the_chart_ships_the_dashboards_alert_rules_and_pod_monitors_when_asked() {
    let cluster = start();
    let chart = repo_root().join("charts/logpipeline");
    let chart = chart.to_string_lossy();
    let plain = cluster.helm(&["template", "lp", &chart]).unwrap();
    for kind in ["PrometheusRule", "PodMonitor"] {
        assert!(
            !plain.contains(&format!("kind: {kind}")),
            "{kind} by default"
        );
    }

    let rendered = cluster
        .helm(&[
            "template",
            "lp",
            &chart,
            "--namespace",
            "logpipeline-system",
            "--set",
            "monitoring.dashboards.enabled=true",
            "--set",
            "monitoring.prometheusRule.enabled=true",
            "--set",
            "monitoring.prometheusRule.labels.release=prometheus",
            "--set",
            "monitoring.podMonitor.enabled=true",
            "--set",
            "monitoring.logsDatasource.enabled=true",
            "--set",
            "monitoring.logsDatasource.password=s3cret",
        ])
        .unwrap();
    let objects: Vec<serde_json::Value> = rendered
        .split("\n---")
        .filter_map(|document| serde_yaml::from_str(document).ok())
        .filter(|object: &serde_json::Value| object.is_object())
        .collect();
    let of_kind = |kind: &str| -> Vec<&serde_json::Value> {
        objects
            .iter()
            .filter(|object| object["kind"] == kind)
            .collect()
    };

    let dashboards: Vec<_> = of_kind("ConfigMap")
        .into_iter()
        .filter(|map| map["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    let shipped = xtask::monitoring::dashboards(&repo_root()).unwrap();
    assert_eq!(dashboards.len(), shipped.len());
    for (stem, json) in &shipped {
        let key = format!("{stem}.json");
        let found = dashboards
            .iter()
            .find_map(|map| map["data"][&key].as_str())
            .unwrap_or_else(|| panic!("no ConfigMap holds {key}"));
        let parsed: serde_json::Value = serde_json::from_str(found).unwrap();
        assert_eq!(
            parsed,
            serde_json::from_str::<serde_json::Value>(json).unwrap()
        );
    }

    // The log panels' data source: PostgreSQL, under the uid and type the dashboards'
    // `logs_database` variable selects, for the datasource sidecar.
    let sources: Vec<_> = of_kind("Secret")
        .into_iter()
        .filter(|secret| secret["metadata"]["labels"]["grafana_datasource"] == "1")
        .collect();
    assert_eq!(sources.len(), 1);
    let provisioning: serde_json::Value = serde_yaml::from_str(
        sources[0]["stringData"]["logpipeline-logs.yaml"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let source = &provisioning["datasources"][0];
    assert_eq!(source["type"], "grafana-postgresql-datasource");
    assert_eq!(source["uid"], "logpipeline-logs");
    assert_eq!(source["jsonData"]["database"], "logpipeline");
    assert_eq!(source["secureJsonData"]["password"], "s3cret");
    let without_password = cluster.helm(&[
        "template",
        "lp",
        &chart,
        "--set",
        "monitoring.logsDatasource.enabled=true",
    ]);
    assert!(
        format!("{without_password:?}").contains("monitoring.logsDatasource.password"),
        "{without_password:?}"
    );

    let rules = of_kind("PrometheusRule");
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["metadata"]["labels"]["release"], "prometheus");
    let source: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(repo_root().join(xtask::monitoring::RULES)).unwrap(),
    )
    .unwrap();
    assert_eq!(rules[0]["spec"]["groups"], source["groups"]);

    let monitors = of_kind("PodMonitor");
    assert_eq!(monitors.len(), 2, "the operator's and the pipelines'");
    let pipelines = monitors
        .iter()
        .find(|monitor| monitor["spec"]["namespaceSelector"]["any"] == true)
        .expect("a PodMonitor for pipelines in every namespace");
    let ports: Vec<&str> = pipelines["spec"]["podMetricsEndpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|endpoint| endpoint["port"].as_str().unwrap())
        .collect();
    assert_eq!(
        ports,
        ["http", "metrics"],
        "the api's and the worker's ports"
    );
}

//! The node cluster's add-ons: CoreDNS, metrics-server and Traefik, from the manifests in
//! `local/k8s/addons/` with the images the harness builds.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::kube::{Kubectl, pinned_version, repo_root};

/// Each add-on, its manifest's name, its version's key in `versions.env`, and what to
/// wait for once it is applied.
const ADDONS: [(&str, &str, &str); 3] = [
    (
        "coredns",
        "COREDNS_VERSION",
        "kube-system/deployment/coredns",
    ),
    (
        "metrics-server",
        "METRICS_SERVER_VERSION",
        "kube-system/deployment/metrics-server",
    ),
    ("traefik", "TRAEFIK_VERSION", "traefik/deployment/traefik"),
];

/// The image of add-on `name`, e.g. `localhost/logpipeline-e2e/coredns:v1.12.1`.
pub fn image(name: &str) -> String {
    let version = ADDONS
        .iter()
        .find(|(addon, _, _)| *addon == name)
        .and_then(|(_, key, _)| pinned_version(key).ok())
        .unwrap_or("latest");
    format!("localhost/logpipeline-e2e/{name}:{version}")
}

/// Applies every add-on and waits until each runs, and until the metrics API serves.
pub fn install(kubectl: &Kubectl, timeout: Duration) -> Result<()> {
    for (name, _, _) in ADDONS {
        let path = repo_root().join(format!("local/k8s/addons/{name}.yaml"));
        let manifest = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .replace("${IMAGE}", &image(name));
        kubectl.kubectl_stdin(&["apply", "--server-side", "-f", "-"], &manifest)?;
    }
    let timeout = format!("--timeout={}s", timeout.as_secs());
    for (_, _, workload) in ADDONS {
        let (namespace, object) = workload.split_once('/').context("no namespace")?;
        if let Err(error) =
            kubectl.kubectl(&["rollout", "status", "-n", namespace, object, &timeout])
        {
            bail!("{error:#}\n{}", diagnosis(kubectl, namespace, object));
        }
    }
    kubectl.kubectl(&[
        "wait",
        "--for=condition=Available",
        &timeout,
        "apiservice/v1beta1.metrics.k8s.io",
    ])?;
    Ok(())
}

/// Why a workload of `namespace` is not available: its pods, their events and the last
/// lines of its log, or what kubectl said instead.
fn diagnosis(kubectl: &Kubectl, namespace: &str, workload: &str) -> String {
    let show = |args: &[&str]| {
        kubectl
            .kubectl(args)
            .unwrap_or_else(|error| format!("{error:#}"))
    };
    format!(
        "pods:\n{}\nevents:\n{}\nlog of {workload}:\n{}",
        show(&["get", "pods", "-n", namespace, "-o", "wide"]),
        show(&["get", "events", "-n", namespace, "--sort-by=.lastTimestamp"]),
        show(&[
            "logs",
            "-n",
            namespace,
            workload,
            "--all-containers",
            "--tail=40"
        ]),
    )
}

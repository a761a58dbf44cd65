//! `logpipeline cluster`: a real one-node Kubernetes cluster on this machine, with
//! LogPipeline's images loaded.
//!
//! It builds the images (LogPipeline's with `deploy/build.sh`, the add-ons', Redis and
//! PostgreSQL from Debian's packages), starts the cluster and prints the `KUBECONFIG` to
//! use with `kubectl` and `helm`. Ctrl-C (or SIGTERM) tears everything down. Needs root
//! and the tools `e2e/test.sh` installs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use logpipeline_local::kube::repo_root;
use logpipeline_local::node::{
    INGRESS_HTTP_PORT, INGRESS_HTTPS_PORT, NEXT_STEPS, Node, NodeInfo, NodeOptions,
};
use logpipeline_local::process::signal_descendants;
use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};

/// Runs a one-node Kubernetes cluster until interrupted.
#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// Write what the cluster offers (kubeconfig, node address, images) as JSON to this
    /// file once it is ready.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Do not build and load LogPipeline's own images (quicker, for the add-ons alone).
    #[arg(long)]
    pub without_logpipeline_images: bool,
    /// Take the binaries of LogPipeline's images from this directory (e.g. target/debug)
    /// instead of a release build.
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with = "without_logpipeline_images"
    )]
    pub binaries: Option<PathBuf>,
}

/// Starts the cluster, prints how to use it, and tears it down on Ctrl-C or SIGTERM.
pub async fn run(args: ClusterArgs) -> Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let options = NodeOptions {
        product_images: !args.without_logpipeline_images,
        binaries: args.binaries,
    };
    let started = Instant::now();
    let mut starting = tokio::task::spawn_blocking(move || Node::start(&options));
    let node = tokio::select! {
        node = &mut starting => node??,
        _ = terminate.recv() => return interrupted(starting).await,
        _ = interrupt.recv() => return interrupted(starting).await,
        _ = hangup.recv() => return interrupted(starting).await,
    };
    let info = node.info();
    let steps: String = next_steps(info)?
        .iter()
        .map(|line| format!("  {line}\n"))
        .collect();
    println!(
        "\nThe cluster is ready ({:.0?}). {NEXT_STEPS}\n\n{steps}\nIngress: http://{}:{INGRESS_HTTP_PORT} and https://{}:{INGRESS_HTTPS_PORT} (Traefik, the default IngressClass).\nImages on the node: {}\nLogs of every component: {}/logs\nCtrl-C tears it all down.",
        started.elapsed(),
        info.node_ip,
        info.node_ip,
        info.images.join(", "),
        info.dir.display(),
    );
    std::io::stdout().flush()?;
    if let Some(path) = &args.ready_file {
        let partial = path.with_extension("partial");
        std::fs::write(&partial, serde_json::to_string_pretty(info)?)?;
        std::fs::rename(&partial, path)?;
    }
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
        _ = hangup.recv() => {}
    }
    eprintln!("tearing the cluster down");
    tokio::task::spawn_blocking(move || node.stop()).await??;
    eprintln!("done");
    Ok(())
}

/// The shell lines a user runs next, working as they stand from any directory: the
/// kubeconfig, the helm built for this cluster put on `PATH`, and the chart by its
/// full path.
fn next_steps(info: &NodeInfo) -> Result<Vec<String>> {
    let quote = |path: &Path| -> Result<String> {
        let path = path.to_str().context("a path that is not UTF-8")?;
        Ok(shlex::try_quote(path)?.into_owned())
    };
    let tools = info.helm.parent().context("helm has no directory")?;
    let chart = repo_root().join("charts/logpipeline");
    Ok(vec![
        format!("export KUBECONFIG={}", quote(&info.kubeconfig)?),
        format!("export PATH={}:\"$PATH\"", quote(tools)?),
        "kubectl get nodes".to_owned(),
        format!(
            "helm install logpipeline {} -n logpipeline-system --create-namespace",
            quote(&chart)?
        ),
    ])
}

/// Stops the start in progress: every process it started gets SIGTERM, so builds and
/// components exit, the start fails and tears down what it made.
async fn interrupted(starting: tokio::task::JoinHandle<Result<Node>>) -> Result<()> {
    eprintln!("interrupted while starting; tearing down");
    signal_descendants(Signal::SIGTERM);
    match starting.await? {
        Ok(node) => tokio::task::spawn_blocking(move || node.stop()).await??,
        Err(error) => eprintln!("the start stopped: {error:#}"),
    }
    anyhow::bail!("interrupted")
}

//! `logpipeline cluster`: a real one-node Kubernetes cluster on this machine, with
//! LogPipeline's images loaded.
//!
//! It builds the images (LogPipeline's with `deploy/build.sh`, the add-ons', Redis and
//! PostgreSQL from Debian's packages), starts the cluster and prints the `KUBECONFIG` to
//! use with `kubectl` and `helm`. Ctrl-C (or SIGTERM) tears everything down. Needs root
//! and the tools `e2e/test.sh` installs.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use logpipeline_local::node::{INGRESS_HTTP_PORT, INGRESS_HTTPS_PORT, Node, NodeOptions};
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
    println!(
        "\nThe cluster is ready ({:.0?}). In another shell:\n\n  export KUBECONFIG={}\n  kubectl get nodes\n  helm install logpipeline charts/logpipeline -n logpipeline-system --create-namespace\n\nIngress: http://{}:{INGRESS_HTTP_PORT} and https://{}:{INGRESS_HTTPS_PORT} (Traefik, the default IngressClass).\nImages on the node: {}\nLogs of every component: {}/logs\nCtrl-C tears it all down.",
        started.elapsed(),
        info.kubeconfig.display(),
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

//! Real Kubernetes for tests.
//!
//! - [`KubeCluster`]: a bare control plane, etcd and kube-apiserver on free ports of
//!   127.0.0.1 in a temporary directory. No kubelet runs, so pods never start: for what
//!   the API server alone decides (schemas, CEL rules, RBAC, server-side dry runs).
//! - [`crate::node::NodeCluster`]: a whole one-node cluster with a kubelet, where pods
//!   run.
//! - [`Kubectl`]: `kubectl` and `helm` against either.
//! - [`Operator`]: the operator binary as a local process.
//!
//! The binaries come from `local/k8s/build-tools.sh` (built from the Go module proxy and
//! cached outside the repository).

pub mod pki;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::process::{ChildProcess, free_port, scratch_dir, wait_until};
use pki::{Pki, TokenUser};

/// The pinned tool versions, shared with `build-tools.sh`.
const VERSIONS: &str = include_str!("../../k8s/versions.env");

/// The version `versions.env` pins for `name`, e.g. `KUBERNETES_VERSION`.
pub fn pinned_version(name: &str) -> Result<&'static str> {
    VERSIONS
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
        .map(str::trim)
        .with_context(|| format!("{name} is missing from local/k8s/versions.env"))
}

/// Paths of the tools `build-tools.sh` builds.
#[derive(Debug, Clone)]
pub struct Tools {
    pub dir: PathBuf,
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kube_scheduler: PathBuf,
    pub kubelet: PathBuf,
    pub kube_proxy: PathBuf,
    pub pause: PathBuf,
    pub coredns: PathBuf,
    pub metrics_server: PathBuf,
    pub traefik: PathBuf,
    pub helm: PathBuf,
}

/// `local/k8s/build-tools.sh`.
pub fn build_tools_script() -> PathBuf {
    repo_root().join("local/k8s/build-tools.sh")
}

/// Where `build-tools.sh` puts the binaries (it says, from the versions it pins).
pub fn tools_dir() -> Result<PathBuf> {
    let output = Command::new(build_tools_script())
        .arg("--print-dir")
        .output()
        .context("running local/k8s/build-tools.sh --print-dir")?;
    ensure!(
        output.status.success(),
        "local/k8s/build-tools.sh --print-dir failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(PathBuf::from(String::from_utf8(output.stdout)?.trim()))
}

/// The tools, or an error that says how to build them.
pub fn tools() -> Result<Tools> {
    let dir = tools_dir()?;
    let tools = Tools {
        etcd: dir.join("etcd"),
        kube_apiserver: dir.join("kube-apiserver"),
        kube_controller_manager: dir.join("kube-controller-manager"),
        kube_scheduler: dir.join("kube-scheduler"),
        kubelet: dir.join("kubelet"),
        kube_proxy: dir.join("kube-proxy"),
        pause: dir.join("pause"),
        coredns: dir.join("coredns"),
        metrics_server: dir.join("metrics-server"),
        traefik: dir.join("traefik"),
        helm: dir.join("helm"),
        dir,
    };
    for tool in [
        &tools.etcd,
        &tools.kube_apiserver,
        &tools.kube_controller_manager,
        &tools.kube_scheduler,
        &tools.kubelet,
        &tools.kube_proxy,
        &tools.pause,
        &tools.coredns,
        &tools.metrics_server,
        &tools.traefik,
        &tools.helm,
    ] {
        ensure!(
            tool.is_file(),
            "{} is missing: e2e/test.sh builds the Kubernetes tools (or run local/k8s/build-tools.sh; Go from the module proxy, about 25 minutes cold)",
            tool.display()
        );
    }
    Ok(tools)
}

/// The repository root (the workspace this crate belongs to).
pub fn repo_root() -> PathBuf {
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR"));
    e2e.parent().unwrap_or(e2e).to_path_buf()
}

/// `kubectl` and `helm` against one cluster, as its admin unless told otherwise.
#[derive(Debug, Clone)]
pub struct Kubectl {
    kubeconfig: PathBuf,
    server: String,
    ca_cert: PathBuf,
    helm: PathBuf,
    /// Where kubeconfigs of other users and helm's own files go.
    dir: PathBuf,
}

impl Kubectl {
    /// A client of the API server at `server` (whose CA is `ca_cert`) as the user of
    /// `kubeconfig`, keeping its files in `dir`.
    pub fn new(kubeconfig: &Path, server: &str, ca_cert: &Path, helm: &Path, dir: &Path) -> Self {
        Self {
            kubeconfig: kubeconfig.to_owned(),
            server: server.to_owned(),
            ca_cert: ca_cert.to_owned(),
            helm: helm.to_owned(),
            dir: dir.to_owned(),
        }
    }

    /// The kubeconfig of a cluster-admin user.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The cluster's directory: its logs, certificates and kubeconfigs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A kubeconfig that authenticates as ServiceAccount `namespace/name`, with a token
    /// from the TokenRequest API: a client with exactly the RBAC that account has.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let token = self.kubectl(&["create", "token", name, "-n", namespace, "--duration=1h"])?;
        let path = self.dir.join(format!("kubeconfig-{namespace}-{name}"));
        std::fs::write(
            &path,
            kubeconfig_yaml(&self.server, &self.ca_cert, token.trim()),
        )?;
        Ok(path)
    }

    /// Runs `kubectl` against this cluster and returns what it printed, whatever the exit.
    pub fn kubectl_output(&self, args: &[&str], stdin: Option<&str>) -> Result<Output> {
        let mut command = Command::new("kubectl");
        command.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        run(command, stdin)
    }

    /// Runs `kubectl` and returns its standard output; fails with its error output.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        succeeded("kubectl", args, self.kubectl_output(args, None)?)
    }

    /// Runs `kubectl` with `input` on its standard input (e.g. `apply -f -`).
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Result<String> {
        succeeded("kubectl", args, self.kubectl_output(args, Some(input))?)
    }

    /// A JSON object read with `kubectl get -o json`.
    pub fn get_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = vec!["get", "-o", "json"];
        all.extend_from_slice(args);
        Ok(serde_json::from_str(&self.kubectl(&all)?)?)
    }

    /// Runs `helm` against this cluster; fails with its error output.
    pub fn helm(&self, args: &[&str]) -> Result<String> {
        let mut command = Command::new(&self.helm);
        command
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            // Keep helm's cache, config and data inside the cluster's directory.
            .env("HELM_CACHE_HOME", self.dir.join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.join("helm/data"));
        succeeded("helm", args, run(command, None)?)
    }

    /// Creates a namespace.
    pub fn create_namespace(&self, name: &str) -> Result<()> {
        self.kubectl(&["create", "namespace", name])?;
        Ok(())
    }

    /// Installs the generated CRD and waits until it is established.
    pub fn install_crd(&self) -> Result<()> {
        let crd = repo_root().join("crds/logpipeline.yaml");
        self.kubectl(&["apply", "--server-side", "-f", &crd.to_string_lossy()])?;
        self.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/logpipelines.logpipeline.io",
        ])?;
        Ok(())
    }
}

/// A running etcd and kube-apiserver, stopped when dropped.
#[derive(Debug)]
pub struct KubeCluster {
    // Declared first so they are dropped (killed) before the directory goes.
    apiserver: ChildProcess,
    etcd: ChildProcess,
    tools: Tools,
    kubectl: Kubectl,
    _dir: TempDir,
}

impl Deref for KubeCluster {
    type Target = Kubectl;

    fn deref(&self) -> &Kubectl {
        &self.kubectl
    }
}

impl KubeCluster {
    /// Starts a control plane and waits until the API server is ready.
    pub fn start() -> Result<Self> {
        let tools = tools()?;
        let dir = scratch_dir("logpipeline-kube-")?;
        let admin = TokenUser::new("admin", &["system:masters"])?;
        let server_names = ["127.0.0.1", "localhost", "kubernetes.default.svc"].map(String::from);
        let pki = Pki::write(
            &dir.path().join("pki"),
            &server_names,
            std::slice::from_ref(&admin),
        )?;

        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let mut etcd = ChildProcess::spawn(
            "etcd",
            etcd_command(&tools, &dir.path().join("etcd"), &etcd_url, peer_port),
            &dir.path().join("etcd.log"),
        )?;
        wait_while_running(&mut etcd, "etcd listens", Duration::from_secs(30), || {
            Ok(TcpStream::connect(("127.0.0.1", etcd_port)).is_ok())
        })?;

        let port = free_port()?;
        let mut apiserver = Command::new(&tools.kube_apiserver);
        apiserver
            .args(["--etcd-servers", &etcd_url])
            .args([
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
            ])
            .args(["--secure-port", &port.to_string()])
            .arg("--cert-dir")
            .arg(dir.path().join("apiserver-certs"))
            .arg("--tls-cert-file")
            .arg(&pki.apiserver.cert)
            .arg("--tls-private-key-file")
            .arg(&pki.apiserver.key)
            .arg("--client-ca-file")
            .arg(&pki.ca.cert)
            .arg("--token-auth-file")
            .arg(&pki.tokens)
            .args(["--authorization-mode", "RBAC"])
            .arg("--service-account-key-file")
            .arg(&pki.service_account_public_key)
            .arg("--service-account-signing-key-file")
            .arg(&pki.service_account_key)
            .args([
                "--service-account-issuer",
                "https://kubernetes.default.svc.cluster.local",
            ])
            .args(["--service-cluster-ip-range", "10.96.0.0/16"])
            .args([
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=1",
            ]);
        let apiserver = ChildProcess::spawn(
            "kube-apiserver",
            apiserver,
            &dir.path().join("kube-apiserver.log"),
        )?;

        let server = format!("https://127.0.0.1:{port}");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            kubeconfig_yaml(&server, &pki.ca.cert, &admin.token),
        )?;
        let kubectl = Kubectl::new(&kubeconfig, &server, &pki.ca.cert, &tools.helm, dir.path());
        let mut cluster = Self {
            apiserver,
            etcd,
            tools,
            kubectl,
            _dir: dir,
        };
        cluster.etcd.ensure_running()?;
        let kubectl = cluster.kubectl.clone();
        wait_for_apiserver(&mut cluster.apiserver, &kubectl)?;
        Ok(cluster)
    }

    /// The tool binaries it runs.
    pub fn tools(&self) -> &Tools {
        &self.tools
    }
}

/// etcd with its data in `data_dir`, serving clients on `client_url` (on 127.0.0.1).
pub fn etcd_command(tools: &Tools, data_dir: &Path, client_url: &str, peer_port: u16) -> Command {
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let mut etcd = Command::new(&tools.etcd);
    etcd.args(["--name", "e2e", "--data-dir"])
        .arg(data_dir)
        .args([
            "--listen-client-urls",
            client_url,
            "--advertise-client-urls",
            client_url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("e2e={peer_url}")])
        .args(["--unsafe-no-fsync", "--log-level", "warn"]);
    etcd
}

/// Waits until the API server `apiserver` answers `/readyz` and has made the `default`
/// namespace, failing at once if it exits.
pub fn wait_for_apiserver(apiserver: &mut ChildProcess, kubectl: &Kubectl) -> Result<()> {
    let mut last = String::new();
    let waited = wait_while_running(
        apiserver,
        "kube-apiserver is ready",
        Duration::from_secs(120),
        || {
            let output = kubectl.kubectl_output(&["get", "--raw", "/readyz"], None)?;
            last = String::from_utf8_lossy(&output.stderr).into_owned();
            if !output.status.success() {
                return Ok(false);
            }
            // The bootstrap controller creates the `default` namespace shortly after.
            Ok(kubectl
                .kubectl_output(&["get", "namespace", "default"], None)?
                .status
                .success())
        },
    );
    waited.with_context(|| {
        format!(
            "kube-apiserver did not become ready; kubectl said: {last}\nkube-apiserver log:\n{}",
            apiserver.log_tail(30)
        )
    })
}

/// Like [`wait_until`], but fails at once, quoting its log, when `process` exits.
pub fn wait_while_running(
    process: &mut ChildProcess,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let mut exited = None;
    let waited = wait_until(what, timeout, || {
        if let Err(error) = process.ensure_running() {
            exited = Some(error);
            return Ok(true);
        }
        check()
    });
    match exited {
        Some(error) => Err(error.context(format!("while waiting until {what}"))),
        None => waited,
    }
}

fn run(mut command: Command, stdin: Option<&str>) -> Result<Output> {
    command
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .with_context(|| format!("running {command:?}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

fn succeeded(program: &str, args: &[&str], output: Output) -> Result<String> {
    if !output.status.success() {
        bail!(
            "{program} {} failed ({}): {}{}",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub fn kubeconfig_yaml(server: &str, ca_cert: &Path, token: &str) -> String {
    let ca = ca_cert.display();
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: admin
  user:
    token: {token}
contexts:
- name: e2e
  context:
    cluster: e2e
    user: admin
    namespace: default
current-context: e2e
"
    )
}

/// One control plane per test process, started on first use, with the CRD installed.
///
/// It is never dropped; its processes die with the test process (parent-death signal).
pub fn shared() -> Result<&'static KubeCluster> {
    static SHARED: OnceLock<std::result::Result<KubeCluster, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let start = || -> Result<KubeCluster> {
                let cluster = KubeCluster::start()?;
                cluster.install_crd()?;
                Ok(cluster)
            };
            start().map_err(|error| format!("{error:#}"))
        })
        .as_ref()
        .map_err(|error| anyhow::anyhow!("the shared control plane failed to start: {error}"))
}

/// How to run an [`Operator`].
#[derive(Debug, Clone)]
pub struct OperatorOptions {
    /// Namespace it watches (tests run each operator in its own namespace).
    pub namespace: String,
    /// Its identity in the Lease and in Events.
    pub identity: String,
    /// Seconds the Lease stays valid without renewal.
    pub lease_duration_secs: u64,
    /// The kubeconfig it uses; the cluster's admin when `None`.
    pub kubeconfig: Option<PathBuf>,
}

impl OperatorOptions {
    /// An operator watching `namespace`, holding a Lease there.
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            identity: format!("operator-{namespace}"),
            lease_duration_secs: 15,
            kubeconfig: None,
        }
    }
}

/// The real operator binary running as a local process against a [`KubeCluster`].
#[derive(Debug)]
pub struct Operator {
    process: ChildProcess,
    metrics_port: u16,
}

impl Operator {
    /// Starts the operator and waits until it serves its health endpoint.
    pub fn start(cluster: &Kubectl, options: &OperatorOptions) -> Result<Self> {
        Self::start_on(cluster, options, free_port()?)
    }

    /// Like [`start`](Self::start), serving its metrics on `metrics_port` (a restarted
    /// operator keeps its scrape target).
    pub fn start_on(
        cluster: &Kubectl,
        options: &OperatorOptions,
        metrics_port: u16,
    ) -> Result<Self> {
        let binary = crate::services::binaries_dir()?.join("logpipeline-operator");
        let mut command = Command::new(binary);
        command
            .env(
                "KUBECONFIG",
                options
                    .kubeconfig
                    .as_deref()
                    .unwrap_or(cluster.kubeconfig()),
            )
            .env("RUST_LOG", "info,logpipeline_operator=debug")
            .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
            .args(["--watch-namespace", &options.namespace])
            .args(["--lease-namespace", &options.namespace])
            .args(["--identity", &options.identity])
            .args([
                "--lease-duration-secs",
                &options.lease_duration_secs.to_string(),
            ])
            .args(["--redis-timeout-ms", "2000"]);
        let log = cluster.dir().join(format!("{}.log", options.identity));
        let mut process = ChildProcess::spawn(&options.identity, command, &log)?;
        wait_while_running(
            &mut process,
            "the operator serves /livez",
            Duration::from_secs(60),
            || Ok(http_get(metrics_port, "/livez").is_ok()),
        )?;
        Ok(Self {
            process,
            metrics_port,
        })
    }

    /// The port of its metrics and probes.
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    /// Its `/metrics` page.
    pub fn metrics(&self) -> Result<String> {
        http_get(self.metrics_port, "/metrics")
    }

    /// The value of one sample on `/metrics`, e.g. `logpipeline_operator_leader` or
    /// `logpipeline_operator_reconciles_total{result="ok"}`; `None` when absent.
    pub fn metric(&self, sample: &str) -> Result<Option<f64>> {
        Ok(self.metrics()?.lines().find_map(|line| {
            let value = line.strip_prefix(sample)?.strip_prefix(' ')?;
            value.trim().parse().ok()
        }))
    }

    /// Fails if it has exited, quoting its log.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.process.ensure_running()
    }

    /// The end of its log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        self.process.log_tail(lines)
    }

    /// Stops it with SIGTERM (graceful: it releases the Lease) and returns its exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.process
            .stop_with(Signal::SIGTERM, Duration::from_secs(30))
    }
}

/// A plain HTTP/1.1 GET on 127.0.0.1; fails unless the answer is 200.
pub fn http_get(port: u16, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP answer")?;
    ensure!(
        head.starts_with("HTTP/1.1 200"),
        "GET {path}: {}",
        head.lines().next().unwrap_or("")
    );
    Ok(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_pinned() {
        assert!(
            pinned_version("KUBERNETES_VERSION")
                .unwrap()
                .starts_with("v1.34.")
        );
        assert!(pinned_version("HELM_VERSION").unwrap().starts_with("v3."));
        assert!(
            tools_dir()
                .unwrap()
                .starts_with(std::env::var("HOME").unwrap())
        );
    }
}

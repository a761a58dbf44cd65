//! A real Kubernetes control plane for tests: etcd and kube-apiserver on free ports in a
//! temporary directory, a kubeconfig for `kubectl`, `helm` and the operator, and the
//! operator itself as a local process.
//!
//! The binaries come from `e2e/k8s/build-tools.sh` (built from the Go module proxy and
//! cached outside the repository). No kubelet, scheduler or controller-manager runs:
//! pods never start, Deployments get no status unless a test writes it, and nothing
//! garbage-collects owned objects.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::Signal;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tempfile::TempDir;

use crate::process::{ChildProcess, free_port, scratch_dir, wait_until};

/// The pinned tool versions, shared with `build-tools.sh`.
const VERSIONS: &str = include_str!("../k8s/versions.env");
/// The bearer token of the test's cluster-admin user.
const ADMIN_TOKEN: &str = "logpipeline-e2e-admin-token";

/// Paths of the control-plane tools.
#[derive(Debug, Clone)]
pub struct Tools {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub helm: PathBuf,
}

fn version(name: &str) -> Result<&'static str> {
    VERSIONS
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix('='))
        .map(str::trim)
        .with_context(|| format!("{name} is missing from e2e/k8s/versions.env"))
}

/// Where `build-tools.sh` puts the binaries: `$LOGPIPELINE_TOOLS_DIR`, or a versioned
/// directory under `~/.cache/logpipeline/tools`.
pub fn tools_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("LOGPIPELINE_TOOLS_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home)
        .join(".cache/logpipeline/tools")
        .join(format!(
            "kubernetes-{}-etcd-{}-helm-{}-r{}",
            version("KUBERNETES_VERSION")?,
            version("ETCD_VERSION")?,
            version("HELM_VERSION")?,
            version("TOOLS_REVISION")?
        )))
}

/// The tools, or an error that says how to build them.
pub fn tools() -> Result<Tools> {
    let dir = tools_dir()?;
    let tools = Tools {
        etcd: dir.join("etcd"),
        kube_apiserver: dir.join("kube-apiserver"),
        helm: dir.join("helm"),
    };
    for tool in [&tools.etcd, &tools.kube_apiserver, &tools.helm] {
        ensure!(
            tool.is_file(),
            "{} is missing: build the control-plane tools with e2e/k8s/build-tools.sh (Go from the module proxy, about 20 minutes cold; .ci/run does it)",
            tool.display()
        );
    }
    Ok(tools)
}

/// The repository root (the workspace this crate belongs to).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A running etcd and kube-apiserver, stopped when dropped.
#[derive(Debug)]
pub struct KubeCluster {
    // Declared first so they are dropped (killed) before the directory goes.
    apiserver: ChildProcess,
    etcd: ChildProcess,
    tools: Tools,
    kubeconfig: PathBuf,
    server: String,
    dir: TempDir,
}

impl KubeCluster {
    /// Starts a control plane and waits until the API server is ready.
    pub fn start() -> Result<Self> {
        let tools = tools()?;
        let dir = scratch_dir("logpipeline-kube-")?;
        let pki = Pki::write(dir.path())?;

        let etcd_port = free_port()?;
        let peer_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Command::new(&tools.etcd);
        etcd.args(["--name", "e2e", "--data-dir"])
            .arg(dir.path().join("etcd"))
            .args([
                "--listen-client-urls",
                &etcd_url,
                "--advertise-client-urls",
                &etcd_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("e2e={peer_url}")])
            .args(["--unsafe-no-fsync", "--log-level", "warn"]);
        let mut etcd = ChildProcess::spawn("etcd", etcd, &dir.path().join("etcd.log"))?;
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
            .arg(&pki.server_cert)
            .arg("--tls-private-key-file")
            .arg(&pki.server_key)
            .arg("--client-ca-file")
            .arg(&pki.ca_cert)
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
            kubeconfig_yaml(&server, &pki.ca_cert, ADMIN_TOKEN),
        )?;
        let mut cluster = Self {
            apiserver,
            etcd,
            tools,
            kubeconfig,
            server,
            dir,
        };
        cluster.wait_ready()?;
        Ok(cluster)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let mut last = String::new();
        self.etcd.ensure_running()?;
        let (kubeconfig, apiserver) = (self.kubeconfig.clone(), &mut self.apiserver);
        let kubectl = |args: &[&str]| {
            let mut command = Command::new("kubectl");
            command.arg("--kubeconfig").arg(&kubeconfig).args(args);
            run(command, None)
        };
        let waited = wait_while_running(
            apiserver,
            "kube-apiserver is ready",
            Duration::from_secs(120),
            || {
                let output = kubectl(&["get", "--raw", "/readyz"])?;
                last = String::from_utf8_lossy(&output.stderr).into_owned();
                if !output.status.success() {
                    return Ok(false);
                }
                // The bootstrap controller creates the `default` namespace shortly after.
                Ok(kubectl(&["get", "namespace", "default"])?.status.success())
            },
        );
        waited.with_context(|| {
            format!(
                "kube-apiserver did not become ready; kubectl said: {last}\nkube-apiserver log:\n{}",
                self.apiserver.log_tail(30)
            )
        })
    }

    /// The kubeconfig of a cluster-admin user.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A kubeconfig that authenticates as ServiceAccount `namespace/name`, with a token
    /// from the TokenRequest API: a client with exactly the RBAC that account has.
    pub fn service_account_kubeconfig(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let token = self.kubectl(&["create", "token", name, "-n", namespace, "--duration=1h"])?;
        let path = self
            .dir
            .path()
            .join(format!("kubeconfig-{namespace}-{name}"));
        let ca = self.dir.path().join("pki/ca.crt");
        std::fs::write(&path, kubeconfig_yaml(&self.server, &ca, token.trim()))?;
        Ok(path)
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The temporary directory of this cluster (logs, certificates, kubeconfig).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The tool binaries it runs.
    pub fn tools(&self) -> &Tools {
        &self.tools
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
        let mut command = Command::new(&self.tools.helm);
        command
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            // Keep helm's cache, config and data inside the cluster's directory.
            .env("HELM_CACHE_HOME", self.dir.path().join("helm/cache"))
            .env("HELM_CONFIG_HOME", self.dir.path().join("helm/config"))
            .env("HELM_DATA_HOME", self.dir.path().join("helm/data"));
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

/// Like [`wait_until`], but fails at once, quoting its log, when `process` exits.
fn wait_while_running(
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

fn kubeconfig_yaml(server: &str, ca_cert: &Path, token: &str) -> String {
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

/// The certificates and keys of a test control plane.
struct Pki {
    ca_cert: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    service_account_key: PathBuf,
    service_account_public_key: PathBuf,
    tokens: PathBuf,
}

impl Pki {
    fn write(dir: &Path) -> Result<Self> {
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "logpipeline-e2e-ca");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

        let mut server_params = CertificateParams::new(vec![
            "127.0.0.1".to_owned(),
            "localhost".to_owned(),
            "kubernetes.default.svc".to_owned(),
        ])?;
        server_params
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        let server_key = KeyPair::generate()?;
        let server_cert = server_params.signed_by(&server_key, &ca)?;
        let service_account_key = KeyPair::generate()?;

        let paths = Self {
            ca_cert: pki.join("ca.crt"),
            server_cert: pki.join("apiserver.crt"),
            server_key: pki.join("apiserver.key"),
            service_account_key: pki.join("service-account.key"),
            service_account_public_key: pki.join("service-account.pub"),
            tokens: pki.join("tokens.csv"),
        };
        std::fs::write(&paths.ca_cert, ca.pem())?;
        std::fs::write(&paths.server_cert, server_cert.pem())?;
        std::fs::write(&paths.server_key, server_key.serialize_pem())?;
        std::fs::write(
            &paths.service_account_key,
            service_account_key.serialize_pem(),
        )?;
        std::fs::write(
            &paths.service_account_public_key,
            service_account_key.public_key_pem(),
        )?;
        std::fs::write(
            &paths.tokens,
            format!("{ADMIN_TOKEN},admin,admin-uid,\"system:masters\"\n"),
        )?;
        Ok(paths)
    }
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
    pub fn start(cluster: &KubeCluster, options: &OperatorOptions) -> Result<Self> {
        let binary = crate::services::binaries_dir()?.join("logpipeline-operator");
        let metrics_port = free_port()?;
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
        assert!(version("KUBERNETES_VERSION").unwrap().starts_with("v1.34."));
        assert!(version("HELM_VERSION").unwrap().starts_with("v3."));
        assert!(tools_dir().is_ok());
    }
}

//! A real one-node Kubernetes cluster on this machine: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, a kubelet with Debian's containerd and runc,
//! kube-proxy, CoreDNS, metrics-server and Traefik, every one a real process or pod.
//!
//! The node lives in network and mount namespaces of its own (see [`namespaces`]) and a
//! cgroup subtree of its own (see [`cgroups`]); its files are in one temporary
//! directory. Tearing it down kills every process in its cgroups, removes the namespaces
//! (with them the iptables chains, the bridge and every mount inside) and the
//! directory, and touches nothing else. A node whose owner died without tearing it down
//! is torn down by the next one that starts.
//!
//! [`Node`] runs a cluster; the `logpipeline cluster` command runs one for a person, and
//! [`NodeCluster`] runs that command for a test, so a test process that dies, however it
//! dies, still has its cluster torn down.

pub mod addons;
pub mod cgroups;
pub mod containerd;
pub mod images;
pub mod namespaces;

use std::net::Ipv4Addr;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use tempfile::TempDir;

use crate::kube::pki::{Pki, TokenUser};
use crate::kube::{
    Kubectl, Tools, etcd_command, kubeconfig_yaml, tools, wait_for_apiserver, wait_while_running,
};
use crate::process::{ChildProcess, find_on_path, owner_is_alive, scratch_dir, wait_until};
use cgroups::CgroupTree;
use containerd::Containerd;
use images::ImageBuilder;
use namespaces::Namespaces;

/// The prefix of every node's directory in the temporary directory.
const DIR_PREFIX: &str = "logpipeline-node-";
/// The file in a node's directory that says what to tear down.
const RECORD_FILE: &str = "node.json";
/// The range of the cluster's Services, and the API server's and DNS's addresses in it.
const SERVICE_CIDR: &str = "10.96.0.0/16";
const KUBERNETES_SERVICE_IP: &str = "10.96.0.1";
const DNS_SERVICE_IP: &str = "10.96.0.10";
/// The node port of the ingress controller's HTTP and HTTPS entry points.
pub const INGRESS_HTTP_PORT: u16 = 30080;
pub const INGRESS_HTTPS_PORT: u16 = 30443;

/// What a node is made of, written before any of it exists so that a teardown (by its
/// owner or by a later node) can find it all.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodeRecord {
    namespaces: Namespaces,
    cgroup: String,
}

/// What a running cluster offers its users; `logpipeline cluster` writes it as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The cluster's directory (logs of every component under `logs/`).
    pub dir: PathBuf,
    /// A cluster-admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// `https://<node ip>:6443`.
    pub server: String,
    /// The CA of the API server's certificate.
    pub ca_cert: PathBuf,
    /// The helm binary matching the cluster.
    pub helm: PathBuf,
    /// The node's name.
    pub node_name: String,
    /// The node's address, where NodePorts (the ingress controller's among them) answer.
    pub node_ip: Ipv4Addr,
    /// This machine's address as the node's pods see it.
    pub host_ip: Ipv4Addr,
    /// The images the node has, as pods name them.
    pub images: Vec<String>,
    /// What holds the node on this machine: its network namespace, the veth end on
    /// this machine, and its cgroup (below each hierarchy's root).
    pub netns: String,
    pub host_veth: String,
    pub cgroup: String,
}

/// What introduces the lines to run next in `logpipeline cluster`'s output, each of
/// them indented by two spaces, up to a blank line.
pub const NEXT_STEPS: &str = "In another shell:";

/// How to start a [`Node`].
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Build LogPipeline's images (`deploy/build.sh`) and load them.
    pub product_images: bool,
    /// The directory holding the binaries for LogPipeline's images; a release build
    /// when `None`.
    pub binaries: Option<PathBuf>,
}

/// A running one-node cluster. Dropping it tears it down.
#[derive(Debug)]
pub struct Node {
    /// The cluster's processes, in start order.
    processes: Vec<ChildProcess>,
    record: NodeRecord,
    cgroups: CgroupTree,
    info: NodeInfo,
    kubectl: Kubectl,
    dir: Option<TempDir>,
}

impl Deref for Node {
    type Target = Kubectl;

    fn deref(&self) -> &Kubectl {
        &self.kubectl
    }
}

/// Prints a step of a start, with the time since it began.
fn step(started: Instant, what: &str) {
    eprintln!("[{:>6.1}s] {what}", started.elapsed().as_secs_f64());
}

impl Node {
    /// Builds the images, starts every component and waits until the node is Ready and
    /// its add-ons serve. Prints each step.
    pub fn start(options: &NodeOptions) -> Result<Self> {
        let started = Instant::now();
        check_prerequisites()?;
        sweep_orphans();
        let tools = tools()?;
        let dir = scratch_dir(DIR_PREFIX)?;
        let id = node_id(dir.path())?;
        let record = NodeRecord {
            namespaces: Namespaces::plan(&id, dir.path())?,
            cgroup: format!("logpipeline-{id}"),
        };
        std::fs::write(
            dir.path().join(RECORD_FILE),
            serde_json::to_string_pretty(&record)?,
        )?;
        let cgroups = CgroupTree::new(&record.cgroup)?;
        let (node_ip, host_ip) = (record.namespaces.node_ip, record.namespaces.host_ip);
        let node_name = format!("logpipeline-{id}");
        let server = format!("https://{node_ip}:6443");
        let pki_dir = dir.path().join("pki");
        let ca_cert = pki_dir.join("ca.crt");
        let kubeconfig = dir.path().join("kubeconfig");
        let kubectl = Kubectl::new(&kubeconfig, &server, &ca_cert, &tools.helm, dir.path());
        let mut node = Self {
            processes: Vec::new(),
            info: NodeInfo {
                dir: dir.path().to_owned(),
                kubeconfig,
                server,
                ca_cert,
                helm: tools.helm.clone(),
                node_name,
                node_ip,
                host_ip,
                images: Vec::new(),
                netns: record.namespaces.netns.clone(),
                host_veth: record.namespaces.host_veth.clone(),
                cgroup: record.cgroup.clone(),
            },
            record,
            cgroups,
            kubectl,
            dir: Some(dir),
        };
        // From here on, a failure drops `node`, which tears down what exists.
        node.boot(&tools, options, started)?;
        step(started, &format!("node {} is Ready", node.info.node_name));
        Ok(node)
    }

    fn boot(&mut self, tools: &Tools, options: &NodeOptions, started: Instant) -> Result<()> {
        let dir = self.info.dir.clone();
        std::fs::create_dir_all(dir.join("logs"))?;

        step(started, "building images (buildah, no registry)");
        let builder = ImageBuilder::new(&dir.join("images"))?;
        let mut archives = builder.node_images(tools)?;
        archives.push(builder.services()?);
        if options.product_images {
            step(
                started,
                match &options.binaries {
                    Some(_) => "building LogPipeline's images with deploy/build.sh",
                    None => {
                        "building LogPipeline's images with deploy/build.sh (a release build first, minutes when cold)"
                    }
                },
            );
            archives.extend(builder.product(options.binaries.as_deref())?);
        }

        step(
            started,
            &format!(
                "creating the node's namespaces (node {}, this machine {})",
                self.info.node_ip, self.info.host_ip
            ),
        );
        self.record.namespaces.create()?;
        self.cgroups.create("node")?;

        step(started, "starting etcd and kube-apiserver");
        let users = ComponentUsers::new(&self.info.node_name)?;
        let node_ip = self.info.node_ip.to_string();
        let server_names = [
            node_ip.clone(),
            "127.0.0.1".to_owned(),
            KUBERNETES_SERVICE_IP.to_owned(),
            "kubernetes".to_owned(),
            "kubernetes.default".to_owned(),
            "kubernetes.default.svc".to_owned(),
            "kubernetes.default.svc.cluster.local".to_owned(),
            self.info.node_name.clone(),
        ];
        let pki = Pki::write(&dir.join("pki"), &server_names, &users.all())?;
        let kubeconfig = |user: &TokenUser, name: &str| -> Result<PathBuf> {
            let path = dir.join(format!("{name}.kubeconfig"));
            std::fs::write(
                &path,
                kubeconfig_yaml(&self.info.server, &pki.ca.cert, &user.token),
            )?;
            Ok(path)
        };
        let admin = kubeconfig(&users.admin, "admin")?;
        std::fs::copy(&admin, &self.info.kubeconfig)?;
        let controller_manager = kubeconfig(&users.controller_manager, "controller-manager")?;
        let scheduler = kubeconfig(&users.scheduler, "scheduler")?;
        let kubelet = kubeconfig(&users.kubelet, "kubelet")?;
        let proxy = kubeconfig(&users.proxy, "kube-proxy")?;

        let etcd = etcd_command(tools, &dir.join("etcd"), "http://127.0.0.1:2379", 2380);
        self.spawn("etcd", &etcd)?;
        let apiserver = apiserver_args(&pki, &node_ip);
        self.spawn_program("kube-apiserver", &tools.kube_apiserver, &apiserver)?;
        let kubectl = self.kubectl.clone();
        let apiserver = self
            .processes
            .last_mut()
            .context("kube-apiserver is not running")?;
        wait_for_apiserver(apiserver, &kubectl)?;

        step(
            started,
            "starting kube-controller-manager and kube-scheduler",
        );
        let controller_manager_args = [
            kubeconfig_flags(&controller_manager),
            vec![
                format!(
                    "--service-account-private-key-file={}",
                    pki.service_account_key.display()
                ),
                format!("--root-ca-file={}", pki.ca.cert.display()),
                format!("--cluster-signing-cert-file={}", pki.ca.cert.display()),
                format!("--cluster-signing-key-file={}", pki.ca.key.display()),
                "--use-service-account-credentials=true".into(),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                // The autoscaler looks at the metrics every 5 s instead of 15 s.
                "--horizontal-pod-autoscaler-sync-period=5s".into(),
                "--v=1".into(),
            ],
        ]
        .concat();
        self.spawn_program(
            "kube-controller-manager",
            &tools.kube_controller_manager,
            &controller_manager_args,
        )?;
        let scheduler_args = [
            kubeconfig_flags(&scheduler),
            vec![
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                "--v=1".into(),
            ],
        ]
        .concat();
        self.spawn_program("kube-scheduler", &tools.kube_scheduler, &scheduler_args)?;

        step(started, "starting containerd and importing the images");
        let containerd = Containerd::new(&dir.join("containerd"));
        let containerd_args = containerd.configure()?;
        let containerd_binary =
            find_on_path("containerd").context("containerd is not installed")?;
        self.spawn_program("containerd", &containerd_binary, &containerd_args)?;
        let process = self
            .processes
            .last_mut()
            .context("containerd is not running")?;
        wait_while_running(
            process,
            "containerd serves",
            Duration::from_secs(30),
            || Ok(containerd.is_serving()),
        )?;
        for archive in &archives {
            containerd.import(archive)?;
        }
        self.info.images = containerd
            .ctr(&["images", "list", "--quiet"])?
            .lines()
            .filter(|name| !name.starts_with("sha256:"))
            .map(str::to_owned)
            .collect();

        step(started, "starting the kubelet and kube-proxy");
        let kubelet_config = self.write_kubelet_config(&pki, &containerd)?;
        let kubelet_args = vec![
            format!("--config={}", kubelet_config.display()),
            format!("--kubeconfig={}", kubelet.display()),
            format!("--root-dir={}", dir.join("kubelet").display()),
            format!("--hostname-override={}", self.info.node_name),
            format!("--node-ip={node_ip}"),
            "--v=1".into(),
        ];
        self.spawn_program("kubelet", &tools.kubelet, &kubelet_args)?;
        let proxy_config = self.write_proxy_config(&proxy)?;
        self.spawn_program(
            "kube-proxy",
            &tools.kube_proxy,
            &[
                format!("--config={}", proxy_config.display()),
                "--v=1".into(),
            ],
        )?;
        let node = format!("node/{}", self.info.node_name);
        let kubectl = self.kubectl.clone();
        wait_until("the node registers", Duration::from_secs(120), || {
            for process in &mut self.processes {
                process.ensure_running()?;
            }
            Ok(kubectl
                .kubectl_output(&["get", &node], None)?
                .status
                .success())
        })?;
        self.kubectl
            .kubectl(&["wait", "--for=condition=Ready", "--timeout=120s", &node])?;

        step(started, "installing CoreDNS, metrics-server and Traefik");
        addons::install(&self.kubectl, Duration::from_secs(180))?;
        Ok(())
    }

    /// Starts `program` with `args` in the node.
    fn spawn_program(&mut self, name: &str, program: &Path, args: &[String]) -> Result<()> {
        let mut command = Command::new(program);
        command.args(args);
        self.spawn(name, &command)
    }

    /// Starts `command` in the node's namespaces and cgroup, logging to `logs/<name>.log`.
    fn spawn(&mut self, name: &str, command: &Command) -> Result<()> {
        let procs: Vec<String> = self
            .cgroups
            .procs_files("node")
            .iter()
            .map(|file| file.display().to_string())
            .collect();
        // The process joins the node's cgroups before it is anything else, so nothing it
        // ever forks escapes them.
        let mut wrapped = Command::new("sh");
        wrapped
            .arg("-c")
            .arg(r#"for procs in $LOGPIPELINE_CGROUP_PROCS; do echo $$ > "$procs" || exit 1; done; unset LOGPIPELINE_CGROUP_PROCS; exec "$@""#)
            .arg("sh")
            .arg("nsenter")
            .args(self.record.namespaces.nsenter_args())
            .arg(command.get_program())
            .args(command.get_args())
            .env("LOGPIPELINE_CGROUP_PROCS", procs.join(" "));
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(key, value),
                None => wrapped.env_remove(key),
            };
        }
        let log = self.info.dir.join("logs").join(format!("{name}.log"));
        let process = ChildProcess::spawn(name, wrapped, &log)?;
        self.processes.push(process);
        Ok(())
    }

    fn write_kubelet_config(&self, pki: &Pki, containerd: &Containerd) -> Result<PathBuf> {
        let dir = &self.info.dir;
        // No upstream DNS server: nothing outside the cluster is reachable.
        let resolv_conf = dir.join("resolv.conf");
        std::fs::write(&resolv_conf, "")?;
        let config = serde_json::json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroups.path(),
            // This machine has cgroup v1; kubelet 1.35 refuses it unless told otherwise.
            "failCgroupV1": false,
            "failSwapOn": false,
            "containerRuntimeEndpoint": format!("unix://{}", containerd.socket().display()),
            // Images are imported, never pulled: none may be garbage-collected.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
            "authentication": {
                "anonymous": {"enabled": false},
                "webhook": {"enabled": true},
                "x509": {"clientCAFile": pki.ca.cert},
            },
            "authorization": {"mode": "Webhook"},
            "tlsCertFile": pki.kubelet.cert,
            "tlsPrivateKeyFile": pki.kubelet.key,
            "clusterDNS": [DNS_SERVICE_IP],
            "clusterDomain": "cluster.local",
            "resolvConf": resolv_conf,
            "podLogsDir": dir.join("pod-logs"),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "serializeImagePulls": false,
        });
        let path = dir.join("kubelet.json");
        std::fs::write(&path, serde_json::to_string_pretty(&config)?)?;
        Ok(path)
    }

    fn write_proxy_config(&self, kubeconfig: &Path) -> Result<PathBuf> {
        let config = serde_json::json!({
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": kubeconfig},
            "mode": "iptables",
            "clusterCIDR": containerd::POD_CIDR,
            "hostnameOverride": self.info.node_name,
            // The node's netns has its own conntrack table; leave its size alone.
            "conntrack": {"maxPerCore": 0},
            "metricsBindAddress": "127.0.0.1:10249",
            "healthzBindAddress": "127.0.0.1:10256",
        });
        let path = self.info.dir.join("kube-proxy.json");
        std::fs::write(&path, serde_json::to_string_pretty(&config)?)?;
        Ok(path)
    }

    /// What the cluster offers.
    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    /// Tears the cluster down: every process, the namespaces, the cgroups, the directory.
    pub fn stop(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let Some(dir) = self.dir.take() else {
            return Ok(());
        };
        let result = teardown(dir.path(), &self.record);
        // Every process is dead by now; this reaps them.
        for process in &mut self.processes {
            process.kill();
        }
        let removed = dir.close();
        result?;
        removed.context("removing the node's directory")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Err(error) = self.teardown() {
            eprintln!("tearing down the node: {error:#}");
        }
    }
}

/// Kills every process of the node in `dir`, removes its namespaces, its cgroups and
/// any mount left under `dir` (not `dir` itself).
fn teardown(dir: &Path, record: &NodeRecord) -> Result<()> {
    let cgroups = CgroupTree::new(&record.cgroup)?;
    let mut failures = Vec::new();
    if let Err(error) = cgroups.kill_all(Duration::from_secs(30)) {
        failures.push(format!("{error:#}"));
    }
    if let Err(error) = record.namespaces.remove() {
        failures.push(format!("{error:#}"));
    }
    if let Err(error) = cgroups.remove() {
        failures.push(format!("{error:#}"));
    }
    let mut mounts: Vec<PathBuf> = namespaces::mount_points()
        .into_iter()
        .filter(|mount| mount.starts_with(dir))
        .collect();
    mounts.sort();
    for mount in mounts.iter().rev() {
        let unmounted = Command::new("umount").arg("--lazy").arg(mount).status();
        if !unmounted.is_ok_and(|status| status.success()) {
            failures.push(format!("cannot unmount {}", mount.display()));
        }
    }
    if !failures.is_empty() {
        bail!("tearing down {}: {}", dir.display(), failures.join("; "));
    }
    Ok(())
}

/// Tears down every node whose owner process is gone (killed before it could), and
/// removes its directory.
pub fn sweep_orphans() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let ours = dir
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with(DIR_PREFIX));
        if !ours || owner_is_alive(&dir) {
            continue;
        }
        eprintln!("tearing down the orphaned node in {}", dir.display());
        let record = std::fs::read_to_string(dir.join(RECORD_FILE))
            .ok()
            .and_then(|json| serde_json::from_str::<NodeRecord>(&json).ok());
        if let Some(record) = record
            && let Err(error) = teardown(&dir, &record)
        {
            eprintln!("{error:#}");
            continue;
        }
        if let Err(error) = std::fs::remove_dir_all(&dir) {
            eprintln!("removing {}: {error}", dir.display());
        }
    }
}

/// Six lowercase letters and digits from the node directory's random suffix.
fn node_id(dir: &Path) -> Result<String> {
    let name = dir
        .file_name()
        .and_then(|name| name.to_str())
        .context("no directory name")?;
    let id: String = name
        .trim_start_matches(DIR_PREFIX)
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .take(6)
        .collect();
    ensure!(id.len() == 6, "cannot derive a node id from {name}");
    Ok(id)
}

/// The identities of the cluster's components, each with its own token.
struct ComponentUsers {
    admin: TokenUser,
    controller_manager: TokenUser,
    scheduler: TokenUser,
    kubelet: TokenUser,
    proxy: TokenUser,
}

impl ComponentUsers {
    fn new(node_name: &str) -> Result<Self> {
        Ok(Self {
            admin: TokenUser::new("admin", &["system:masters"])?,
            controller_manager: TokenUser::new("system:kube-controller-manager", &[])?,
            scheduler: TokenUser::new("system:kube-scheduler", &[])?,
            // The Node authorizer lets a kubelet touch only its own node and pods.
            kubelet: TokenUser::new(&format!("system:node:{node_name}"), &["system:nodes"])?,
            proxy: TokenUser::new("system:kube-proxy", &[])?,
        })
    }

    fn all(&self) -> Vec<TokenUser> {
        [
            &self.admin,
            &self.controller_manager,
            &self.scheduler,
            &self.kubelet,
            &self.proxy,
        ]
        .into_iter()
        .cloned()
        .collect()
    }
}

/// `--kubeconfig` and the kubeconfigs a component authenticates and authorizes its own
/// callers with.
fn kubeconfig_flags(kubeconfig: &Path) -> Vec<String> {
    [
        "kubeconfig",
        "authentication-kubeconfig",
        "authorization-kubeconfig",
    ]
    .iter()
    .map(|flag| format!("--{flag}={}", kubeconfig.display()))
    .collect()
}

fn apiserver_args(pki: &Pki, node_ip: &str) -> Vec<String> {
    let file = |flag: &str, path: &Path| format!("--{flag}={}", path.display());
    vec![
        "--etcd-servers=http://127.0.0.1:2379".into(),
        "--bind-address=0.0.0.0".into(),
        "--secure-port=6443".into(),
        // Pods reach the API server through the `kubernetes` Service, whose endpoint is
        // this address.
        format!("--advertise-address={node_ip}"),
        file("tls-cert-file", &pki.apiserver.cert),
        file("tls-private-key-file", &pki.apiserver.key),
        file("client-ca-file", &pki.ca.cert),
        file("token-auth-file", &pki.tokens),
        "--authorization-mode=Node,RBAC".into(),
        "--enable-admission-plugins=NodeRestriction".into(),
        file("service-account-key-file", &pki.service_account_public_key),
        file("service-account-signing-key-file", &pki.service_account_key),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        file(
            "kubelet-client-certificate",
            &pki.apiserver_kubelet_client.cert,
        ),
        file("kubelet-client-key", &pki.apiserver_kubelet_client.key),
        // `kubectl logs` and `exec`: the node's name does not resolve, its address does.
        "--kubelet-preferred-address-types=InternalIP".into(),
        // The aggregation layer, for metrics-server's API.
        file("requestheader-client-ca-file", &pki.front_proxy_ca.cert),
        file("proxy-client-cert-file", &pki.front_proxy_client.cert),
        file("proxy-client-key-file", &pki.front_proxy_client.key),
        "--requestheader-allowed-names=front-proxy-client".into(),
        "--requestheader-username-headers=X-Remote-User".into(),
        "--requestheader-group-headers=X-Remote-Group".into(),
        "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
        "--enable-aggregator-routing=true".into(),
        "--profiling=false".into(),
        "--v=1".into(),
    ]
}

/// Fails with what is missing unless this machine can run a node.
fn check_prerequisites() -> Result<()> {
    ensure!(
        nix::unistd::Uid::effective().is_root(),
        "a node cluster needs root (namespaces, cgroups, mounts)"
    );
    let missing: Vec<&str> = [
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("runc", "runc"),
        ("buildah", "buildah"),
        ("debootstrap", "debootstrap"),
        ("iptables", "iptables"),
        ("conntrack", "conntrack"),
        ("nsenter", "util-linux"),
        ("ip", "iproute2"),
        ("strip", "binutils"),
    ]
    .into_iter()
    .filter(|(program, _)| find_on_path(program).is_none())
    .map(|(_, package)| package)
    .collect();
    ensure!(
        missing.is_empty() && Path::new("/usr/lib/cni/bridge").exists(),
        "a node cluster needs Debian packages that are missing: {} (e2e/test.sh installs them)",
        [missing, vec!["containernetworking-plugins"]]
            .concat()
            .join(" ")
    );
    Ok(())
}

/// A running `logpipeline cluster` for tests: it owns the cluster and tears it down
/// when this handle is dropped or the test process dies, however it dies.
#[derive(Debug)]
pub struct NodeCluster {
    process: ChildProcess,
    log: PathBuf,
    info: NodeInfo,
    kubectl: Kubectl,
    _handle_dir: TempDir,
}

impl Deref for NodeCluster {
    type Target = Kubectl;

    fn deref(&self) -> &Kubectl {
        &self.kubectl
    }
}

impl NodeCluster {
    /// Starts a cluster and waits until it is ready. LogPipeline's images hold the
    /// binaries of `options.binaries`, or else those of this run's [`binaries_dir`]:
    /// a test's cluster makes no build of its own.
    ///
    /// [`binaries_dir`]: crate::services::binaries_dir
    pub fn start(options: &NodeOptions) -> Result<Self> {
        let binaries = crate::services::binaries_dir()?;
        let handle_dir = scratch_dir("logpipeline-cluster-")?;
        let ready = handle_dir.path().join("ready.json");
        let mut command = Command::new(binaries.join("logpipeline"));
        command.arg("cluster").arg("--ready-file").arg(&ready);
        if options.product_images {
            command
                .arg("--binaries")
                .arg(options.binaries.as_deref().unwrap_or(binaries));
        } else {
            command.arg("--without-logpipeline-images");
        }
        let log = handle_dir.path().join("cluster.log");
        let mut process = ChildProcess::spawn_with_death_signal(
            "logpipeline cluster",
            command,
            &log,
            Signal::SIGTERM,
        )?;
        wait_while_running(
            &mut process,
            "the node cluster is ready",
            Duration::from_secs(45 * 60),
            || Ok(ready.exists()),
        )
        .with_context(|| format!("starting the node cluster; its log is {}", log.display()))?;
        let info: NodeInfo = serde_json::from_str(&std::fs::read_to_string(&ready)?)?;
        let kubectl = Kubectl::new(
            &info.kubeconfig,
            &info.server,
            &info.ca_cert,
            &info.helm,
            &info.dir,
        );
        Ok(Self {
            process,
            log,
            info,
            kubectl,
            _handle_dir: handle_dir,
        })
    }

    /// What the cluster offers.
    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    /// The lines `logpipeline cluster` printed for a user to run next, as printed.
    pub fn next_steps(&self) -> Result<Vec<String>> {
        let output = std::fs::read_to_string(&self.log)?;
        let (_, after) = output
            .split_once(NEXT_STEPS)
            .with_context(|| format!("no {NEXT_STEPS:?} in {}", self.log.display()))?;
        Ok(after
            .lines()
            .skip_while(|line| line.trim().is_empty())
            .take_while(|line| !line.trim().is_empty())
            .map(|line| line.trim().to_owned())
            .collect())
    }

    /// The `logpipeline cluster` process that owns the cluster.
    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }
}

impl Drop for NodeCluster {
    fn drop(&mut self) {
        if let Err(error) = self
            .process
            .stop_with(Signal::SIGTERM, Duration::from_secs(120))
        {
            eprintln!("stopping the node cluster: {error:#}");
        }
    }
}

/// One node cluster per test process, started on first use. It is never dropped: when
/// the test process exits, `logpipeline cluster` gets SIGTERM and tears it down.
pub fn shared() -> Result<&'static NodeCluster> {
    static SHARED: OnceLock<std::result::Result<NodeCluster, String>> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            NodeCluster::start(&NodeOptions {
                product_images: true,
                binaries: None,
            })
            .map_err(|error| format!("{error:#}"))
        })
        .as_ref()
        .map_err(|error| anyhow::anyhow!("the node cluster failed to start: {error}"))
}

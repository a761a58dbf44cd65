//! The node's container runtime: Debian's containerd with runc and the CNI plugins, its
//! state in the node's directory, and the images the node runs imported from archives
//! (no registry is reachable).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::process::find_on_path;

/// Where the pods get their addresses (inside the node's network namespace only).
pub const POD_CIDR: &str = "10.244.0.0/16";
/// The pod sandbox image, built from the `pause` tool.
pub const PAUSE_IMAGE: &str = "localhost/logpipeline-e2e/pause:3.10";

/// The files of the node's containerd.
#[derive(Debug, Clone)]
pub struct Containerd {
    dir: PathBuf,
}

impl Containerd {
    /// containerd with its state under `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    /// Its socket, which the kubelet and `ctr` use.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// Writes its configuration and the CNI network; returns the command's arguments.
    pub fn configure(&self) -> Result<Vec<String>> {
        let runc = find_on_path("runc").context("runc is not installed")?;
        let cni_conf = self.dir.join("cni/net.d");
        std::fs::create_dir_all(&cni_conf)?;
        let dir = self.dir.display();
        let config = format!(
            r#"version = 2
root = "{dir}/root"
state = "{dir}/state"
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing",
]

[grpc]
  address = "{dir}/containerd.sock"
[ttrpc]
  address = "{dir}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  # This machine cannot lower oom_score_adj; without this every sandbox fails to start.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  # As containerd 2 does by default: pods may bind low ports without a capability.
  enable_unprivileged_ports = true
  enable_unprivileged_icmp = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        Root = "{dir}/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf}"
"#,
            runc = runc.display(),
            cni_conf = cni_conf.display(),
        );
        let config_path = self.dir.join("config.toml");
        std::fs::write(&config_path, config)?;

        let network = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "logpipeline",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": true,
                    "ipMasq": true,
                    "hairpinMode": true,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": "10.244.0.0/24"}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": self.dir.join("cni/ipam"),
                    },
                },
                {"type": "portmap", "capabilities": {"portMappings": true}},
            ],
        });
        std::fs::write(
            cni_conf.join("10-logpipeline.conflist"),
            serde_json::to_string_pretty(&network)?,
        )?;
        Ok(vec!["--config".into(), config_path.display().to_string()])
    }

    /// Whether it answers.
    pub fn is_serving(&self) -> bool {
        self.ctr(&["version"]).is_ok()
    }

    /// Imports the OCI archive `archive` into the namespace the kubelet uses.
    pub fn import(&self, archive: &Path) -> Result<()> {
        self.ctr(&["images", "import", &archive.to_string_lossy()])
            .map(drop)
            .with_context(|| format!("importing {}", archive.display()))
    }

    /// Runs `ctr` against it in the `k8s.io` namespace.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let output = Command::new("ctr")
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", "k8s.io"])
            .args(args)
            .output()
            .context("running ctr (from Debian's containerd package)")?;
        if !output.status.success() {
            bail!(
                "ctr {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }
}

//! The node's own network and mount namespaces.
//!
//! The node is a network namespace joined to this machine by a veth pair on a /30 of its
//! own: kube-proxy's iptables chains, the CNI bridge, the pods' interfaces and every port
//! the node's processes listen on live in it and vanish with it. Its mount namespace has
//! fresh `/run`, `/var/lib` and `/var/log`, so what containerd, the CNI plugins and the
//! kubelet write or mount there (network namespace files, IPAM state, log links) never
//! reaches this machine's, and every mount made inside goes when the namespace does.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::process::output_of;

/// The node's namespaces and its addresses.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Namespaces {
    /// Name of the network namespace (`ip netns`).
    pub netns: String,
    /// The veth end on this machine.
    pub host_veth: String,
    /// This machine's address on the link.
    pub host_ip: Ipv4Addr,
    /// The node's address, on its `eth0`.
    pub node_ip: Ipv4Addr,
    /// Where the mount namespace is kept open (a bind mount of its nsfs file).
    pub mount_ns: PathBuf,
}

/// Directories the node gets empty, its own, instead of this machine's.
const PRIVATE_DIRS: [&str; 3] = ["/run", "/var/lib", "/var/log"];

impl Namespaces {
    /// Names for the node `id`, with state kept in `dir`; nothing is created yet.
    pub fn plan(id: &str, dir: &Path) -> Result<Self> {
        let (host_ip, node_ip) = free_link_addresses()?;
        Ok(Self {
            netns: format!("logpipeline-{id}"),
            host_veth: format!("lpn-{id}"),
            host_ip,
            node_ip,
            mount_ns: dir.join("ns/mnt"),
        })
    }

    /// Creates both namespaces and the link between them.
    pub fn create(&self) -> Result<()> {
        let ns_dir = self.mount_ns.parent().context("no namespace directory")?;
        std::fs::create_dir_all(ns_dir)?;
        // The nsfs bind mount must sit on a mount that does not propagate.
        run("mount", &["--bind", &path(ns_dir), &path(ns_dir)])?;
        run("mount", &["--make-private", &path(ns_dir)])?;
        std::fs::write(&self.mount_ns, "")?;
        run(
            "unshare",
            &[
                &format!("--mount={}", path(&self.mount_ns)),
                "--propagation",
                "private",
                "true",
            ],
        )?;

        let (host, node) = (self.host_ip.to_string(), self.node_ip.to_string());
        run("ip", &["netns", "add", &self.netns])?;
        run(
            "ip",
            &[
                "link",
                "add",
                &self.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &self.netns,
            ],
        )?;
        run(
            "ip",
            &["addr", "add", &format!("{host}/30"), "dev", &self.host_veth],
        )?;
        run("ip", &["link", "set", &self.host_veth, "up"])?;
        let ns = ["-n", self.netns.as_str()];
        run_in(
            "ip",
            &ns,
            &["addr", "add", &format!("{node}/30"), "dev", "eth0"],
        )?;
        run_in("ip", &ns, &["link", "set", "eth0", "up"])?;
        run_in("ip", &ns, &["link", "set", "lo", "up"])?;
        run_in("ip", &ns, &["route", "add", "default", "via", &host])?;

        for dir in PRIVATE_DIRS {
            self.run(&["mount", "-t", "tmpfs", "-o", "mode=755", "tmpfs", dir])?;
        }
        // Pods' traffic is routed and bridged through the node's iptables.
        self.run(&[
            "sysctl",
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
            "net.bridge.bridge-nf-call-iptables=1",
            "net.ipv4.conf.all.route_localnet=1",
        ])?;
        Ok(())
    }

    /// The arguments of `nsenter` that enter the node's namespaces, up to the program.
    /// `nsenter` enters them and then executes the program itself, so the process is the
    /// program's.
    pub fn nsenter_args(&self) -> [String; 3] {
        [
            format!("--mount={}", path(&self.mount_ns)),
            format!("--net=/run/netns/{}", self.netns),
            "--".to_owned(),
        ]
    }

    /// Runs `args` inside the namespaces to completion.
    pub fn run(&self, args: &[&str]) -> Result<()> {
        let mut command = Command::new("nsenter");
        command.args(self.nsenter_args()).args(args);
        output_of(command).map(drop)
    }

    /// Removes both namespaces (and so the veth pair). The node's processes must be gone
    /// first; then the mount namespace's mounts go with it. Missing parts are skipped.
    pub fn remove(&self) -> Result<()> {
        let mut failures = Vec::new();
        if let Some(ns_dir) = self.mount_ns.parent() {
            for mount_point in [&self.mount_ns, &ns_dir.to_path_buf()] {
                if is_mount_point(mount_point)
                    && let Err(error) = run("umount", &[&path(mount_point)])
                {
                    failures.push(error.to_string());
                }
            }
        }
        if Path::new("/run/netns").join(&self.netns).exists()
            && let Err(error) = run("ip", &["netns", "delete", &self.netns])
        {
            failures.push(error.to_string());
        }
        if !failures.is_empty() {
            bail!("removing the node's namespaces: {}", failures.join("; "));
        }
        Ok(())
    }
}

/// A /30 in 10.250.0.0/16 that no interface of this machine uses: (host, node).
fn free_link_addresses() -> Result<(Ipv4Addr, Ipv4Addr)> {
    let output = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()?;
    let used = String::from_utf8_lossy(&output.stdout).into_owned();
    let mut seed = [0u8; 2];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut seed)?;
    let start = u16::from_le_bytes(seed) / 4;
    for offset in 0..16384u16 {
        let block = (start.wrapping_add(offset) % 16384) * 4;
        let [high, low] = block.to_be_bytes();
        let host = Ipv4Addr::new(10, 250, high, low + 1);
        let node = Ipv4Addr::new(10, 250, high, low + 2);
        let prefix = format!("10.250.{high}.");
        let taken = used.lines().any(|line| {
            line.split_whitespace()
                .skip_while(|word| *word != "inet")
                .nth(1)
                .and_then(|address| address.split('/').next())
                .and_then(|address| address.strip_prefix(&prefix))
                .and_then(|last| last.parse::<u8>().ok())
                .is_some_and(|last| last / 4 == low / 4)
        });
        if !taken {
            return Ok((host, node));
        }
    }
    bail!("no free /30 left in 10.250.0.0/16")
}

/// Whether `dir` is a mount point in this process's mount namespace.
pub fn is_mount_point(dir: &Path) -> bool {
    mount_points().iter().any(|mount| mount == dir)
}

/// The mount points of this process's mount namespace.
pub fn mount_points() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split_whitespace().nth(4))
        .map(|point| PathBuf::from(point.replace("\\040", " ")))
        .collect()
}

fn path(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    let mut command = Command::new(program);
    command.args(args);
    output_of(command).map(drop)
}

fn run_in(program: &str, prefix: &[&str], args: &[&str]) -> Result<()> {
    let mut all = prefix.to_vec();
    all.extend_from_slice(args);
    run(program, &all)
}

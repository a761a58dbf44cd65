//! A node cluster leaves nothing behind on this machine, stopped or killed.

use std::process::Command;
use std::time::Duration;

use logpipeline_local::node::{self, NodeCluster, NodeInfo, NodeOptions};
use logpipeline_local::process::output_of;
use nix::sys::signal::Signal;

use crate::support;

/// What of the node `info` describes is still on this machine.
fn leftovers(info: &NodeInfo) -> Vec<String> {
    let mut found = Vec::new();
    if info.dir.exists() {
        found.push(format!("directory {}", info.dir.display()));
    }
    if std::path::Path::new("/run/netns")
        .join(&info.netns)
        .exists()
    {
        found.push(format!("network namespace {}", info.netns));
    }
    if std::path::Path::new("/sys/class/net")
        .join(&info.host_veth)
        .exists()
    {
        found.push(format!("interface {}", info.host_veth));
    }
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let cgroup = hierarchy.path().join(&info.cgroup);
        if cgroup.exists() {
            found.push(format!("cgroup {}", cgroup.display()));
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let dir = info.dir.to_string_lossy();
    found.extend(
        mountinfo
            .lines()
            .filter(|line| line.contains(dir.as_ref()))
            .map(|line| format!("mount {line}")),
    );
    found
}

/// Lines of this machine's own iptables rules that name Kubernetes chains.
fn host_kube_rules() -> usize {
    output_of(Command::new("iptables-save"))
        .unwrap()
        .lines()
        .filter(|line| line.contains("KUBE-"))
        .count()
}

#[test]
fn a_node_leaves_nothing_behind_when_stopped_or_killed() {
    let _turn = support::turn();
    let options = NodeOptions {
        product_images: false,
        binaries: None,
    };
    let rules_before = host_kube_rules();

    // Stopped: SIGTERM, as Ctrl-C, or the death of the test process that started it.
    let mut stopped = NodeCluster::start(&options).unwrap();
    let info = stopped.info().clone();
    let running = leftovers(&info);
    for part in [
        "directory",
        "network namespace",
        "interface",
        "cgroup",
        "mount",
    ] {
        assert!(
            running.iter().any(|what| what.starts_with(part)),
            "no {part} while running: {running:?}"
        );
    }
    let pods = stopped.get_json(&["pods", "-A"]).unwrap();
    assert_eq!(
        pods["items"].as_array().unwrap().len(),
        3,
        "the add-ons run"
    );
    let status = stopped
        .process()
        .stop_with(Signal::SIGTERM, Duration::from_secs(120))
        .unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(leftovers(&info), Vec::<String>::new());
    assert_eq!(host_kube_rules(), rules_before);

    // Killed: with SIGKILL nothing could clean up, and the pods outlive their owner,
    // until the next node starts (here: its sweep alone).
    let mut killed = NodeCluster::start(&options).unwrap();
    let info = killed.info().clone();
    killed.process().kill();
    let left = leftovers(&info);
    assert!(
        left.iter()
            .any(|what| what.starts_with("network namespace")),
        "{left:?}"
    );
    node::sweep_orphans();
    assert_eq!(leftovers(&info), Vec::<String>::new());
    assert_eq!(host_kube_rules(), rules_before);
    println!("a stopped node and a killed one (swept) left nothing: {left:?} went");
}

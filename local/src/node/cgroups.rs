//! The node's cgroup subtree: every process of the node (its daemons, the container
//! shims, the containers) lives under one cgroup of its own in every hierarchy, so
//! tearing it down finds them all by PID, whoever their parent is.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// One cgroup, `/<name>`, in every mounted cgroup hierarchy.
#[derive(Debug, Clone)]
pub struct CgroupTree {
    name: String,
    hierarchies: Vec<PathBuf>,
}

impl CgroupTree {
    /// The tree named `name` (it may not exist yet).
    pub fn new(name: &str) -> Result<Self> {
        Ok(Self {
            name: name.to_owned(),
            hierarchies: hierarchies()?,
        })
    }

    /// Its path below each hierarchy's root, e.g. `/logpipeline-ab12cd`.
    pub fn path(&self) -> String {
        format!("/{}", self.name)
    }

    /// Creates `/<name>/<child>` (and `/<name>`) in every hierarchy.
    pub fn create(&self, child: &str) -> Result<()> {
        for hierarchy in &self.hierarchies {
            let mut dir = hierarchy.clone();
            for part in [self.name.as_str(), child] {
                let parent = dir.clone();
                dir.push(part);
                if dir.is_dir() {
                    continue;
                }
                std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
                // A new cpuset has no CPUs and no memory nodes: no process could join it.
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    if dir.join(file).exists() {
                        let value = std::fs::read_to_string(parent.join(file))?;
                        std::fs::write(dir.join(file), value.trim())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files of `/<name>/<child>`, one per hierarchy: a process that
    /// writes its PID into each joins that cgroup.
    pub fn procs_files(&self, child: &str) -> Vec<PathBuf> {
        self.hierarchies
            .iter()
            .map(|hierarchy| hierarchy.join(&self.name).join(child).join("cgroup.procs"))
            .collect()
    }

    /// Every process in the tree, in any hierarchy.
    pub fn processes(&self) -> Vec<i32> {
        let mut pids = Vec::new();
        for hierarchy in &self.hierarchies {
            collect_procs(&hierarchy.join(&self.name), &mut pids);
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Kills every process in the tree: freezes it (so none forks meanwhile), sends
    /// SIGKILL to each, thaws it, and repeats until it is empty.
    pub fn kill_all(&self, timeout: Duration) -> Result<()> {
        let freezer = self
            .hierarchies
            .iter()
            .map(|hierarchy| hierarchy.join(&self.name).join("freezer.state"))
            .find(|state| state.exists());
        let started = Instant::now();
        loop {
            let pids = self.processes();
            if pids.is_empty() {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "processes {pids:?} are still in cgroup {} after {timeout:?}",
                    self.path()
                );
            }
            if let Some(state) = &freezer {
                let _ = std::fs::write(state, "FROZEN");
            }
            for pid in pids {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            if let Some(state) = &freezer {
                let _ = std::fs::write(state, "THAWED");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Removes the tree's cgroups, deepest first, in every hierarchy. They must be empty.
    pub fn remove(&self) -> Result<()> {
        let started = Instant::now();
        for hierarchy in &self.hierarchies {
            let root = hierarchy.join(&self.name);
            if !root.exists() {
                continue;
            }
            let mut dirs = Vec::new();
            collect_dirs(&root, &mut dirs);
            // Deepest first: a path sorts after its parent.
            dirs.sort();
            for dir in dirs.iter().rev() {
                // An exited process may take a moment to leave its cgroup.
                while let Err(error) = std::fs::remove_dir(dir) {
                    if error.kind() == std::io::ErrorKind::NotFound {
                        break;
                    }
                    if started.elapsed() > Duration::from_secs(10) {
                        return Err(error).with_context(|| format!("removing {}", dir.display()));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        Ok(())
    }
}

/// The mount points of the cgroup hierarchies (v1 controllers and the v2 tree).
fn hierarchies() -> Result<Vec<PathBuf>> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            let fstype = after.split_whitespace().next()?;
            let mount_point = before.split_whitespace().nth(4)?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .collect();
    if found.is_empty() {
        bail!("no cgroup hierarchy is mounted");
    }
    Ok(found)
}

fn collect_procs(dir: &Path, pids: &mut Vec<i32>) {
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        pids.extend(
            procs
                .lines()
                .filter_map(|line| line.trim().parse::<i32>().ok()),
        );
    }
    for child in subdirectories(dir) {
        collect_procs(&child, pids);
    }
}

fn collect_dirs(dir: &Path, dirs: &mut Vec<PathBuf>) {
    dirs.push(dir.to_owned());
    for child in subdirectories(dir) {
        collect_dirs(&child, dirs);
    }
}

fn subdirectories(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
                .map(|entry| entry.path())
                .collect()
        })
        .unwrap_or_default()
}

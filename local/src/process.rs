//! Child processes that never outlive the test process.
//!
//! Every server a test starts (Redis, PostgreSQL, etcd, the LogPipeline binaries) is a
//! [`ChildProcess`]: it is killed when dropped, and — because a test runner can itself be
//! killed, abort on a panic, or exit with static servers still running — it also carries a
//! parent-death signal, so the kernel kills it when the test process goes away.
//!
//! Linux delivers the parent-death signal when the *thread* that forked the child exits,
//! not the process. Test threads come and go, so all children are forked from one spawner
//! thread that lives as long as the process.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;

/// A running child process whose output goes to a log file.
#[derive(Debug)]
pub struct ChildProcess {
    name: String,
    child: Child,
    log: PathBuf,
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

fn spawner() -> &'static mpsc::Sender<SpawnRequest> {
    static SPAWNER: OnceLock<mpsc::Sender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("child-spawner".into())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    // The receiver only goes away if the requesting thread died; the child
                    // is then dropped here and reaped by nobody, which is harmless.
                    let _ = reply.send(command.spawn());
                }
            })
            .map(|_| ())
            .unwrap_or_else(|error| panic!("cannot start the child-spawner thread: {error}"));
        requests
    })
}

impl ChildProcess {
    /// Starts `command`, sending its stdout and stderr to `log`.
    pub fn spawn(name: &str, command: Command, log: &Path) -> Result<Self> {
        Self::spawn_with_death_signal(name, command, log, Signal::SIGKILL)
    }

    /// Like [`ChildProcess::spawn`], but the process gets `death_signal` rather than
    /// SIGKILL when this process dies: one that cleans up after itself on SIGTERM can.
    pub fn spawn_with_death_signal(
        name: &str,
        mut command: Command,
        log: &Path,
        death_signal: Signal,
    ) -> Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = out.try_clone()?;
        command.stdin(Stdio::null()).stdout(out).stderr(err);
        let parent = std::process::id();
        // SAFETY: the closure runs between fork and exec and calls only prctl(2) and
        // getppid(2), both async-signal-safe; it allocates nothing and takes no locks.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(death_signal)?;
                // The parent may have died between fork and prctl.
                if nix::unistd::getppid().as_raw() as u32 != parent {
                    return Err(std::io::Error::other("parent exited during spawn"));
                }
                Ok(())
            });
        }
        let (reply, response) = mpsc::channel();
        spawner()
            .send((command, reply))
            .map_err(|_| anyhow::anyhow!("the child-spawner thread is gone"))?;
        let child = response
            .recv()
            .context("the child-spawner thread did not answer")?
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The last `lines` lines of its output, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        signal::kill(Pid::from_raw(self.child.id() as i32), signal)
            .with_context(|| format!("sending {signal} to {}", self.name))
    }

    /// Returns its exit status if it has exited.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Fails if the process has exited, quoting the end of its log.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.try_wait()? {
            bail!(
                "{} exited ({status}); last output:\n{}",
                self.name,
                self.log_tail(30)
            );
        }
        Ok(())
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends `signal` and waits up to `timeout` for the exit; kills it if it does not exit.
    pub fn stop_with(&mut self, signal: Signal, timeout: Duration) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        self.signal(signal)?;
        match self.wait_timeout(timeout)? {
            Some(status) => Ok(status),
            None => {
                self.kill();
                bail!(
                    "{} did not exit within {timeout:?} of {signal}; killed it",
                    self.name
                )
            }
        }
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `check` every 20 ms until it returns `Ok(true)`; fails at once when it returns
/// an error, and after `timeout` otherwise.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if check().with_context(|| format!("waiting until {what}"))? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?}: {what}");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// A new temporary directory named `<prefix><random>` that records the process owning it.
///
/// Directories of servers that were killed with their test process (and shared servers
/// held in statics, which are never dropped) stay behind; each call removes those whose
/// owner is no longer alive.
pub fn scratch_dir(prefix: &str) -> Result<TempDir> {
    remove_orphaned_dirs(prefix);
    let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
    std::fs::write(dir.path().join(OWNER_FILE), std::process::id().to_string())?;
    Ok(dir)
}

const OWNER_FILE: &str = "owner.pid";

fn remove_orphaned_dirs(prefix: &str) {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let named_like_ours = path
            .file_name()
            .and_then(|name| name.to_str())
            .is_some_and(|name| name.starts_with(prefix));
        if !named_like_ours {
            continue;
        }
        if !owner_is_alive(&path) {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Whether the process that made scratch directory `dir` still runs (true when the
/// directory says nothing about its owner).
pub fn owner_is_alive(dir: &Path) -> bool {
    let owner = std::fs::read_to_string(dir.join(OWNER_FILE))
        .ok()
        .and_then(|pid| pid.trim().parse::<i32>().ok());
    match owner {
        Some(owner) => signal::kill(Pid::from_raw(owner), None).is_ok(),
        None => true,
    }
}

/// Runs `command` to completion and returns its standard output; fails with both its
/// outputs unless it succeeds.
pub fn output_of(mut command: Command) -> Result<String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !output.status.success() {
        bail!(
            "{command:?} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Runs `command` to completion with its output going where this process's goes (for
/// long steps whose progress a person should see); fails unless it succeeds.
pub fn run_visibly(mut command: Command) -> Result<()> {
    let status = command
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("running {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed ({status})");
    }
    Ok(())
}

/// Sends `signal` to every process descended from this one (children, their children…).
pub fn signal_descendants(signal: Signal) {
    for pid in descendants_of(std::process::id()) {
        let _ = signal::kill(Pid::from_raw(pid as i32), signal);
    }
}

/// The processes descended from `ancestor` (children, their children…), read from
/// `/proc/<pid>/stat`, children before their own children.
pub fn descendants_of(ancestor: u32) -> Vec<u32> {
    // (pid, parent pid) of every process.
    let processes: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| {
                    let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
                    let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
                    // The command name may hold spaces and parentheses: skip past its end.
                    let after_name = &stat[stat.rfind(')')? + 1..];
                    let parent = after_name.split_whitespace().nth(1)?.parse().ok()?;
                    Some((pid, parent))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut descendants = vec![ancestor];
    let mut index = 0;
    while index < descendants.len() {
        let parent = descendants[index];
        descendants.extend(
            processes
                .iter()
                .filter(|(_, ppid)| *ppid == parent)
                .map(|(pid, _)| *pid),
        );
        index += 1;
    }
    descendants.remove(0);
    descendants
}

/// The ports [`free_port`] hands out: below the kernel's ephemeral range (32768 and up on
/// Linux), from which every outgoing connection and every bind to port 0 takes its
/// port, and clear of the ports Kubernetes' components listen on (the kubelet's and
/// kube-proxy's 10248–10259, the NodePorts 30000–32767).
const TEST_PORTS: std::ops::Range<u32> = 12_000..30_000;

/// A TCP port on 127.0.0.1 that was free a moment ago, for a server to listen on.
///
/// A port the kernel picks (binding port 0) comes from the ephemeral range, where any
/// connection opened before the server binds may take it ("address already in use").
/// These ports come from [`TEST_PORTS`], which no connection takes, in turn from a
/// random start, so that test processes side by side rarely try the same one.
pub fn free_port() -> Result<u16> {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let span = TEST_PORTS.end - TEST_PORTS.start;
    let next = NEXT.get_or_init(|| {
        let random = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        AtomicU32::new((random % u64::from(span)) as u32)
    });
    for _ in 0..span {
        let port = TEST_PORTS.start + next.fetch_add(1, Ordering::Relaxed) % span;
        let port = u16::try_from(port).context("a port beyond 65535")?;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port in {TEST_PORTS:?} on 127.0.0.1")
}

/// Finds `program` on `PATH`.
pub fn find_on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_outside_the_ephemeral_range_and_differ() {
        let ports: Vec<u16> = (0..100).map(|_| free_port().unwrap()).collect();
        assert!(
            ports
                .iter()
                .all(|port| TEST_PORTS.contains(&u32::from(*port)))
        );
        let distinct: std::collections::BTreeSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len());
    }

    #[test]
    fn a_dropped_child_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new("sleep");
        command.arg("600");
        let child = ChildProcess::spawn("sleep", command, &dir.path().join("sleep.log")).unwrap();
        let pid = Pid::from_raw(child.pid() as i32);
        drop(child);
        assert!(signal::kill(pid, None).is_err(), "the child is still alive");
    }

    #[test]
    fn a_child_dies_with_its_parent() {
        // Run this test binary as the parent of a `sleep`, then kill that parent: the
        // parent-death signal must take the grandchild down with it.
        if let Ok(pid_file) = std::env::var("LOGPIPELINE_PDEATHSIG_CHILD") {
            let dir = tempfile::tempdir().unwrap();
            let mut command = Command::new("sleep");
            command.arg("600");
            let child =
                ChildProcess::spawn("sleep", command, &dir.path().join("sleep.log")).unwrap();
            std::fs::write(&pid_file, child.pid().to_string()).unwrap();
            thread::sleep(Duration::from_secs(600));
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("grandchild.pid");
        let mut parent = Command::new(std::env::current_exe().unwrap());
        parent
            .args(["--exact", "process::tests::a_child_dies_with_its_parent"])
            .env("LOGPIPELINE_PDEATHSIG_CHILD", &pid_file);
        let mut parent =
            ChildProcess::spawn("test parent", parent, &dir.path().join("parent.log")).unwrap();
        wait_until("the grandchild starts", Duration::from_secs(30), || {
            Ok(std::fs::read_to_string(&pid_file).is_ok_and(|s| !s.is_empty()))
        })
        .unwrap();
        let grandchild: i32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
        parent.kill();
        wait_until("the grandchild dies", Duration::from_secs(10), || {
            // A zombie still answers kill(0); check /proc for a live state instead.
            let stat = std::fs::read_to_string(format!("/proc/{grandchild}/stat"));
            Ok(stat.map_or(true, |s| s.contains(") Z ")))
        })
        .unwrap();
    }
}

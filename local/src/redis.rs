//! A real `redis-server` on a free port in a temporary directory.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::process::{ChildProcess, find_on_path, free_port, scratch_dir, wait_until};

/// A running Redis server, stopped when dropped.
#[derive(Debug)]
pub struct RedisServer {
    dir: TempDir,
    port: u16,
    options: RedisOptions,
    process: Option<ChildProcess>,
}

/// How many ports a new [`RedisServer`] tries before it gives up.
const START_TRIES: u32 = 5;

/// How to configure a [`RedisServer`].
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// Persist with an append-only file (`appendfsync everysec`), as the docs recommend.
    pub append_only: bool,
    /// Extra `redis-server` arguments, e.g. `["--maxmemory-policy", "allkeys-lru"]`.
    pub extra_args: Vec<String>,
}

impl RedisServer {
    /// Starts a Redis server with default options (no persistence).
    pub fn start() -> Result<Self> {
        Self::start_with(RedisOptions::default())
    }

    /// Starts a Redis server with `options`.
    pub fn start_with(options: RedisOptions) -> Result<Self> {
        let mut server = Self {
            port: free_port()?,
            dir: scratch_dir("logpipeline-redis-")?,
            options,
            process: None,
        };
        // A port free a moment ago may be taken by the time Redis binds it, and in
        // cluster mode so may its bus port, 10,000 above, which can fall among the
        // ports outgoing connections take on a busy machine: then another port, in a
        // directory of its own.
        let mut tries = 1;
        loop {
            match server.start_again() {
                Ok(()) => return Ok(server),
                Err(error)
                    if tries < START_TRIES
                        && format!("{error:#}").contains("Address already in use") =>
                {
                    tries += 1;
                    server.port = free_port()?;
                    server.dir = scratch_dir("logpipeline-redis-")?;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Starts a replica of the server on `primary_port` with `options`, and waits until it
    /// has synchronised (`master_link_status:up`).
    pub fn start_replica_of(primary_port: u16, mut options: RedisOptions) -> Result<Self> {
        options.extra_args.extend([
            "--replicaof".to_owned(),
            "127.0.0.1".to_owned(),
            primary_port.to_string(),
        ]);
        let replica = Self::start_with(options)?;
        wait_until("the replica is in sync", Duration::from_secs(60), || {
            Ok(info(replica.port, "replication")?
                .lines()
                .any(|line| line.trim() == "master_link_status:up"))
        })?;
        Ok(replica)
    }

    /// Starts the server again after [`stop`](Self::stop), on the same port and data.
    pub fn start_again(&mut self) -> Result<()> {
        let binary = find_on_path("redis-server").context(
            "redis-server is not installed (apt-get install redis-server, or run .ci/run)",
        )?;
        let mut command = Command::new(binary);
        command.args([
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &self.dir.path().to_string_lossy(),
            "--save",
            "",
            "--appendonly",
            if self.options.append_only {
                "yes"
            } else {
                "no"
            },
            "--protected-mode",
            "no",
        ]);
        command.args(&self.options.extra_args);
        let log = self.dir.path().join("redis.log");
        let mut process = ChildProcess::spawn("redis-server", command, &log)?;
        let port = self.port;
        wait_until("redis-server answers PING", Duration::from_secs(20), || {
            process.ensure_running()?;
            Ok(ping(port).is_ok())
        })?;
        self.process = Some(process);
        Ok(())
    }

    /// Stops the server (SIGTERM; with an append-only file, everything written is kept).
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut process) = self.process.take() {
            process.stop_with(Signal::SIGTERM, Duration::from_secs(20))?;
        }
        Ok(())
    }

    /// Kills the server at once (SIGKILL), as a crashed host: what its append-only file
    /// holds is what [`start_again`](Self::start_again) finds.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut process) = self.process.take() {
            process.stop_with(Signal::SIGKILL, Duration::from_secs(20))?;
        }
        Ok(())
    }

    /// Sends `signal` to the server: SIGSTOP freezes it with its connections open (a
    /// Redis that stops answering), SIGCONT thaws it.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        self.process
            .as_ref()
            .context("redis-server is stopped")?
            .signal(signal)
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// The text of `INFO <section>`.
fn info(port: u16, section: &str) -> Result<String> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    (&stream).write_all(format!("INFO {section}\r\n").as_bytes())?;
    let mut reader = std::io::BufReader::new(&stream);
    let mut header = String::new();
    std::io::BufRead::read_line(&mut reader, &mut header)?;
    let length: usize = header
        .strip_prefix('$')
        .and_then(|length| length.trim().parse().ok())
        .with_context(|| format!("unexpected answer to INFO: {header:?}"))?;
    let mut text = vec![0; length];
    reader.read_exact(&mut text)?;
    Ok(String::from_utf8_lossy(&text).into_owned())
}

fn ping(port: u16) -> Result<()> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.write_all(b"PING\r\n")?;
    let mut answer = [0u8; 7];
    stream.read_exact(&mut answer)?;
    anyhow::ensure!(&answer == b"+PONG\r\n", "unexpected answer to PING");
    Ok(())
}

/// A Redis Cluster of `masters` masters with `replicas` replicas each, every node a
/// [`RedisServer`] in cluster mode with an append-only file, joined with
/// `redis-cli --cluster create`; stopped when dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the nodes, creates the cluster, and waits until every node sees every slot
    /// served (`cluster_state:ok`) and every replica is in sync.
    pub fn start(masters: usize, replicas: usize) -> Result<Self> {
        let options = RedisOptions {
            append_only: true,
            extra_args: Vec::new(),
        };
        Self::start_with(masters, replicas, options)
    }

    /// [`start`](Self::start), each node with `options` besides cluster mode.
    pub fn start_with(masters: usize, replicas: usize, mut options: RedisOptions) -> Result<Self> {
        options.extra_args.extend(
            [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
                // A master's failure stops its own slots only, not the whole cluster
                // until its replica takes over (docs/operations.md, "Redis Cluster").
                "--cluster-require-full-coverage",
                "no",
            ]
            .map(str::to_owned),
        );
        let nodes = (0..masters * (1 + replicas))
            .map(|_| RedisServer::start_with(options.clone()))
            .collect::<Result<Vec<_>>>()?;
        let cli = find_on_path("redis-cli")
            .context("redis-cli is not installed (apt-get install redis-tools)")?;
        let mut create = Command::new(cli);
        create.arg("--cluster").arg("create");
        create.args(
            nodes
                .iter()
                .map(|node| format!("127.0.0.1:{}", node.port())),
        );
        create.args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"]);
        crate::process::output_of(create)?;
        let cluster = Self { nodes };
        cluster.wait_until_whole()?;
        Ok(cluster)
    }

    /// Waits until every running node sees every slot served and every replica is in
    /// sync with its master.
    pub fn wait_until_whole(&self) -> Result<()> {
        wait_until(
            "the Redis Cluster is whole",
            Duration::from_secs(60),
            || {
                for node in self.nodes.iter().filter(|node| node.process.is_some()) {
                    if !cluster_info(node.port)?.contains("cluster_state:ok") {
                        return Ok(false);
                    }
                    let replication = info(node.port, "replication")?;
                    let replica = replication.lines().any(|line| line.trim() == "role:slave");
                    if replica
                        && !replication
                            .lines()
                            .any(|line| line.trim() == "master_link_status:up")
                    {
                        return Ok(false);
                    }
                }
                Ok(true)
            },
        )
    }

    /// The nodes' URLs, comma-separated, as `REDIS_URL` takes them for a cluster.
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Its nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The node that is master of the slot of `key` now.
    pub fn master_of(&self, key: &str) -> Result<usize> {
        let cli = find_on_path("redis-cli").context("redis-cli is not installed")?;
        let any = self
            .nodes
            .iter()
            .find(|node| node.process.is_some())
            .context("every node is stopped")?;
        let mut slot = Command::new(&cli);
        slot.args(["-p", &any.port.to_string(), "CLUSTER", "KEYSLOT", key]);
        let slot: u16 = crate::process::output_of(slot)?.trim().parse()?;
        let mut nodes = Command::new(&cli);
        nodes.args(["-p", &any.port.to_string(), "CLUSTER", "NODES"]);
        let table = crate::process::output_of(nodes)?;
        for line in table.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let serves = fields[8..].iter().any(|range| {
                let (from, to) = range.split_once('-').unwrap_or((range, range));
                matches!((from.parse::<u16>(), to.parse::<u16>()), (Ok(from), Ok(to)) if (from..=to).contains(&slot))
            });
            if serves {
                let port: u16 = fields[1]
                    .split(['@', ':'])
                    .nth(1)
                    .context("a node without a port")?
                    .parse()?;
                return self
                    .nodes
                    .iter()
                    .position(|node| node.port == port)
                    .context("a master that is not ours");
            }
        }
        anyhow::bail!("no master serves slot {slot}")
    }

    /// Waits until every running node holds node `index` failed (`fail` in `CLUSTER
    /// NODES`, agreed by the masters, not a single node's `fail?`).
    pub fn wait_until_failed(&self, index: usize) -> Result<()> {
        let cli = find_on_path("redis-cli").context("redis-cli is not installed")?;
        let port = format!("127.0.0.1:{}@", self.nodes[index].port);
        wait_until(
            "the cluster holds the node failed",
            Duration::from_secs(60),
            || {
                for node in self.nodes.iter().filter(|node| node.process.is_some()) {
                    let mut nodes = Command::new(&cli);
                    nodes.args(["-p", &node.port.to_string(), "CLUSTER", "NODES"]);
                    let table = crate::process::output_of(nodes)?;
                    let failed = table.lines().any(|line| {
                        let fields: Vec<&str> = line.split_whitespace().collect();
                        fields.len() > 2
                            && fields[1].starts_with(&port)
                            && fields[2].split(',').any(|flag| flag == "fail")
                    });
                    if !failed {
                        return Ok(false);
                    }
                }
                Ok(true)
            },
        )
    }

    /// Starts node `index` again after [`kill`](Self::kill), with its data and cluster
    /// configuration: it rejoins, as a replica if its slots moved meanwhile.
    pub fn restart(&mut self, index: usize) -> Result<()> {
        self.nodes[index].start_again()
    }

    /// Kills node `index` at once (SIGKILL), as a crashed host.
    pub fn kill(&mut self, index: usize) -> Result<()> {
        self.nodes[index].kill()
    }
}

/// The text of `CLUSTER INFO`.
fn cluster_info(port: u16) -> Result<String> {
    let cli = find_on_path("redis-cli").context("redis-cli is not installed")?;
    let mut command = Command::new(cli);
    command.args(["-p", &port.to_string(), "CLUSTER", "INFO"]);
    crate::process::output_of(command)
}

//! A real PostgreSQL server on a free port in a temporary directory.
//!
//! PostgreSQL refuses to run as root; when the tests run as root the server runs as the
//! `postgres` (or `nobody`) system user, which owns its temporary directory.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use nix::unistd::{Uid, User, chown};
use tempfile::TempDir;

use crate::process::{ChildProcess, find_on_path, free_port, output_of, scratch_dir, wait_until};

/// A running PostgreSQL server, stopped when dropped.
#[derive(Debug)]
pub struct PostgresServer {
    dir: TempDir,
    port: u16,
    bindir: PathBuf,
    user: Option<User>,
    options: PostgresOptions,
    process: Option<ChildProcess>,
}

/// How to configure a [`PostgresServer`].
#[derive(Debug, Clone, Default)]
pub struct PostgresOptions {
    /// Keep PostgreSQL's crash-safety settings (fsync, full page writes). Tests turn them
    /// off to run faster; benchmarks and the local stack keep them.
    pub durable: bool,
    /// Extra `-c name=value` settings.
    pub settings: Vec<(String, String)>,
}

impl PostgresServer {
    /// Initialises and starts a server with default options.
    pub fn start() -> Result<Self> {
        Self::start_with(PostgresOptions::default())
    }

    /// Initialises and starts a server with `options`.
    pub fn start_with(options: PostgresOptions) -> Result<Self> {
        let mut server = Self::prepare(options)?;
        server.init()?;
        server.start_again()?;
        Ok(server)
    }

    /// Starts a streaming standby of `primary`, with its options: a copy of its data
    /// by `pg_basebackup`, following its WAL. Returns once the standby streams.
    pub fn start_standby_of(primary: &PostgresServer) -> Result<Self> {
        let mut standby = Self::prepare(primary.options.clone())?;
        let mut basebackup = standby.command("pg_basebackup");
        basebackup
            .args(["-h", "127.0.0.1", "-p", &primary.port.to_string()])
            .args(["-U", "postgres", "-D"])
            .arg(standby.data_dir())
            .args([
                "--write-recovery-conf",
                "--wal-method=stream",
                "--checkpoint=fast",
                "--no-sync",
            ]);
        output_of(basebackup)?;
        standby.start_again()?;
        wait_until(
            "the standby streams from the primary",
            Duration::from_secs(60),
            || {
                Ok(primary.psql(
                    "postgres",
                    "select count(*) from pg_stat_replication where state = 'streaming'",
                )? != "0")
            },
        )?;
        Ok(standby)
    }

    /// Promotes this standby to a primary, and returns once it takes writes.
    pub fn promote(&self) -> Result<()> {
        let mut promote = self.command("pg_ctl");
        promote
            .args(["promote", "--wait", "-D"])
            .arg(self.data_dir());
        output_of(promote)?;
        wait_until(
            "the promoted server takes writes",
            Duration::from_secs(60),
            || Ok(self.psql("postgres", "show transaction_read_only")? == "off"),
        )
    }

    fn prepare(options: PostgresOptions) -> Result<Self> {
        let bindir = postgres_bindir()?;
        let dir = scratch_dir("logpipeline-postgres-")?;
        let user = if Uid::effective().is_root() {
            let user = User::from_name("postgres")?
                .or(User::from_name("nobody")?)
                .context("running as root, and there is no `postgres` or `nobody` user to run PostgreSQL as")?;
            chown(dir.path(), Some(user.uid), Some(user.gid))?;
            Some(user)
        } else {
            None
        };
        Ok(Self {
            port: free_port()?,
            dir,
            bindir,
            user,
            options,
            process: None,
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bindir.join(program));
        if let Some(user) = &self.user {
            command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
        }
        command.env("PGTZ", "UTC").env_remove("PGDATABASE");
        command
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn init(&self) -> Result<()> {
        let mut initdb = self.command("initdb");
        initdb.arg("--pgdata").arg(self.data_dir()).args([
            "--username=postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]);
        output_of(initdb).map(drop)
    }

    /// Starts the server again after [`stop`](Self::stop), on the same port and data.
    pub fn start_again(&mut self) -> Result<()> {
        let mut postgres = self.command("postgres");
        postgres
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "max_connections=300"])
            .args(["-c", "shared_buffers=256MB"])
            .args(["-c", "timezone=UTC"]);
        if !self.options.durable {
            for setting in [
                "fsync=off",
                "full_page_writes=off",
                "synchronous_commit=off",
            ] {
                postgres.args(["-c", setting]);
            }
        }
        for (name, value) in &self.options.settings {
            postgres.args(["-c", &format!("{name}={value}")]);
        }
        let log = self.dir.path().join("postgres.log");
        let mut process = ChildProcess::spawn("postgres", postgres, &log)?;
        wait_until(
            "PostgreSQL accepts connections",
            Duration::from_secs(60),
            || {
                process.ensure_running()?;
                let ready = self
                    .command("pg_isready")
                    .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                    .status()?;
                Ok(ready.success())
            },
        )?;
        self.process = Some(process);
        Ok(())
    }

    /// Stops the server with a fast shutdown (SIGINT): open connections are closed.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut process) = self.process.take() {
            process.stop_with(Signal::SIGINT, Duration::from_secs(30))?;
        }
        Ok(())
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        multi_host_url(&[self], name)
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its working directory (the data directory is `data/` inside).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `sql` in database `database` with `psql` and returns what it prints
    /// (unaligned, tuples only).
    pub fn psql(&self, database: &str, sql: &str) -> Result<String> {
        let output = self
            .command("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", database, "-c", sql])
            .output()
            .context("running psql")?;
        if !output.status.success() {
            bail!(
                "psql failed on {sql:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Creates a new, empty database and returns its URL.
    pub fn create_database(&self) -> Result<String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        self.psql("postgres", &format!("create database {name}"))?;
        Ok(self.url(&name))
    }
}

/// The URL of database `name` naming every server of `servers`, in that order, as a
/// primary and its standbys are named together (libpq's multi-host form).
pub fn multi_host_url(servers: &[&PostgresServer], name: &str) -> String {
    let hosts: Vec<String> = servers
        .iter()
        .map(|server| format!("127.0.0.1:{}", server.port))
        .collect();
    format!("postgres://postgres@{}/{name}", hosts.join(","))
}

/// The PostgreSQL server shared by every test of this process. Tests that stop or break
/// PostgreSQL start their own instead. It is never dropped: the parent-death signal stops
/// it when the process exits, and the next run removes its directory.
pub fn shared() -> Result<&'static PostgresServer> {
    static SHARED: OnceLock<PostgresServer> = OnceLock::new();
    if let Some(server) = SHARED.get() {
        return Ok(server);
    }
    let server = PostgresServer::start()?;
    // Another thread may have won the race; its server is used and ours is dropped.
    Ok(SHARED.get_or_init(|| server))
}

/// A fresh database on the [shared] server, as a URL.
pub fn fresh_database() -> Result<String> {
    shared()?.create_database()
}

/// Where PostgreSQL's server programs are: `$LOGPIPELINE_PG_BINDIR`, the newest
/// `/usr/lib/postgresql/<version>/bin` (Debian), or the directory of `postgres` on `PATH`.
pub fn postgres_bindir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("LOGPIPELINE_PG_BINDIR") {
        return Ok(PathBuf::from(dir));
    }
    let newest_debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version);
    if let Some((_, bin)) = newest_debian {
        return Ok(bin);
    }
    find_on_path("postgres")
        .and_then(|postgres| postgres.parent().map(Path::to_path_buf))
        .context("PostgreSQL is not installed (apt-get install postgresql, or run .ci/run)")
}

//! The real `logpipeline-api` and `logpipeline-worker` binaries, started as processes.
//!
//! The binaries are built on first use with the same Cargo profile as the running test
//! (a no-op when they are up to date), so a test never runs a stale build.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::process::{ChildProcess, free_port, scratch_dir, wait_until};

/// The directory holding this build's binaries (`target/<profile>`), after building the
/// workspace's binaries in it with the running program's profile.
///
/// A test builds what `cargo test --workspace` builds, which resolves features exactly as
/// the test run did: the build reuses everything and at most links. A tool (the local
/// stack, the benchmarks) builds just the api and worker.
pub fn binaries_dir() -> Result<&'static Path> {
    static DIR: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| build_binaries().map_err(|error| format!("{error:#}")))
        .as_deref()
        .map_err(|error| anyhow::anyhow!("{error}"))
}

/// Whether the running program is a test, whose [`binaries_dir`] holds every binary of
/// the workspace, built as the test run built them.
pub fn running_as_test() -> bool {
    // target/<profile>/deps/<test> for tests, target/<profile>/<bin> for binaries.
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.ends_with("deps")))
        .unwrap_or(false)
}

/// The directory of the running program's build (`target/<profile>`), and the profile.
fn build_dir() -> Result<(PathBuf, String)> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().context("no directory")?.to_path_buf();
    if running_as_test() {
        dir.pop();
    }
    let profile = dir
        .file_name()
        .and_then(|name| name.to_str())
        .context("cannot tell the build profile")?
        .to_owned();
    Ok((dir, profile))
}

/// The cargo profile the running program was built with (`release`, `local`, `debug`…).
pub fn build_profile() -> Result<String> {
    build_dir().map(|(_, profile)| profile)
}

fn build_binaries() -> Result<PathBuf> {
    let (dir, profile) = build_dir()?;
    let is_test = running_as_test();
    let target = dir.parent().context("no target directory")?;
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("no workspace")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.current_dir(workspace).args(["build", "--quiet"]);
    if is_test {
        build.args(["--workspace", "--bins", "--tests", "--examples"]);
    } else {
        build.args(["-p", "logpipeline-api", "-p", "logpipeline-worker"]);
    }
    build.arg("--target-dir").arg(target);
    match profile.as_str() {
        "debug" => {}
        "release" => {
            build.arg("--release");
        }
        other => {
            build.args(["--profile", other]);
        }
    }
    let status = build.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of the workspace's binaries failed ({status})");
    }
    Ok(dir)
}

/// Settings passed to a service as environment variables.
pub type Env = BTreeMap<String, String>;

/// Drops the URL settings when `settings` names Redis or PostgreSQL the seed system's
/// way (`REDIS_HOST`…, `POSTGRES_HOST`…), so that a service must use those.
fn prefer_seed_settings(settings: &mut Env) {
    if settings.contains_key("REDIS_HOST") {
        settings.remove("REDIS_URL");
    }
    if settings.contains_key("POSTGRES_HOST") {
        settings.remove("DATABASE_URL");
    }
}

/// A running `logpipeline-api`.
#[derive(Debug)]
pub struct ApiProcess {
    process: ChildProcess,
    port: u16,
    grpc_port: u16,
    _dir: TempDir,
}

impl ApiProcess {
    /// Starts the api against `redis_url` with extra settings `env` (e.g.
    /// `LOGPIPELINE_STREAM_CAPACITY`), and waits until it serves.
    pub fn start(redis_url: &str, database_url: &str, env: &Env) -> Result<Self> {
        Self::start_on(free_port()?, redis_url, database_url, env)
    }

    /// Like [`start`](Self::start), serving HTTP on `port`, and gRPC on the port of
    /// `LOGPIPELINE_GRPC_LISTEN` in `env` or else a free one.
    pub fn start_on(port: u16, redis_url: &str, database_url: &str, env: &Env) -> Result<Self> {
        let grpc_port = match env.get("LOGPIPELINE_GRPC_LISTEN") {
            Some(listen) => listen
                .rsplit(':')
                .next()
                .and_then(|port| port.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("LOGPIPELINE_GRPC_LISTEN {listen:?} has no port"))?,
            None => free_port()?,
        };
        let mut settings = Env::from([
            ("REDIS_URL".into(), redis_url.into()),
            ("DATABASE_URL".into(), database_url.into()),
            ("LOGPIPELINE_LISTEN".into(), format!("127.0.0.1:{port}")),
            (
                "LOGPIPELINE_GRPC_LISTEN".into(),
                format!("127.0.0.1:{grpc_port}"),
            ),
            // A local stack, as the tests' default; tests of authentication set `keys`.
            ("LOGPIPELINE_AUTH".into(), "off".into()),
        ]);
        settings.extend(env.clone());
        prefer_seed_settings(&mut settings);
        let dir = scratch_dir("logpipeline-api-")?;
        let mut process = spawn("logpipeline-api", &settings, dir.path())?;
        wait_until("the api serves /livez", Duration::from_secs(60), || {
            process.ensure_running()?;
            Ok(http_status(port, "/livez").is_ok_and(|status| status == 200))
        })?;
        Ok(Self {
            process,
            port,
            grpc_port,
            _dir: dir,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:<grpc port>`, the gRPC endpoint.
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// The port it serves gRPC on.
    pub fn grpc_port(&self) -> u16 {
        self.grpc_port
    }

    /// The port it serves on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// The process.
    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }
}

/// A running `logpipeline-worker`.
#[derive(Debug)]
pub struct WorkerProcess {
    process: ChildProcess,
    metrics_port: u16,
    _dir: TempDir,
}

impl WorkerProcess {
    /// Starts a worker against `redis_url` and `database_url` with extra settings `env`
    /// (e.g. `LOGPIPELINE_CONSUMER_NAME`), and waits until it serves its probes.
    pub fn start(redis_url: &str, database_url: &str, env: &Env) -> Result<Self> {
        Self::start_on(free_port()?, redis_url, database_url, env)
    }

    /// Like [`start`](Self::start), serving its metrics on `metrics_port` (a restarted
    /// worker keeps its scrape target).
    pub fn start_on(
        metrics_port: u16,
        redis_url: &str,
        database_url: &str,
        env: &Env,
    ) -> Result<Self> {
        let settings = worker_settings(metrics_port, redis_url, database_url, env);
        let dir = scratch_dir("logpipeline-worker-")?;
        let mut process = spawn("logpipeline-worker", &settings, dir.path())?;
        wait_until("the worker serves /livez", Duration::from_secs(60), || {
            process.ensure_running()?;
            Ok(http_status(metrics_port, "/livez").is_ok_and(|status| status == 200))
        })?;
        Ok(Self {
            process,
            metrics_port,
            _dir: dir,
        })
    }

    /// The port of its metrics and probes.
    pub fn metrics_port(&self) -> u16 {
        self.metrics_port
    }

    /// `http://127.0.0.1:<port>` of its metrics and probes.
    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.metrics_port)
    }

    /// The value of metric sample `name` (with its labels, as in the text format, e.g.
    /// `logpipeline_worker_entries_dead_lettered_total{reason="rejected"}`), 0 if absent.
    pub fn metric(&self, name: &str) -> Result<f64> {
        let text = http_get(self.metrics_port, "/metrics")?;
        Ok(metric_value(&text, name).unwrap_or(0.0))
    }

    /// The process.
    pub fn process(&mut self) -> &mut ChildProcess {
        &mut self.process
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        self.process.log_path()
    }

    /// Sends SIGTERM and waits for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.process.stop_with(Signal::SIGTERM, timeout)
    }
}

/// The settings of a worker against `redis_url` and `database_url` serving its metrics
/// on `metrics_port`, with extra settings `env`.
fn worker_settings(metrics_port: u16, redis_url: &str, database_url: &str, env: &Env) -> Env {
    let mut settings = Env::from([
        ("REDIS_URL".into(), redis_url.into()),
        ("DATABASE_URL".into(), database_url.into()),
        (
            "LOGPIPELINE_METRICS_LISTEN".into(),
            format!("127.0.0.1:{metrics_port}"),
        ),
    ]);
    settings.extend(env.clone());
    prefer_seed_settings(&mut settings);
    settings
}

/// The command that runs a worker as [`WorkerProcess::start_on`] does, in `dir`, for a
/// test that wants its output elsewhere than a log file.
pub fn worker_command(
    metrics_port: u16,
    redis_url: &str,
    database_url: &str,
    env: &Env,
    dir: &Path,
) -> Result<Command> {
    let settings = worker_settings(metrics_port, redis_url, database_url, env);
    command("logpipeline-worker", &settings, dir)
}

/// `binary` of this build with only the settings `env`, in `dir`.
fn command(binary: &str, env: &Env, dir: &Path) -> Result<Command> {
    let path = binaries_dir()?.join(binary);
    let mut command = Command::new(&path);
    // Only what the test sets: nothing from the developer's environment leaks in.
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .envs(env)
        .current_dir(dir);
    Ok(command)
}

fn spawn(binary: &str, env: &Env, dir: &Path) -> Result<ChildProcess> {
    let command = command(binary, env, dir)?;
    ChildProcess::spawn(binary, command, &dir.join(format!("{binary}.log")))
}

/// The value of sample `name` in Prometheus text `text`.
pub fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (sample, value) = line.rsplit_once(' ')?;
            (sample == name).then(|| value.parse().ok()).flatten()
        })
}

/// The status code of `GET <path>` on 127.0.0.1:`port`.
pub fn http_status(port: u16, path: &str) -> Result<u16> {
    let response = http_request(port, path)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("malformed HTTP response")?;
    Ok(status)
}

/// The body of `GET <path>` on 127.0.0.1:`port`, which must answer 200.
pub fn http_get(port: u16, path: &str) -> Result<String> {
    let response = http_request(port, path)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path} answered {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}

fn http_request(port: u16, path: &str) -> Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_values_are_found_by_sample_name() {
        let text =
            "# HELP x_total help\n# TYPE x_total counter\nx_total 3\ny{reason=\"a b\"} 2.5\n";
        assert_eq!(metric_value(text, "x_total"), Some(3.0));
        assert_eq!(metric_value(text, "y{reason=\"a b\"}"), Some(2.5));
        assert_eq!(metric_value(text, "z"), None);
    }
}

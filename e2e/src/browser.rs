//! A real browser for the explorer's tests: Debian's Chromium, headless, driven over
//! WebDriver by its chromedriver, both started here and stopped with the [`Browser`].
//!
//! Chromium is chromedriver's child, not ours, so killing chromedriver alone would leave
//! the browser's processes running. Chromedriver therefore leads a process group of its
//! own, which Chromium and its helpers join, and the whole group is killed with the
//! [`Browser`], also when a test fails before it could close its session.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use logpipeline_local::process::{ChildProcess, find_on_path, free_port, scratch_dir, wait_until};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};

/// Chromium under chromedriver, with one WebDriver session.
pub struct Browser {
    /// The session.
    pub client: fantoccini::Client,
    driver: ChildProcess,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Chromedriver leads its group: its process id is the group's.
        let _ = killpg(Pid::from_raw(self.driver.pid() as i32), Signal::SIGKILL);
    }
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session of a new
    /// profile, with a window of 1400 × 900.
    pub async fn start() -> Result<Self> {
        let driver_binary = find_on_path("chromedriver")
            .context("chromedriver is missing: apt-get install chromium chromium-driver")?;
        let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .map(PathBuf::from)
            .find(|path| path.exists())
            .context("chromium is missing: apt-get install chromium chromium-driver")?;
        let profile = scratch_dir("logpipeline-chromium-")?;
        let port = free_port()?;
        let mut command = std::process::Command::new(driver_binary);
        // Chromium's own temporary files go with the profile.
        command
            .arg(format!("--port={port}"))
            .env("TMPDIR", profile.path())
            .process_group(0);
        let mut driver = ChildProcess::spawn(
            "chromedriver",
            command,
            &profile.path().join("chromedriver.log"),
        )?;
        wait_until("chromedriver listens", Duration::from_secs(30), || {
            driver.ensure_running()?;
            Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
        })?;
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    // This machine's network is closed: no calls home.
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--no-first-run", "--disable-default-apps",
                    "--window-size=1400,900",
                    format!("--user-data-dir={}", profile.path().join("profile").display()),
                ],
            }),
        );
        let client = fantoccini::ClientBuilder::new(
            hyper_util::client::legacy::connect::HttpConnector::new(),
        )
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .context("starting a Chromium session")?;
        Ok(Self {
            client,
            driver,
            _profile: profile,
        })
    }

    /// The process id of chromedriver, whose descendants are the browser's processes.
    pub fn driver_pid(&self) -> u32 {
        self.driver.pid()
    }

    /// The value of JavaScript expression `expression` in the page.
    pub async fn eval(&self, expression: &str) -> Result<Value> {
        Ok(self
            .client
            .execute(&format!("return ({expression});"), Vec::new())
            .await?)
    }

    /// Waits up to `timeout` until JavaScript expression `condition` is true in the page.
    pub async fn until(&self, condition: &str, timeout: Duration) -> Result<()> {
        let started = std::time::Instant::now();
        loop {
            if self.eval(condition).await? == Value::Bool(true) {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!("not within {timeout:?}: {condition}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves a screenshot of the page as `name`.png in [`screenshots`].
    pub async fn screenshot(&self, name: &str) -> Result<PathBuf> {
        let png = self.client.screenshot().await?;
        let dir = screenshots();
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png)?;
        Ok(path)
    }
}

/// Where the explorer's tests leave their screenshots: `target/explorer-screenshots`.
pub fn screenshots() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("explorer-screenshots")
}

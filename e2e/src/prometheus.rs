//! A real Prometheus (Debian's package) on a free port in a temporary directory, scraping
//! the targets a test names every second and evaluating rule files every second.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use tempfile::TempDir;

use logpipeline_local::process::{ChildProcess, find_on_path, free_port, scratch_dir, wait_until};

/// Something to scrape: `host:port`, the `job` name and extra target labels.
#[derive(Debug, Clone)]
pub struct Target {
    pub job: String,
    pub address: String,
    pub labels: BTreeMap<String, String>,
    /// Keep the labels the target exports over the target labels (`honor_labels`), as
    /// for the operator, whose per-pipeline series carry their own `namespace`.
    pub honor_labels: bool,
}

/// A running Prometheus, stopped when dropped.
#[derive(Debug)]
pub struct PrometheusServer {
    process: ChildProcess,
    port: u16,
    _dir: TempDir,
}

/// One series of an instant vector.
#[derive(Debug, Clone, Deserialize)]
pub struct Sample {
    /// Its labels.
    pub metric: BTreeMap<String, String>,
    /// (time, value as text).
    pub value: (f64, String),
}

/// An alert as `/api/v1/alerts` shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct Alert {
    pub labels: BTreeMap<String, String>,
    /// `pending` or `firing`.
    pub state: String,
}

#[derive(Deserialize)]
struct Answer<T> {
    status: String,
    data: Option<T>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Vector {
    #[serde(rename = "resultType")]
    result_type: String,
    result: serde_json::Value,
}

#[derive(Deserialize)]
struct Alerts {
    alerts: Vec<Alert>,
}

#[derive(Deserialize)]
struct Targets {
    #[serde(rename = "activeTargets")]
    active: Vec<ScrapeTarget>,
}

/// A scrape target's state, as `/api/v1/targets` shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct ScrapeTarget {
    /// `job`, `instance` and the target's own labels.
    pub labels: BTreeMap<String, String>,
    /// `up`, `down` or `unknown`.
    pub health: String,
    /// Why the last scrape failed; empty when it did not.
    #[serde(rename = "lastError")]
    pub last_error: String,
    /// When it was last scraped (RFC 3339).
    #[serde(rename = "lastScrape")]
    pub last_scrape: String,
}

impl PrometheusServer {
    /// Starts Prometheus scraping `targets` and evaluating `rule_files`, both every
    /// second, and waits until it is ready.
    pub fn start(targets: &[Target], rule_files: &[PathBuf]) -> Result<Self> {
        let binary = find_on_path("prometheus").context(
            "prometheus is not installed (apt-get install prometheus; e2e/test.sh does)",
        )?;
        let dir = scratch_dir("logpipeline-prometheus-")?;
        let scrape_configs: Vec<serde_json::Value> = targets
            .iter()
            .map(|target| {
                serde_json::json!({
                    "job_name": target.job,
                    "honor_labels": target.honor_labels,
                    "static_configs": [{"targets": [target.address], "labels": target.labels}],
                })
            })
            .collect();
        let config = serde_json::json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": rule_files,
            "scrape_configs": scrape_configs,
        });
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, serde_yaml::to_string(&config)?)?;
        let port = free_port()?;
        let mut command = Command::new(binary);
        command
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn");
        let mut process =
            ChildProcess::spawn("prometheus", command, &dir.path().join("prometheus.log"))?;
        wait_until("prometheus is ready", Duration::from_secs(60), || {
            process.ensure_running()?;
            Ok(logpipeline_local::services::http_status(port, "/-/ready")
                .is_ok_and(|status| status == 200))
        })?;
        Ok(Self {
            process,
            port,
            _dir: dir,
        })
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Evaluates `expr` now; fails unless it is a valid instant vector query.
    pub async fn query(&self, client: &reqwest::Client, expr: &str) -> Result<Vec<Sample>> {
        let url = reqwest::Url::parse_with_params(
            &format!("{}/api/v1/query", self.url()),
            &[("query", expr)],
        )?;
        let answer: Answer<Vector> = client.get(url).send().await?.json().await?;
        let Some(vector) = answer.data.filter(|_| answer.status == "success") else {
            bail!("`{expr}`: {}", answer.error.unwrap_or_default());
        };
        match vector.result_type.as_str() {
            "vector" => Ok(serde_json::from_value(vector.result)?),
            "scalar" => {
                let value: (f64, String) = serde_json::from_value(vector.result)?;
                Ok(vec![Sample {
                    metric: BTreeMap::new(),
                    value,
                }])
            }
            other => bail!("`{expr}` gave a {other}, not an instant vector"),
        }
    }

    /// Every alert that is pending or firing.
    pub async fn alerts(&self, client: &reqwest::Client) -> Result<Vec<Alert>> {
        let answer: Answer<Alerts> = client
            .get(format!("{}/api/v1/alerts", self.url()))
            .send()
            .await?
            .json()
            .await?;
        Ok(answer.data.map(|data| data.alerts).unwrap_or_default())
    }

    /// The state of every scrape target.
    pub async fn targets(&self, client: &reqwest::Client) -> Result<Vec<ScrapeTarget>> {
        let answer: Answer<Targets> = client
            .get(format!("{}/api/v1/targets", self.url()))
            .send()
            .await?
            .json()
            .await?;
        Ok(answer.data.map(|data| data.active).unwrap_or_default())
    }

    /// What a failure message needs to tell why a query found nothing: each target's
    /// health, last scrape and last error, and the end of Prometheus' log.
    pub async fn diagnosis(&self, client: &reqwest::Client) -> String {
        let targets = match self.targets(client).await {
            Ok(targets) => targets
                .iter()
                .map(|target| {
                    format!(
                        "  {} {}: {}, last scrape {}, last error {:?}\n",
                        target.labels.get("job").map_or("?", String::as_str),
                        target.labels.get("instance").map_or("?", String::as_str),
                        target.health,
                        target.last_scrape,
                        target.last_error
                    )
                })
                .collect(),
            Err(error) => format!("  cannot list the targets: {error:#}\n"),
        };
        format!("targets:\n{targets}log:\n{}", self.log_tail())
    }

    /// The end of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.process.log_tail(30)
    }
}

/// Runs `promtool` with `args` in `dir`; returns what it printed, failing unless it
/// succeeded.
pub fn promtool(dir: &Path, args: &[&str]) -> Result<String> {
    let binary = find_on_path("promtool")
        .context("promtool is not installed (apt-get install prometheus; e2e/test.sh does)")?;
    let output = Command::new(binary).args(args).current_dir(dir).output()?;
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!("promtool {} failed:\n{printed}", args.join(" "));
    }
    Ok(printed)
}

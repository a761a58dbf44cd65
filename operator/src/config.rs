//! Command-line flags, each with an environment-variable fallback for Kubernetes.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// The LogPipeline operator.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Config {
    /// Address of the metrics and health listener (`/metrics`, `/livez`, `/readyz`).
    #[arg(
        long,
        env = "LOGPIPELINE_OPERATOR_METRICS_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub metrics_listen: SocketAddr,
    /// Log output: `text` for people, `json` for log collectors.
    #[arg(long, env = "LOGPIPELINE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Namespace to watch for LogPipelines; every namespace when unset.
    #[arg(long, env = "LOGPIPELINE_OPERATOR_WATCH_NAMESPACE")]
    pub watch_namespace: Option<String>,
    /// Name of the Lease the operator's replicas elect their leader with.
    #[arg(
        long,
        env = "LOGPIPELINE_OPERATOR_LEASE_NAME",
        default_value = "logpipeline-operator"
    )]
    pub lease_name: String,
    /// Namespace of the Lease: the operator's own namespace in a cluster.
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// This replica's identity in the Lease and in Events: the pod name in a cluster,
    /// the host name and process id when unset.
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Seconds the Lease stays valid without renewal; a new leader takes over at most
    /// this long after the old one died.
    #[arg(long, env = "LOGPIPELINE_OPERATOR_LEASE_DURATION_SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(3..=300))]
    pub lease_duration_secs: u64,
    /// Bound on each Redis request when reading a pipeline's lag, in milliseconds.
    #[arg(
        long,
        env = "LOGPIPELINE_OPERATOR_REDIS_TIMEOUT_MS",
        default_value_t = 3000
    )]
    pub redis_timeout_ms: u64,
}

/// Format of the operator's logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// The identity, defaulting to `<host>-<pid>`.
    pub fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            let host =
                std::env::var("HOSTNAME").unwrap_or_else(|_| "logpipeline-operator".to_owned());
            format!("{host}-{}", std::process::id())
        })
    }

    /// The Redis timeout as a duration.
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_with_defaults() {
        let config =
            Config::try_parse_from(["logpipeline-operator", "--identity", "op-1"]).unwrap();
        assert_eq!(config.metrics_listen.port(), 8080);
        assert_eq!(config.lease_name, "logpipeline-operator");
        assert_eq!(config.identity(), "op-1");
        assert_eq!(config.log_format, LogFormat::Text);
        assert!(
            Config::try_parse_from(["logpipeline-operator", "--lease-duration-secs", "1"]).is_err()
        );
    }
}

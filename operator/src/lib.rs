//! The LogPipeline operator: reconciles `LogPipeline` resources into the API and worker
//! workloads, and scales the workers on the Redis Stream's lag.
//!
//! Layout follows kube-rs/controller-rs: [`crd`] defines the resource, [`render`] and
//! [`scaling`] are pure functions of it, [`controller`] is the thin layer that talks to
//! the API server, [`lag`] reads Redis, [`metrics`] and [`server`] expose the operator's
//! own health, and [`run`] wires them together with leader election.

pub mod config;
pub mod controller;
pub mod crd;
pub mod crdgen;
pub mod lag;
pub mod metrics;
pub mod render;
pub mod run;
pub mod scaling;
pub mod server;
pub mod status;

pub use config::Config;

/// Everything that can go wrong in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request to the Kubernetes API server failed.
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// Reading the stream lag from Redis failed.
    #[error("Redis request failed: {0}")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer in time.
    #[error("Redis did not answer within {0:?}")]
    RedisTimeout(std::time::Duration),
    /// The Redis URL of a pipeline is not one.
    #[error("{0}")]
    RedisUrl(String),
    /// An object could not be turned into JSON.
    #[error("JSON serialization failed: {0}")]
    Json(#[from] serde_json::Error),
    /// The CRD could not be turned into YAML.
    #[error("YAML serialization failed: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// An object lacks a field the operator needs.
    #[error("object has no {0}")]
    MissingField(&'static str),
    /// Reading or writing a file or socket failed.
    #[error("I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// A metric could not be registered.
    #[error("metrics registry: {0}")]
    Metrics(#[from] prometheus::Error),
    /// Leader election through the Lease failed.
    #[error("leader election: {0}")]
    Lease(#[from] kube_lease_manager::LeaseManagerError),
    /// Another replica took the Lease while this one was leading.
    #[error("lost the leader Lease")]
    LostLeadership,
}

impl Error {
    /// Every value of [`Error::metric_label`].
    pub const METRIC_LABELS: [&'static str; 7] = [
        "kube",
        "redis",
        "serialization",
        "invalid_object",
        "io",
        "metrics",
        "lease",
    ];

    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Redis(_) | Self::RedisTimeout(_) | Self::RedisUrl(_) => "redis",
            Self::Json(_) | Self::Yaml(_) => "serialization",
            Self::MissingField(_) => "invalid_object",
            Self::Io(_) => "io",
            Self::Metrics(_) => "metrics",
            Self::Lease(_) | Self::LostLeadership => "lease",
        }
    }
}

/// The operator's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

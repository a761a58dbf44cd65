//! The `LogPipeline` custom resource (`logpipeline.io/v1alpha1`).
//!
//! The `///` docs on these types become the descriptions in the generated CRD, so
//! `kubectl explain logpipeline.spec.worker` shows them. Defaults and bounds live in the
//! schema; cross-field rules are CEL `x-kubernetes-validations`, so the API server
//! refuses an invalid spec before the operator ever sees it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod security;

pub use security::{
    API_ACCESS_LABEL, ApiKeysSecretRef, AuthSpec, METRICS_ACCESS_LABEL, NetworkPolicySpec,
    RateLimit, RateLimits,
};
use security::{auth_rule, cidrs_rule};

/// A log pipeline: the HTTP API that accepts logs into a Redis Stream, and the workers
/// that persist the stream into PostgreSQL, scaled on the consumer group's lag.
// The printer columns repeat `type_` and `json_path`, which clippy takes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "logpipeline.io",
    version = "v1alpha1",
    kind = "LogPipeline",
    plural = "logpipelines",
    shortname = "lp",
    category = "logpipeline",
    namespaced,
    status = "LogPipelineStatus",
    derive = "PartialEq",
    doc = "A log pipeline: an HTTP API that accepts logs into a Redis Stream, and workers that persist them into PostgreSQL, scaled on stream lag.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether every part of the pipeline is rolled out and healthy"
    ),
    printcolumn(
        name = "Workers",
        type_ = "integer",
        json_path = ".status.workerReplicas",
        description = "Worker replicas the operator asks for"
    ),
    printcolumn(
        name = "Lag",
        type_ = "integer",
        json_path = ".status.lag",
        description = "Stream entries not yet delivered to the consumer group"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = auth_rule())]
pub struct LogPipelineSpec {
    /// The Secret key that holds the Redis URL (for example `redis://redis:6379`).
    /// The API, the workers and the operator (to read the stream lag) use it.
    pub redis_secret_ref: SecretKeyRef,
    /// The Secret key that holds the PostgreSQL URL (`postgres://user:password@host/db`).
    pub database_secret_ref: SecretKeyRef,
    /// The Redis Stream the API writes to and the workers read from.
    #[serde(default)]
    pub stream: StreamSpec,
    /// How the pipeline uses Redis: over how many stream shards, and how durably.
    #[serde(default)]
    pub redis: RedisSpec,
    /// Who may use the API: API keys per tenant, on unless `enabled: false`. A pipeline
    /// without `auth` gets `{enabled: true}` and is refused until it names
    /// `keysSecretRef`, so running without keys is always an explicit choice.
    #[serde(default)]
    pub auth: AuthSpec,
    /// The HTTP API that accepts and serves logs.
    pub api: ApiSpec,
    /// The workers that move logs from the stream into PostgreSQL.
    pub worker: WorkerSpec,
    /// How logs are kept in PostgreSQL: time partitions and retention.
    #[serde(default)]
    pub storage: StorageSpec,
    /// Log filter of both services, in `RUST_LOG` syntax (for example `info` or
    /// `info,logpipeline_worker=debug`).
    #[serde(default = "default_log_level")]
    #[schemars(length(min = 1, max = 256))]
    pub log_level: String,
}

/// A key of a Secret in the LogPipeline's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// The Redis Stream that buffers logs between the API and the workers.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamSpec {
    /// Key of the stream.
    #[serde(default = "default_stream_name")]
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Consumer group the workers read with.
    #[serde(default = "default_stream_group")]
    #[schemars(length(min = 1, max = 256))]
    pub group: String,
    /// Most unprocessed entries the stream may hold; beyond it the API answers 503 with
    /// Retry-After instead of accepting more (one entry is one accepted request).
    #[serde(default = "default_stream_capacity")]
    #[schemars(range(min = 1, max = 100_000_000))]
    pub capacity: i64,
}

/// The HTTP API: ingest, queries, health and metrics on one port.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiSpec {
    /// Container image of the API (`logpipeline-api`).
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// When the kubelet pulls the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Fixed number of API pods; ignored when `autoscaling` is set.
    #[serde(default = "default_api_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: i32,
    /// Scale the API on CPU with a HorizontalPodAutoscaler instead of fixed replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<ApiAutoscaling>,
    /// CPU and memory requests and limits of each API container.
    #[serde(default = "default_api_resources")]
    pub resources: ResourceRequirements,
    /// Expose the API outside the cluster through an Ingress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    /// Longest time a stopping API pod drains in-flight requests after SIGTERM.
    #[serde(default = "default_shutdown_timeout_secs")]
    #[schemars(range(min = 1, max = 600))]
    pub shutdown_timeout_secs: i64,
    /// Request-rate limits per API key and per client address; none when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limits: Option<RateLimits>,
    /// Open connections each API pod accepts at once from one peer address (as the
    /// seed's nginx `limit_conn`). Behind an Ingress every connection comes from the
    /// controller's pods: keep this above their upstream connection pool, and limit
    /// connections per client at the controller.
    #[serde(default = "default_max_connections_per_address")]
    #[schemars(range(min = 1, max = 100_000))]
    pub max_connections_per_address: i32,
    /// Bytes of request bodies each API pod holds at once, beyond each body's first
    /// 64 KiB; a body that finds no room is answered 503 with Retry-After. Unset: a
    /// quarter of the pod's memory limit (or 512 MiB without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1_048_576))]
    pub body_bytes_in_flight: Option<i64>,
    /// CIDRs of proxies, such as the Ingress controller's pod range, whose
    /// `X-Forwarded-For` header the API believes for the client address (used by the
    /// per-address rate limit). Empty: the client address is the connection's
    /// peer, which behind an Ingress is the controller's pod, so all clients share one
    /// per-address limit.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 64)))]
    #[x_kube(validation = cidrs_rule())]
    pub trusted_proxies: Vec<String>,
    /// NetworkPolicies for the API and worker pods; on by default.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,
    /// Bounds of fleet-wide searches and histograms in each API pod.
    #[serde(default)]
    pub search: SearchSpec,
}

/// How much searching each API pod does at once, and for how long (docs/search.md).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SearchSpec {
    /// Most searches and histograms an API pod runs at once, each on a PostgreSQL
    /// connection of a pool of their own of this size; more are answered 429
    /// `search_busy`.
    #[serde(default = "default_search_concurrency")]
    #[schemars(range(min = 1, max = 1000))]
    pub concurrency: i32,
    /// Most searches and histograms of one tenant an API pod runs at once.
    #[serde(default = "default_search_concurrency_per_tenant")]
    #[schemars(range(min = 1, max = 1000))]
    pub concurrency_per_tenant: i32,
    /// Milliseconds a search may run in PostgreSQL, all its statements together; one
    /// that needs longer is stopped then and answered 422 `search_too_broad`.
    #[serde(default = "default_search_timeout_ms")]
    #[schemars(range(min = 1, max = 600_000))]
    pub timeout_ms: i64,
}

impl Default for SearchSpec {
    fn default() -> Self {
        Self {
            concurrency: default_search_concurrency(),
            concurrency_per_tenant: default_search_concurrency_per_tenant(),
            timeout_ms: default_search_timeout_ms(),
        }
    }
}

fn default_search_concurrency() -> i32 {
    4
}
fn default_search_concurrency_per_tenant() -> i32 {
    2
}
fn default_search_timeout_ms() -> i64 {
    5000
}

/// CPU-based autoscaling of the API (an autoscaling/v2 HorizontalPodAutoscaler).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("api.autoscaling.minReplicas must not exceed api.autoscaling.maxReplicas"))]
pub struct ApiAutoscaling {
    /// Fewest API pods.
    #[serde(default = "default_api_min_replicas")]
    #[schemars(range(min = 1, max = 100))]
    pub min_replicas: i32,
    /// Most API pods.
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,
    /// Average CPU use, in percent of the request, that the autoscaler aims for.
    #[serde(
        default = "default_cpu_target",
        rename = "targetCPUUtilizationPercentage"
    )]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: i32,
    /// Seconds the autoscaler waits, after the load drops, before it removes API pods
    /// (its scale-down stabilization window; Kubernetes' default is 300).
    #[serde(default = "default_api_scale_down_stabilization_secs")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_secs: i32,
}

/// An Ingress in front of the API Service.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    /// IngressClass that serves this Ingress; the cluster default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Host name devices send logs to.
    #[schemars(length(min = 1, max = 253))]
    pub host: String,
    /// Secret holding the TLS certificate and key for `host`; plain HTTP when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
    /// Extra annotations for the Ingress (for example body-size limits of the controller).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The workers: stream consumers that write batches into PostgreSQL.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("worker.minReplicas must not exceed worker.maxReplicas"))]
pub struct WorkerSpec {
    /// Container image of the worker (`logpipeline-worker`).
    #[schemars(length(min = 1, max = 512))]
    pub image: String,
    /// When the kubelet pulls the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,
    /// Stream entries each consumer reads at once (XREADGROUP COUNT).
    #[serde(default = "default_batch_size")]
    #[schemars(range(min = 1, max = 10_000))]
    pub batch_size: i32,
    /// How long a read waits for new entries, in milliseconds (XREADGROUP BLOCK).
    #[serde(default = "default_block_ms")]
    #[schemars(range(min = 1, max = 60_000))]
    pub block_ms: i32,
    /// Consumers per worker pod. Two keep one batch committing while the next is read;
    /// more add PostgreSQL backends that compete for the cores (docs/performance.md).
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 64))]
    pub concurrency: i32,
    /// Idle time after which entries pending on a dead consumer are claimed, in milliseconds.
    #[serde(default = "default_claim_idle_ms")]
    #[schemars(range(min = 1000, max = 3_600_000))]
    pub claim_idle_ms: i64,
    /// Deliveries after which an entry goes to the dead-letter stream.
    #[serde(default = "default_max_deliveries")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_deliveries: i32,
    /// Fewest worker pods.
    #[serde(default = "default_worker_min_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    /// Most worker pods.
    #[serde(default = "default_worker_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Backlog (lag plus pending entries) one worker pod is expected to clear; the
    /// operator runs `ceil(backlog / lagTargetPerReplica)` pods within the bounds.
    #[serde(default = "default_lag_target")]
    #[schemars(range(min = 1))]
    pub lag_target_per_replica: i64,
    /// Seconds since the last scaling change before the operator scales down.
    #[serde(default = "default_stabilization_secs")]
    #[schemars(range(min = 0, max = 3600))]
    pub scale_down_stabilization_secs: i64,
    /// How often the operator reads the stream lag, in seconds.
    #[serde(default = "default_lag_poll_secs")]
    #[schemars(range(min = 1, max = 300))]
    pub lag_poll_secs: i64,
    /// CPU and memory requests and limits of each worker container.
    #[serde(default = "default_worker_resources")]
    pub resources: ResourceRequirements,
    /// Longest time a stopping worker takes to commit and acknowledge its batch after SIGTERM.
    #[serde(default = "default_shutdown_timeout_secs")]
    #[schemars(range(min = 1, max = 600))]
    pub shutdown_timeout_secs: i64,
}

/// How logs are kept: rows of the `logs` table, partitioned by the time the API received
/// each log, that the workers move into compressed chunks once they are older than the
/// hot window, and drop whole periods of past the retention (docs/operations.md,
/// docs/storage.md).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// How long logs are kept, in hours or days (`12h`, `30d`; at least `1h`). A
    /// partition goes once its every log is older, with its share of the statistics,
    /// and logs that old are not stored. Kept forever when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,4}[hd]$"))]
    pub retention: Option<String>,
    /// Time each partition covers, `1h` to `744h` or `1d` to `31d`. A change applies to
    /// partitions made from then on.
    #[serde(default = "default_partition_interval")]
    #[schemars(regex(
        pattern = r"^(([1-9]|[1-9][0-9]|[1-6][0-9]{2}|7[0-3][0-9]|74[0-4])h|([1-9]|[12][0-9]|3[01])d)$"
    ))]
    pub partition_interval: String,
    /// A GIN index on `log_data` in every partition, for the search's `data.<path>`
    /// filters; it costs every insert. The workers build or drop it concurrently when
    /// this changes.
    #[serde(default)]
    pub log_data_index: bool,
    /// A trigram GIN index on `message` in every partition (PostgreSQL's `pg_trgm`), for
    /// fast text searches (`q`) over many logs; it costs every insert. The workers create
    /// the extension and build or drop the index concurrently when this changes.
    #[serde(default)]
    pub message_index: bool,
    /// How long a stored log stays a row before the workers move it into a compressed
    /// chunk (once its stream entry can never be delivered again), in seconds, minutes or
    /// hours (`30s`, `2m`, `1h`). Rows cost about 300 bytes a log on disk, chunks about 15;
    /// a search reads the rows of its range whole (docs/storage.md).
    #[serde(default = "default_hot_window")]
    #[schemars(regex(pattern = r"^[1-9][0-9]{0,4}[smh]$"))]
    pub hot_window: String,
    /// Most logs per chunk: larger chunks compress a little better and give searches
    /// fewer chunks to look at, smaller ones cost a device's page less to open.
    #[serde(default = "default_chunk_rows")]
    #[schemars(range(min = 64, max = 65536))]
    pub chunk_rows: i32,
}

impl Default for StorageSpec {
    fn default() -> Self {
        Self {
            retention: None,
            partition_interval: default_partition_interval(),
            log_data_index: false,
            message_index: false,
            hot_window: default_hot_window(),
            chunk_rows: default_chunk_rows(),
        }
    }
}

/// How the pipeline uses Redis: over how many stream shards, and how durably.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RedisSpec {
    /// Streams the logs are spread over, 1 to 16. One stream is one key, on one core of
    /// one Redis server; shards are keys of their own, which a Redis Cluster places on
    /// slots of their own. A device's logs stay on one shard, in order. Lowering it is
    /// safe: the workers drain the shards that go, then delete them.
    #[serde(default = "default_shards")]
    #[schemars(range(min = 1, max = 16))]
    pub shards: i32,
    /// Whether the Redis of `redisSecretRef` is a Redis Cluster, whose URL then names one
    /// or more of its nodes, comma-separated (`redis://r0:6379,redis://r1:6379`).
    #[serde(default)]
    pub cluster: bool,
    /// When the API answers 200: `primary` once the Redis primary holds the logs (its
    /// append-only file is synced every second, so a primary lost with its disk loses up
    /// to that second of answered logs); `replicated` once a replica holds them too
    /// (Redis `WAIT`; the Redis of `redisSecretRef` needs a replica, and without one every
    /// request is answered 504).
    #[serde(default)]
    pub durability: Durability,
}

impl Default for RedisSpec {
    fn default() -> Self {
        Self {
            shards: default_shards(),
            cluster: false,
            durability: Durability::default(),
        }
    }
}

fn default_shards() -> i32 {
    1
}

/// When Redis holds an accepted log durably enough to answer 200.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// The primary holds it.
    #[default]
    Primary,
    /// A replica holds it too.
    Replicated,
}

impl Durability {
    /// The name the api's `LOGPIPELINE_REDIS_DURABILITY` takes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Primary => "primary",
            Self::Replicated => "replicated",
        }
    }
}

/// Image pull policy of a container.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// Pull on every pod start.
    Always,
    /// Pull when the node does not have the image.
    IfNotPresent,
    /// Never pull; the image must be on the node.
    Never,
}

impl PullPolicy {
    /// The value Kubernetes expects in `imagePullPolicy`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// What the operator last saw and did.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LogPipelineStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing` and `Degraded`, with reasons and messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// API pods the Deployment asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_replicas: Option<i32>,
    /// API pods that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_ready_replicas: Option<i32>,
    /// Worker pods the operator asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_replicas: Option<i32>,
    /// Worker pods that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_ready_replicas: Option<i32>,
    /// Stream entries not yet delivered to the consumer group, at the last reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Entries delivered to a consumer and not yet acknowledged, at the last reading.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<i64>,
    /// Each stream shard's lag at the last reading, shard 0 first; `lag` is their sum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard_lag: Option<Vec<i64>>,
    /// When the operator last changed the number of worker pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
}

impl LogPipelineStatus {
    /// The condition of the given type, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

impl Default for StreamSpec {
    fn default() -> Self {
        Self {
            name: default_stream_name(),
            group: default_stream_group(),
            capacity: default_stream_capacity(),
        }
    }
}

fn default_partition_interval() -> String {
    "1d".into()
}
fn default_hot_window() -> String {
    "2m".into()
}
fn default_chunk_rows() -> i32 {
    2048
}
fn default_log_level() -> String {
    "info".into()
}
fn default_secret_key() -> String {
    "url".into()
}
fn default_stream_name() -> String {
    "logs:stream".into()
}
fn default_stream_group() -> String {
    "log_workers".into()
}
fn default_stream_capacity() -> i64 {
    1_000_000
}
fn default_api_replicas() -> i32 {
    2
}
fn default_api_min_replicas() -> i32 {
    2
}
fn default_cpu_target() -> i32 {
    70
}
fn default_api_scale_down_stabilization_secs() -> i32 {
    300
}
fn default_shutdown_timeout_secs() -> i64 {
    20
}
fn default_max_connections_per_address() -> i32 {
    1000
}
fn default_batch_size() -> i32 {
    100
}
fn default_block_ms() -> i32 {
    2000
}
fn default_concurrency() -> i32 {
    2
}
fn default_claim_idle_ms() -> i64 {
    30_000
}
fn default_max_deliveries() -> i32 {
    10
}
fn default_worker_min_replicas() -> i32 {
    1
}
fn default_worker_max_replicas() -> i32 {
    10
}
fn default_lag_target() -> i64 {
    10_000
}
fn default_stabilization_secs() -> i64 {
    300
}
fn default_lag_poll_secs() -> i64 {
    15
}

fn resources(cpu_request: &str, memory_request: &str, memory_limit: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu_request.to_owned())),
            ("memory".to_owned(), Quantity(memory_request.to_owned())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity(memory_limit.to_owned()),
        )])),
        ..ResourceRequirements::default()
    }
}

fn default_api_resources() -> ResourceRequirements {
    resources("250m", "128Mi", "512Mi")
}

fn default_worker_resources() -> ResourceRequirements {
    resources("250m", "128Mi", "512Mi")
}

#[cfg(test)]
pub(crate) mod fixtures {
    //! Builders for test pipelines: `LogPipeline::test().with_autoscaling(2, 10)`.

    use super::*;

    impl LogPipeline {
        /// A valid pipeline named `logs` in namespace `default`, with defaults everywhere
        /// but the API keys Secret (`logs-api-keys`), which a valid pipeline must name.
        pub fn test() -> Self {
            let spec: LogPipelineSpec = serde_json::from_value(serde_json::json!({
                "redisSecretRef": {"name": "redis"},
                "databaseSecretRef": {"name": "postgres"},
                "auth": {"keysSecretRef": {"name": "logs-api-keys"}},
                "api": {"image": "logpipeline-api:1.0.0"},
                "worker": {"image": "logpipeline-worker:1.0.0"},
            }))
            .unwrap();
            let mut lp = LogPipeline::new("logs", spec);
            lp.metadata.namespace = Some("default".into());
            lp.metadata.uid = Some("8f6c1d2e-0000-4000-8000-000000000001".into());
            lp.metadata.generation = Some(1);
            lp
        }

        pub fn with_autoscaling(mut self, min: i32, max: i32) -> Self {
            self.spec.api.autoscaling = Some(ApiAutoscaling {
                min_replicas: min,
                max_replicas: max,
                target_cpu_utilization_percentage: 70,
                scale_down_stabilization_secs: 300,
            });
            self
        }

        pub fn with_ingress(mut self, host: &str, tls_secret: Option<&str>) -> Self {
            self.spec.api.ingress = Some(IngressSpec {
                class_name: Some("nginx".into()),
                host: host.into(),
                tls_secret_name: tls_secret.map(Into::into),
                annotations: BTreeMap::new(),
            });
            self
        }

        pub fn without_auth(mut self) -> Self {
            self.spec.auth = AuthSpec {
                enabled: false,
                keys_secret_ref: None,
            };
            self
        }

        pub fn with_rate_limits(
            mut self,
            per_key: Option<RateLimit>,
            per_address: Option<RateLimit>,
        ) -> Self {
            self.spec.api.rate_limits = Some(RateLimits {
                per_key,
                per_address,
            });
            self
        }

        pub fn with_trusted_proxies(mut self, cidrs: &[&str]) -> Self {
            self.spec.api.trusted_proxies = cidrs.iter().map(|c| (*c).to_owned()).collect();
            self
        }

        pub fn without_network_policy(mut self) -> Self {
            self.spec.api.network_policy.enabled = false;
            self
        }

        pub fn with_worker_bounds(mut self, min: i32, max: i32, lag_target: i64) -> Self {
            self.spec.worker.min_replicas = min;
            self.spec.worker.max_replicas = max;
            self.spec.worker.lag_target_per_replica = lag_target;
            self
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;

    #[test]
    fn defaults_fill_a_minimal_spec() {
        let lp = LogPipeline::test();
        assert_eq!(lp.spec.stream.name, "logs:stream");
        assert_eq!(lp.spec.stream.group, "log_workers");
        assert_eq!(lp.spec.redis_secret_ref.key, "url");
        assert_eq!(lp.spec.worker.batch_size, 100);
        assert_eq!(lp.spec.worker.concurrency, 2);
        assert_eq!(lp.spec.api.replicas, 2);
        assert_eq!(lp.spec.log_level, "info");
        assert_eq!(lp.spec.redis.durability, Durability::Primary);
        assert!(lp.spec.auth.enabled);
        assert_eq!(
            lp.spec
                .auth
                .keys_secret_ref
                .as_ref()
                .map(|r| r.key.as_str()),
            Some("keys.yaml")
        );
        assert_eq!(lp.spec.api.rate_limits, None);
        assert_eq!(lp.spec.api.max_connections_per_address, 1000);
        assert!(lp.spec.api.trusted_proxies.is_empty());
        let policy = &lp.spec.api.network_policy;
        assert!(policy.enabled);
        assert_eq!(policy.ingress_from.len(), 2);
        assert_eq!(policy.metrics_from.len(), 1);
    }

    /// The smallest spec a user can write, with the fields of `more` added.
    fn minimal_spec(more: serde_json::Value) -> LogPipelineSpec {
        let mut spec = serde_json::json!({
            "redisSecretRef": {"name": "redis"},
            "databaseSecretRef": {"name": "postgres"},
            "api": {"image": "api"},
            "worker": {"image": "worker"},
        });
        if let (Some(spec), Some(more)) = (spec.as_object_mut(), more.as_object()) {
            spec.extend(more.clone());
        }
        serde_json::from_value(spec).unwrap()
    }

    #[test]
    fn a_spec_without_auth_means_auth_on_without_keys() {
        let spec = minimal_spec(serde_json::json!({}));
        assert_eq!(
            spec.auth,
            AuthSpec {
                enabled: true,
                keys_secret_ref: None
            },
            "what the CEL rule refuses: opting out must be explicit"
        );
    }

    #[test]
    fn durability_is_spelled_as_the_api_takes_it() {
        let spec = minimal_spec(serde_json::json!({"redis": {"durability": "replicated"}}));
        assert_eq!(spec.redis.durability, Durability::Replicated);
        assert_eq!(spec.redis.durability.as_str(), "replicated");
        let schema = &spec_schema()["properties"]["redis"]["properties"]["durability"];
        assert_eq!(schema["enum"], serde_json::json!(["primary", "replicated"]));
        assert_eq!(schema["default"], "primary");
    }

    /// The schema of `spec`, as the API server gets it.
    fn spec_schema() -> serde_json::Value {
        let crd = serde_json::to_value(LogPipeline::crd()).unwrap();
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
    }

    #[test]
    fn auth_is_on_by_default_and_its_rule_lives_on_the_spec() {
        let spec = spec_schema();
        let auth = &spec["properties"]["auth"];
        assert_eq!(auth["default"], serde_json::json!({"enabled": true}));
        assert_eq!(auth["properties"]["enabled"]["default"], true);
        assert_eq!(
            auth["properties"]["keysSecretRef"]["properties"]["key"]["default"],
            "keys.yaml"
        );
        // The API server checks schema defaults against the CEL rules of the node that
        // holds them: a rule on `auth` itself would refuse its own default, and the CRD.
        assert!(auth.get("x-kubernetes-validations").is_none());
        let rules = spec["x-kubernetes-validations"].as_array().unwrap();
        let rule = rules
            .iter()
            .find(|r| r["fieldPath"] == ".auth")
            .expect("a rule on spec for auth");
        assert!(
            rule["message"]
                .as_str()
                .unwrap()
                .contains("auth.keysSecretRef is required")
        );
        assert_eq!(rule["reason"], "FieldValueRequired");
    }

    #[test]
    fn api_limits_have_bounds_defaults_and_a_cidr_rule() {
        let api = &spec_schema()["properties"]["api"]["properties"];
        let per_key = &api["rateLimits"]["properties"]["perKey"]["properties"];
        // Bounds come out of schemars as numbers with a fraction (`1.0`).
        let bounds =
            |schema: &serde_json::Value| (schema["minimum"].as_f64(), schema["maximum"].as_f64());
        for field in ["requestsPerSecond", "burst"] {
            assert_eq!(
                bounds(&per_key[field]),
                (Some(1.0), Some(1_000_000.0)),
                "{field}"
            );
        }
        let connections = &api["maxConnectionsPerAddress"];
        assert_eq!(connections["default"], 1000);
        assert_eq!(bounds(connections), (Some(1.0), Some(100_000.0)));
        let proxies = &api["trustedProxies"];
        assert_eq!(proxies["items"]["maxLength"], 64);
        assert_eq!(
            proxies["x-kubernetes-validations"][0]["rule"],
            "self.all(c, isCIDR(c))"
        );
        let policy = &api["networkPolicy"];
        assert_eq!(policy["default"]["enabled"], true);
        assert_eq!(
            policy["default"]["ingressFrom"],
            serde_json::json!([
                {"podSelector": {}},
                {"namespaceSelector": {"matchLabels": {"logpipeline.io/api-access": "true"}}},
            ])
        );
        assert_eq!(
            policy["properties"]["metricsFrom"]["default"],
            serde_json::json!([
                {"namespaceSelector": {"matchLabels": {"logpipeline.io/metrics-access": "true"}}},
            ])
        );
        assert!(
            policy["properties"]["ingressFrom"]["x-kubernetes-validations"][0]["message"]
                .as_str()
                .unwrap()
                .contains("ipBlock alone")
        );
    }

    #[test]
    fn a_rate_limit_without_burst_bursts_one_second() {
        let limit = RateLimit {
            requests_per_second: 50,
            burst: None,
        };
        assert_eq!(limit.effective_burst(), 50);
        let limit = RateLimit {
            burst: Some(200),
            ..limit
        };
        assert_eq!(limit.effective_burst(), 200);
    }

    #[test]
    fn crd_has_names_columns_and_cel_rules() {
        let crd = LogPipeline::crd();
        assert_eq!(
            crd.metadata.name.as_deref(),
            Some("logpipelines.logpipeline.io")
        );
        assert_eq!(crd.spec.names.short_names, Some(vec!["lp".to_owned()]));
        assert_eq!(crd.spec.scope, "Namespaced");
        let version = &crd.spec.versions[0];
        let columns: Vec<_> = version
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(columns, ["Ready", "Workers", "Lag", "Age"]);
        assert!(
            version
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        let yaml = serde_yaml::to_string(&crd).unwrap();
        assert!(yaml.contains("worker.minReplicas must not exceed worker.maxReplicas"));
        assert!(yaml.contains("api.autoscaling.minReplicas must not exceed"));
    }

    #[test]
    fn every_schema_property_has_a_description() {
        fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
            let Some(props) = schema.get("properties").and_then(|p| p.as_object()) else {
                if let Some(items) = schema.get("items") {
                    walk(path, items, missing);
                }
                return;
            };
            for (name, prop) in props {
                let here = format!("{path}.{name}");
                if prop.get("description").is_none()
                    && !["apiVersion", "kind", "metadata"].contains(&here.trim_start_matches('.'))
                {
                    missing.push(here.clone());
                }
                walk(&here, prop, missing);
            }
        }
        let crd = serde_json::to_value(LogPipeline::crd()).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut missing = Vec::new();
        walk("", schema, &mut missing);
        assert!(
            missing.is_empty(),
            "fields without a description: {missing:?}"
        );
    }
}

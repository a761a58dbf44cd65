//! Who may reach a pipeline and how much: API keys, rate and connection limits, trusted
//! proxies and NetworkPolicies. Part of [`crate::crd`]; the docs here become
//! `kubectl explain` text like the rest of the resource.

use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Namespace label that admits a namespace's pods to the API's HTTP port by default.
pub const API_ACCESS_LABEL: &str = "logpipeline.io/api-access";
/// Namespace label that admits a namespace's pods to the metrics ports by default.
pub const METRICS_ACCESS_LABEL: &str = "logpipeline.io/metrics-access";

/// Authentication of the API's clients.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Require an API key on every request (ingest with the `write` scope, queries and
    /// stats with `read`); each key belongs to a tenant. On by default, and then
    /// `keysSecretRef` is required. `false` turns authentication off: anyone who can
    /// reach the API writes and reads every log, all as tenant `default`.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The Secret key holding the tenants and the SHA-256 of their API keys, a YAML
    /// document: `tenants: {<tenant>: {keys: [{name, sha256, scopes: [write, read]}]}}`
    /// (`logpipeline-api keys generate --tenant <tenant> --name <name> --scope write`
    /// prints a new key and its entry). The whole Secret is mounted, read-only, at
    /// `/etc/logpipeline/keys` in the API pods, which re-read the file when it changes:
    /// adding, rotating or revoking keys in the Secret needs no restart (the kubelet
    /// updates the mount within about a minute). Required while `enabled` is true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_secret_ref: Option<ApiKeysSecretRef>,
}

impl Default for AuthSpec {
    fn default() -> Self {
        Self {
            enabled: true,
            keys_secret_ref: None,
        }
    }
}

/// The key of a Secret, in the LogPipeline's namespace, that holds the API keys file.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeysSecretRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key within the Secret; also the file's name under `/etc/logpipeline/keys`.
    #[serde(default = "default_keys_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// Request-rate limits of the API, each a token bucket. Unset limits do not apply.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimits {
    /// Requests each API key may make (only with `auth.enabled`); no limit when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_key: Option<RateLimit>,
    /// Requests each client address may make; no limit when unset. Behind a proxy the
    /// address is the proxy's unless the proxy is in `api.trustedProxies`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_address: Option<RateLimit>,
}

/// A sustained rate and the burst above it; beyond them the API answers 429.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    /// Requests per second, sustained.
    #[schemars(range(min = 1, max = 1_000_000))]
    pub requests_per_second: i32,
    /// Requests that may arrive at once before the rate applies (the bucket's size);
    /// `requestsPerSecond` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub burst: Option<i32>,
}

impl RateLimit {
    /// The burst the API gets: the one set, or one second's worth of requests.
    pub fn effective_burst(&self) -> i32 {
        self.burst.unwrap_or(self.requests_per_second)
    }
}

/// NetworkPolicies admitting only the listed peers to the pipeline's pods. The
/// kubelet's probes are never blocked by NetworkPolicies; egress stays open.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Create the NetworkPolicies `<name>-api` and `<name>-worker`; when false the
    /// operator deletes them and the pods accept connections from anywhere (unless other
    /// policies of the namespace say otherwise). Needs a network plugin that enforces
    /// NetworkPolicies.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Who may connect to the API's HTTP port (8080, named `http`: ingest, queries,
    /// health and `/metrics`). Defaults to every pod of the pipeline's namespace and every
    /// pod of namespaces labelled `logpipeline.io/api-access: "true"`: label the
    /// Ingress controller's namespace and those of in-cluster senders. A list set here
    /// replaces the default; an empty list admits no one.
    #[serde(default = "default_ingress_from")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = peers_rule("api.networkPolicy.ingressFrom"))]
    pub ingress_from: Vec<NetworkPolicyPeer>,
    /// Who may scrape metrics: the API's HTTP port (where `/metrics` is, so these peers
    /// reach the whole API, whose ingest and queries still need a key) and the worker's
    /// metrics port (9090, named `metrics`). Defaults to every pod of namespaces
    /// labelled `logpipeline.io/metrics-access: "true"`: label Prometheus' namespace. A
    /// list set here replaces the default; an empty list admits no one.
    #[serde(default = "default_metrics_from")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = peers_rule("api.networkPolicy.metricsFrom"))]
    pub metrics_from: Vec<NetworkPolicyPeer>,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        Self {
            enabled: true,
            ingress_from: default_ingress_from(),
            metrics_from: default_metrics_from(),
        }
    }
}

/// Every peer selects something: pods, namespaces, or (alone) an address block.
fn peers_rule(field: &str) -> kube::core::Rule {
    kube::core::Rule::new(
        "self.all(p, has(p.ipBlock) ? !has(p.podSelector) && !has(p.namespaceSelector) : has(p.podSelector) || has(p.namespaceSelector))",
    )
    .message(
        format!("each peer of {field} needs podSelector and/or namespaceSelector, or ipBlock alone")
            .as_str(),
    )
}

/// The CEL rule on the spec that makes authentication opt-out.
pub(crate) fn auth_rule() -> kube::core::Rule {
    kube::core::Rule::new(
        "has(self.auth) && (has(self.auth.keysSecretRef) || (has(self.auth.enabled) && !self.auth.enabled))",
    )
    .message(
        "auth.keysSecretRef is required: API keys are on unless disabled; name the Secret that lists the tenants' keys, or set auth: {enabled: false} to accept requests without a key",
    )
    .field_path(".auth")
    .reason(kube::core::Reason::FieldValueRequired)
}

/// The CEL rule on `api.trustedProxies`.
pub(crate) fn cidrs_rule() -> kube::core::Rule {
    kube::core::Rule::new("self.all(c, isCIDR(c))")
        .message("api.trustedProxies holds CIDRs, such as 10.244.0.0/16 or fd00::/64")
}

fn default_true() -> bool {
    true
}

fn default_keys_key() -> String {
    "keys.yaml".into()
}

fn namespaces_labelled(label: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(label.to_owned(), "true".to_owned())])),
            ..LabelSelector::default()
        }),
        ..NetworkPolicyPeer::default()
    }
}

fn default_ingress_from() -> Vec<NetworkPolicyPeer> {
    vec![
        // Every pod of the policy's own namespace.
        NetworkPolicyPeer {
            pod_selector: Some(LabelSelector::default()),
            ..NetworkPolicyPeer::default()
        },
        namespaces_labelled(API_ACCESS_LABEL),
    ]
}

fn default_metrics_from() -> Vec<NetworkPolicyPeer> {
    vec![namespaces_labelled(METRICS_ACCESS_LABEL)]
}

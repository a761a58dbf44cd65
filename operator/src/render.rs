//! The objects a `LogPipeline` wants, as pure functions of its spec.
//!
//! Nothing here talks to the API server: the controller applies what [`render`]
//! returns with server-side apply, so every field set here is owned by the operator and
//! every field left out is left to others (the HPA's replicas, Deployment status).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::autoscaling::v2::{
    CrossVersionObjectReference, HPAScalingRules, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerBehavior, HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
    ResourceMetricSource,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EnvFromSource, EnvVar,
    EnvVarSource, HTTPGetAction, Lifecycle, LifecycleHandler, ObjectFieldSelector,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretKeySelector, SecurityContext, Service, ServicePort, ServiceSpec, SleepAction,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, NetworkPolicy, ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::crd::{LogPipeline, PullPolicy, SecretKeyRef};
use crate::{Error, Result};

mod security;

pub use security::API_KEYS_DIR;

/// The field manager of every server-side apply, and `app.kubernetes.io/managed-by`.
pub const MANAGER: &str = "logpipeline-operator";
/// Pod-template annotation holding a digest of the settings: a change rolls the pods.
pub const SETTINGS_CHECKSUM: &str = "logpipeline.io/settings-checksum";
/// Worker-Deployment annotation holding when the operator last changed its replicas,
/// written together with the replicas so the scaling window survives any status loss.
pub const LAST_SCALE_TIME: &str = "logpipeline.io/last-scale-time";
/// Port of the API's HTTP listener (ingest, queries, health, metrics).
pub const API_PORT: i32 = 8080;
/// The port the api serves gRPC on, in its pods and its Service: system B's 50051.
pub const API_GRPC_PORT: i32 = 50051;
/// Port of the worker's metrics and health listener.
pub const WORKER_METRICS_PORT: i32 = 9090;
/// Port of the API Service.
pub const SERVICE_PORT: i32 = 80;
/// User and group the containers run as (the `nonroot` user of LogPipeline's images).
const NON_ROOT_ID: i64 = 65532;
/// Seconds a stopping API pod keeps serving so endpoints drop it before SIGTERM.
const API_PRE_STOP_SECS: i64 = 10;
/// Slack between the services' drain bound and the kubelet's SIGKILL.
const GRACE_SLACK_SECS: i64 = 10;

/// The two workloads of a pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    Api,
    Worker,
}

impl Component {
    fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Worker => "worker",
        }
    }
}

/// Names of a pipeline's child objects.
pub fn settings_name(pipeline: &str) -> String {
    format!("{pipeline}-settings")
}

/// Name of the Deployment, Service, HPA, Ingress, PDB and NetworkPolicy of a component.
pub fn component_name(pipeline: &str, component: Component) -> String {
    format!("{pipeline}-{}", component.as_str())
}

/// Everything a pipeline consists of. `None` marks an optional object that must not exist.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    pub settings: ConfigMap,
    pub api_deployment: Deployment,
    pub api_service: Service,
    pub api_autoscaler: Option<HorizontalPodAutoscaler>,
    pub api_ingress: Option<Ingress>,
    pub api_disruption_budget: PodDisruptionBudget,
    pub api_network_policy: Option<NetworkPolicy>,
    pub worker_deployment: Deployment,
    pub worker_disruption_budget: PodDisruptionBudget,
    pub worker_network_policy: Option<NetworkPolicy>,
}

/// Renders the child objects of `lp`, with `worker_replicas` worker pods last changed
/// at `scaled_at`.
pub fn render(
    lp: &LogPipeline,
    worker_replicas: i32,
    scaled_at: Option<Timestamp>,
) -> Result<Children> {
    let ctx = RenderContext::new(lp)?;
    let settings = settings(lp);
    let checksum = checksum(&settings);
    let (api_network_policy, worker_network_policy) = security::network_policies(lp, &ctx).unzip();
    Ok(Children {
        settings: ConfigMap {
            metadata: ctx.meta(settings_name(&ctx.name), "settings"),
            data: Some(settings),
            ..ConfigMap::default()
        },
        api_deployment: api_deployment(lp, &ctx, &checksum),
        api_service: api_service(&ctx),
        api_autoscaler: api_autoscaler(lp, &ctx),
        api_ingress: api_ingress(lp, &ctx),
        api_disruption_budget: disruption_budget(&ctx, Component::Api),
        api_network_policy,
        worker_deployment: {
            let mut deployment = worker_deployment(lp, &ctx, &checksum, worker_replicas);
            if let Some(at) = scaled_at {
                deployment.metadata.annotations = Some(BTreeMap::from([(
                    LAST_SCALE_TIME.to_owned(),
                    at.to_string(),
                )]));
            }
            deployment
        },
        worker_disruption_budget: disruption_budget(&ctx, Component::Worker),
        worker_network_policy,
    })
}

/// The non-secret settings both services read (as environment variables).
pub fn settings(lp: &LogPipeline) -> BTreeMap<String, String> {
    let s = &lp.spec;
    [
        ("LOGPIPELINE_STREAM", s.stream.name.clone()),
        ("LOGPIPELINE_GROUP", s.stream.group.clone()),
        ("LOGPIPELINE_LOG_FORMAT", "json".to_owned()),
        ("RUST_LOG", s.log_level.clone()),
        ("LOGPIPELINE_LISTEN", format!("0.0.0.0:{API_PORT}")),
        (
            "LOGPIPELINE_GRPC_LISTEN",
            format!("0.0.0.0:{API_GRPC_PORT}"),
        ),
        ("LOGPIPELINE_STREAM_CAPACITY", s.stream.capacity.to_string()),
        ("LOGPIPELINE_STREAM_SHARDS", s.redis.shards.to_string()),
        ("LOGPIPELINE_REDIS_CLUSTER", s.redis.cluster.to_string()),
        (
            "LOGPIPELINE_REDIS_DURABILITY",
            s.redis.durability.as_str().to_owned(),
        ),
        (
            "LOGPIPELINE_METRICS_LISTEN",
            format!("0.0.0.0:{WORKER_METRICS_PORT}"),
        ),
        ("LOGPIPELINE_BATCH_SIZE", s.worker.batch_size.to_string()),
        ("LOGPIPELINE_BLOCK_MS", s.worker.block_ms.to_string()),
        ("LOGPIPELINE_CONCURRENCY", s.worker.concurrency.to_string()),
        (
            "LOGPIPELINE_CLAIM_IDLE_MS",
            s.worker.claim_idle_ms.to_string(),
        ),
        (
            "LOGPIPELINE_MAX_DELIVERIES",
            s.worker.max_deliveries.to_string(),
        ),
        (
            "LOGPIPELINE_PARTITION_INTERVAL",
            s.storage.partition_interval.clone(),
        ),
        (
            "LOGPIPELINE_LOG_DATA_INDEX",
            s.storage.log_data_index.to_string(),
        ),
        (
            "LOGPIPELINE_MESSAGE_INDEX",
            s.storage.message_index.to_string(),
        ),
        ("LOGPIPELINE_HOT_WINDOW", s.storage.hot_window.clone()),
        ("LOGPIPELINE_CHUNK_ROWS", s.storage.chunk_rows.to_string()),
    ]
    .into_iter()
    .chain(
        s.storage
            .retention
            .clone()
            .map(|retention| ("LOGPIPELINE_RETENTION", retention)),
    )
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Hex SHA-256 of the settings, stable across releases (a `BTreeMap` iterates in order).
fn checksum(settings: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in settings {
        hasher.update(key.as_bytes());
        hasher.update([0]);
        hasher.update(value.as_bytes());
        hasher.update([0]);
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What every child shares: namespace, owner reference, labels.
struct RenderContext {
    name: String,
    namespace: String,
    owner: OwnerReference,
}

impl RenderContext {
    fn new(lp: &LogPipeline) -> Result<Self> {
        let namespace = lp
            .namespace()
            .ok_or(Error::MissingField("metadata.namespace"))?;
        let owner = lp
            .controller_owner_ref(&())
            .ok_or(Error::MissingField("metadata.uid"))?;
        Ok(Self {
            name: lp.name_any(),
            namespace,
            owner,
        })
    }

    fn selector(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                "app.kubernetes.io/name".to_owned(),
                "logpipeline".to_owned(),
            ),
            ("app.kubernetes.io/instance".to_owned(), self.name.clone()),
            (
                "app.kubernetes.io/component".to_owned(),
                component.to_owned(),
            ),
        ])
    }

    fn labels(&self, component: &str) -> BTreeMap<String, String> {
        let mut labels = self.selector(component);
        labels.insert(
            "app.kubernetes.io/part-of".to_owned(),
            "logpipeline".to_owned(),
        );
        labels.insert(
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGER.to_owned(),
        );
        labels
    }

    fn meta(&self, name: String, component: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name),
            namespace: Some(self.namespace.clone()),
            labels: Some(self.labels(component)),
            owner_references: Some(vec![self.owner.clone()]),
            ..ObjectMeta::default()
        }
    }
}

fn secret_env(name: &str, secret: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: None,
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn plain_env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..EnvVar::default()
    }
}

fn http_probe(path: &str, port: &str, period_secs: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(port.to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period_secs),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Probe::default()
    }
}

/// The container settings shared by both services: image, settings, secrets, hardening.
struct ContainerInput<'a> {
    name: &'static str,
    image: &'a str,
    pull_policy: Option<PullPolicy>,
    resources: &'a ResourceRequirements,
    port_name: &'static str,
    port: i32,
    extra_env: Vec<EnvVar>,
}

fn container(lp: &LogPipeline, input: ContainerInput<'_>) -> Container {
    let mut env = vec![
        secret_env("REDIS_URL", &lp.spec.redis_secret_ref),
        secret_env("DATABASE_URL", &lp.spec.database_secret_ref),
    ];
    env.extend(input.extra_env);
    Container {
        name: input.name.to_owned(),
        image: Some(input.image.to_owned()),
        image_pull_policy: input.pull_policy.map(|p| p.as_str().to_owned()),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: settings_name(&lp.name_any()),
                optional: None,
            }),
            ..EnvFromSource::default()
        }]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some(input.port_name.to_owned()),
            container_port: input.port,
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        liveness_probe: Some(http_probe("/livez", input.port_name, 10, 3)),
        readiness_probe: Some(http_probe("/readyz", input.port_name, 5, 2)),
        resources: Some(input.resources.clone()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    }
}

fn pod_template(
    ctx: &RenderContext,
    component: Component,
    checksum: &str,
    metrics_port: i32,
    grace_secs: i64,
    container: Container,
) -> PodTemplateSpec {
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(ctx.labels(component.as_str())),
            annotations: Some(BTreeMap::from([
                ("prometheus.io/scrape".to_owned(), "true".to_owned()),
                ("prometheus.io/port".to_owned(), metrics_port.to_string()),
                ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
                (SETTINGS_CHECKSUM.to_owned(), checksum.to_owned()),
            ])),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container],
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            termination_grace_period_seconds: Some(grace_secs),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(NON_ROOT_ID),
                run_as_group: Some(NON_ROOT_ID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_owned(),
                    localhost_profile: None,
                }),
                ..PodSecurityContext::default()
            }),
            ..PodSpec::default()
        }),
    }
}

fn deployment(
    ctx: &RenderContext,
    component: Component,
    replicas: Option<i32>,
    template: PodTemplateSpec,
) -> Deployment {
    Deployment {
        metadata: ctx.meta(component_name(&ctx.name, component), component.as_str()),
        spec: Some(DeploymentSpec {
            replicas,
            selector: LabelSelector {
                match_labels: Some(ctx.selector(component.as_str())),
                ..LabelSelector::default()
            },
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            revision_history_limit: Some(5),
            template,
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

fn api_deployment(lp: &LogPipeline, ctx: &RenderContext, checksum: &str) -> Deployment {
    let api = &lp.spec.api;
    let mut container = container(
        lp,
        ContainerInput {
            name: "api",
            image: &api.image,
            pull_policy: api.image_pull_policy,
            resources: &api.resources,
            port_name: "http",
            port: API_PORT,
            extra_env: [
                (
                    "LOGPIPELINE_SHUTDOWN_TIMEOUT_SECS",
                    api.shutdown_timeout_secs.to_string(),
                ),
                (
                    "LOGPIPELINE_SEARCH_CONCURRENCY",
                    api.search.concurrency.to_string(),
                ),
                (
                    "LOGPIPELINE_SEARCH_CONCURRENCY_PER_TENANT",
                    api.search.concurrency_per_tenant.to_string(),
                ),
                (
                    "LOGPIPELINE_SEARCH_TIMEOUT_MS",
                    api.search.timeout_ms.to_string(),
                ),
            ]
            .into_iter()
            .map(|(name, value)| plain_env(name, value))
            .chain(security::api_env(lp))
            .collect(),
        },
    );
    container.ports.get_or_insert_default().push(ContainerPort {
        name: Some("grpc".to_owned()),
        container_port: API_GRPC_PORT,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    });
    let keys = security::api_keys_volume(lp);
    // Keep serving a few seconds after the pod is marked terminating, so the Service
    // stops routing to it before SIGTERM starts the drain.
    let container = Container {
        volume_mounts: keys.as_ref().map(|(_, mount)| vec![mount.clone()]),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: API_PRE_STOP_SECS,
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        ..container
    };
    let grace = API_PRE_STOP_SECS + api.shutdown_timeout_secs + GRACE_SLACK_SECS;
    let mut template = pod_template(ctx, Component::Api, checksum, API_PORT, grace, container);
    if let (Some(pod), Some((volume, _))) = (template.spec.as_mut(), keys) {
        pod.volumes = Some(vec![volume]);
    }
    // With autoscaling the HPA owns the replicas: leave the field out of the apply.
    let replicas = api.autoscaling.is_none().then_some(api.replicas);
    deployment(ctx, Component::Api, replicas, template)
}

fn worker_deployment(
    lp: &LogPipeline,
    ctx: &RenderContext,
    checksum: &str,
    replicas: i32,
) -> Deployment {
    let worker = &lp.spec.worker;
    let consumer_name = EnvVar {
        name: "LOGPIPELINE_CONSUMER_NAME".to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: None,
                field_path: "metadata.name".to_owned(),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    let container = container(
        lp,
        ContainerInput {
            name: "worker",
            image: &worker.image,
            pull_policy: worker.image_pull_policy,
            resources: &worker.resources,
            port_name: "metrics",
            port: WORKER_METRICS_PORT,
            extra_env: vec![
                consumer_name,
                plain_env(
                    "LOGPIPELINE_SHUTDOWN_TIMEOUT_SECS",
                    worker.shutdown_timeout_secs.to_string(),
                ),
            ],
        },
    );
    let grace = worker.shutdown_timeout_secs + GRACE_SLACK_SECS;
    let template = pod_template(
        ctx,
        Component::Worker,
        checksum,
        WORKER_METRICS_PORT,
        grace,
        container,
    );
    deployment(ctx, Component::Worker, Some(replicas), template)
}

fn api_service(ctx: &RenderContext) -> Service {
    Service {
        metadata: ctx.meta(component_name(&ctx.name, Component::Api), "api"),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(ctx.selector("api")),
            ports: Some(vec![
                ServicePort {
                    name: Some("http".to_owned()),
                    port: SERVICE_PORT,
                    target_port: Some(IntOrString::String("http".to_owned())),
                    protocol: Some("TCP".to_owned()),
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some("grpc".to_owned()),
                    port: API_GRPC_PORT,
                    target_port: Some(IntOrString::String("grpc".to_owned())),
                    protocol: Some("TCP".to_owned()),
                    app_protocol: Some("kubernetes.io/h2c".to_owned()),
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fn api_autoscaler(lp: &LogPipeline, ctx: &RenderContext) -> Option<HorizontalPodAutoscaler> {
    let autoscaling = lp.spec.api.autoscaling.as_ref()?;
    let name = component_name(&ctx.name, Component::Api);
    Some(HorizontalPodAutoscaler {
        metadata: ctx.meta(name.clone(), "api"),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some("apps/v1".to_owned()),
                kind: "Deployment".to_owned(),
                name,
            },
            min_replicas: Some(autoscaling.min_replicas),
            max_replicas: autoscaling.max_replicas,
            metrics: Some(vec![MetricSpec {
                type_: "Resource".to_owned(),
                resource: Some(ResourceMetricSource {
                    name: "cpu".to_owned(),
                    target: MetricTarget {
                        type_: "Utilization".to_owned(),
                        average_utilization: Some(autoscaling.target_cpu_utilization_percentage),
                        ..MetricTarget::default()
                    },
                }),
                ..MetricSpec::default()
            }]),
            behavior: Some(HorizontalPodAutoscalerBehavior {
                scale_down: Some(HPAScalingRules {
                    stabilization_window_seconds: Some(autoscaling.scale_down_stabilization_secs),
                    ..HPAScalingRules::default()
                }),
                ..HorizontalPodAutoscalerBehavior::default()
            }),
        }),
        status: None,
    })
}

fn api_ingress(lp: &LogPipeline, ctx: &RenderContext) -> Option<Ingress> {
    let ingress = lp.spec.api.ingress.as_ref()?;
    let mut metadata = ctx.meta(component_name(&ctx.name, Component::Api), "api");
    if !ingress.annotations.is_empty() {
        metadata.annotations = Some(ingress.annotations.clone());
    }
    Some(Ingress {
        metadata,
        spec: Some(IngressSpec {
            ingress_class_name: ingress.class_name.clone(),
            rules: Some(vec![IngressRule {
                host: Some(ingress.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".to_owned()),
                        path_type: "Prefix".to_owned(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: component_name(&ctx.name, Component::Api),
                                port: Some(ServiceBackendPort {
                                    name: Some("http".to_owned()),
                                    number: None,
                                }),
                            }),
                            ..IngressBackend::default()
                        },
                    }],
                }),
            }]),
            tls: ingress.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![ingress.host.clone()]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            ..IngressSpec::default()
        }),
        status: None,
    })
}

fn disruption_budget(ctx: &RenderContext, component: Component) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: ctx.meta(component_name(&ctx.name, component), component.as_str()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(ctx.selector(component.as_str())),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

/// Sets `apiVersion` and `kind`, which server-side apply needs and typed objects leave out.
pub fn with_type_meta<K>(object: &K) -> Result<serde_json::Value>
where
    K: Resource<DynamicType = ()> + serde::Serialize,
{
    let mut value = serde_json::to_value(object)?;
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".to_owned(), K::api_version(&()).into());
        map.insert("kind".to_owned(), K::kind(&()).into());
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container_of(d: &Deployment) -> &Container {
        &d.spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .containers[0]
    }

    fn env_of<'a>(c: &'a Container, name: &str) -> &'a EnvVar {
        c.env
            .as_ref()
            .unwrap()
            .iter()
            .find(|e| e.name == name)
            .unwrap()
    }

    fn template_annotation<'a>(d: &'a Deployment, key: &str) -> &'a str {
        let meta = d.spec.as_ref().unwrap().template.metadata.as_ref().unwrap();
        meta.annotations.as_ref().unwrap()[key].as_str()
    }

    #[test]
    fn renders_the_required_children_with_owner_and_labels() {
        let children = render(&LogPipeline::test(), 3, None).unwrap();
        assert!(children.api_autoscaler.is_none());
        assert!(children.api_ingress.is_none());
        let api_policy = children.api_network_policy.as_ref().unwrap();
        let worker_policy = children.worker_network_policy.as_ref().unwrap();
        let metas = [
            &children.settings.metadata,
            &children.api_deployment.metadata,
            &children.api_service.metadata,
            &children.api_disruption_budget.metadata,
            &api_policy.metadata,
            &children.worker_deployment.metadata,
            &children.worker_disruption_budget.metadata,
            &worker_policy.metadata,
        ];
        for meta in metas {
            let owner = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.name.as_str()),
                ("LogPipeline", "logs")
            );
            assert_eq!(owner.controller, Some(true));
            assert_eq!(meta.namespace.as_deref(), Some("default"));
            let labels = meta.labels.as_ref().unwrap();
            assert_eq!(labels["app.kubernetes.io/instance"], "logs");
            assert_eq!(labels["app.kubernetes.io/managed-by"], MANAGER);
        }
        assert_eq!(
            children.api_deployment.metadata.name.as_deref(),
            Some("logs-api")
        );
        assert_eq!(
            children.worker_deployment.spec.as_ref().unwrap().replicas,
            Some(3)
        );
        assert_eq!(
            children.api_deployment.spec.as_ref().unwrap().replicas,
            Some(2)
        );
    }

    #[test]
    fn settings_follow_the_service_contract() {
        let data = settings(&LogPipeline::test());
        assert_eq!(data["LOGPIPELINE_STREAM"], "logs:stream");
        assert_eq!(data["LOGPIPELINE_STREAM_SHARDS"], "1");
        assert_eq!(data["LOGPIPELINE_GROUP"], "log_workers");
        assert_eq!(data["LOGPIPELINE_LOG_FORMAT"], "json");
        assert_eq!(data["LOGPIPELINE_LISTEN"], "0.0.0.0:8080");
        assert_eq!(data["LOGPIPELINE_METRICS_LISTEN"], "0.0.0.0:9090");
        assert_eq!(data["LOGPIPELINE_BATCH_SIZE"], "100");
        assert_eq!(data["LOGPIPELINE_BLOCK_MS"], "2000");
        assert_eq!(data["LOGPIPELINE_CONCURRENCY"], "2");
        assert_eq!(data["LOGPIPELINE_REDIS_DURABILITY"], "primary");
        assert_eq!(data["LOGPIPELINE_CLAIM_IDLE_MS"], "30000");
        assert_eq!(data["LOGPIPELINE_MAX_DELIVERIES"], "10");
        assert_eq!(data["LOGPIPELINE_PARTITION_INTERVAL"], "1d");
        assert_eq!(data["LOGPIPELINE_LOG_DATA_INDEX"], "false");
        assert_eq!(data["LOGPIPELINE_MESSAGE_INDEX"], "false");
        assert_eq!(data["LOGPIPELINE_HOT_WINDOW"], "2m");
        assert_eq!(data["LOGPIPELINE_CHUNK_ROWS"], "2048");
        assert!(!data.contains_key("LOGPIPELINE_RETENTION"), "kept forever");
        assert_eq!(data["RUST_LOG"], "info");
        let mut lp = LogPipeline::test();
        lp.spec.storage.retention = Some("30d".into());
        assert_eq!(settings(&lp)["LOGPIPELINE_RETENTION"], "30d");
    }

    #[test]
    fn containers_read_secrets_settings_and_pod_name() {
        let children = render(&LogPipeline::test(), 1, None).unwrap();
        let worker = container_of(&children.worker_deployment);
        let redis = env_of(worker, "REDIS_URL").value_from.as_ref().unwrap();
        let redis = redis.secret_key_ref.as_ref().unwrap();
        assert_eq!((redis.name.as_str(), redis.key.as_str()), ("redis", "url"));
        let db = env_of(worker, "DATABASE_URL").value_from.as_ref().unwrap();
        assert_eq!(db.secret_key_ref.as_ref().unwrap().name, "postgres");
        let consumer = env_of(worker, "LOGPIPELINE_CONSUMER_NAME")
            .value_from
            .as_ref()
            .unwrap();
        assert_eq!(
            consumer.field_ref.as_ref().unwrap().field_path,
            "metadata.name"
        );
        let env_from = &worker.env_from.as_ref().unwrap()[0];
        assert_eq!(
            env_from.config_map_ref.as_ref().unwrap().name,
            "logs-settings"
        );
        let api = container_of(&children.api_deployment);
        for (name, value) in [
            ("LOGPIPELINE_SHUTDOWN_TIMEOUT_SECS", "20"),
            ("LOGPIPELINE_SEARCH_CONCURRENCY", "4"),
            ("LOGPIPELINE_SEARCH_CONCURRENCY_PER_TENANT", "2"),
            ("LOGPIPELINE_SEARCH_TIMEOUT_MS", "5000"),
        ] {
            assert_eq!(env_of(api, name).value.as_deref(), Some(value), "{name}");
        }
    }

    #[test]
    fn pods_are_secure_probed_and_scraped() {
        let children = render(&LogPipeline::test(), 1, None).unwrap();
        for (deployment, port, grace) in [
            (&children.api_deployment, "8080", 40),
            (&children.worker_deployment, "9090", 30),
        ] {
            let pod = deployment
                .spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap();
            let psc = pod.security_context.as_ref().unwrap();
            assert_eq!(psc.run_as_non_root, Some(true));
            assert_eq!(
                psc.seccomp_profile.as_ref().unwrap().type_,
                "RuntimeDefault"
            );
            assert_eq!(pod.termination_grace_period_seconds, Some(grace));
            assert_eq!(pod.automount_service_account_token, Some(false));
            let c = &pod.containers[0];
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.read_only_root_filesystem, Some(true));
            assert_eq!(sc.allow_privilege_escalation, Some(false));
            assert_eq!(
                sc.capabilities.as_ref().unwrap().drop,
                Some(vec!["ALL".to_owned()])
            );
            let live = c
                .liveness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap();
            assert_eq!(live.path.as_deref(), Some("/livez"));
            let ready = c
                .readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap();
            assert_eq!(ready.path.as_deref(), Some("/readyz"));
            let resources = c.resources.as_ref().unwrap();
            assert!(resources.requests.as_ref().unwrap().contains_key("cpu"));
            assert!(resources.limits.as_ref().unwrap().contains_key("memory"));
            assert_eq!(
                template_annotation(deployment, "prometheus.io/scrape"),
                "true"
            );
            assert_eq!(template_annotation(deployment, "prometheus.io/port"), port);
        }
    }

    #[test]
    fn a_settings_change_changes_the_pod_checksum() {
        let before = render(&LogPipeline::test(), 1, None).unwrap();
        let mut lp = LogPipeline::test();
        lp.spec.worker.batch_size = 500;
        let after = render(&lp, 1, None).unwrap();
        for (a, b) in [
            (&before.api_deployment, &after.api_deployment),
            (&before.worker_deployment, &after.worker_deployment),
        ] {
            assert_ne!(
                template_annotation(a, SETTINGS_CHECKSUM),
                template_annotation(b, SETTINGS_CHECKSUM)
            );
        }
        let again = render(&LogPipeline::test(), 1, None).unwrap();
        assert_eq!(before, again, "rendering is deterministic");
    }

    #[test]
    fn autoscaling_renders_an_hpa_and_leaves_replicas_to_it() {
        let children = render(&LogPipeline::test().with_autoscaling(3, 12), 1, None).unwrap();
        assert_eq!(
            children.api_deployment.spec.as_ref().unwrap().replicas,
            None
        );
        let hpa = children.api_autoscaler.unwrap().spec.unwrap();
        assert_eq!((hpa.min_replicas, hpa.max_replicas), (Some(3), 12));
        assert_eq!(hpa.scale_target_ref.name, "logs-api");
        let metric = hpa.metrics.unwrap()[0].resource.clone().unwrap();
        assert_eq!(metric.target.average_utilization, Some(70));
        let scale_down = hpa.behavior.unwrap().scale_down.unwrap();
        assert_eq!(scale_down.stabilization_window_seconds, Some(300));
    }

    #[test]
    fn ingress_has_class_host_and_tls() {
        let lp = LogPipeline::test().with_ingress("logs.example.com", Some("logs-tls"));
        let ingress = render(&lp, 1, None)
            .unwrap()
            .api_ingress
            .unwrap()
            .spec
            .unwrap();
        assert_eq!(ingress.ingress_class_name.as_deref(), Some("nginx"));
        let rule = &ingress.rules.unwrap()[0];
        assert_eq!(rule.host.as_deref(), Some("logs.example.com"));
        let backend = rule.http.as_ref().unwrap().paths[0]
            .backend
            .service
            .clone()
            .unwrap();
        assert_eq!(backend.name, "logs-api");
        let tls = &ingress.tls.unwrap()[0];
        assert_eq!(tls.secret_name.as_deref(), Some("logs-tls"));
        assert_eq!(tls.hosts, Some(vec!["logs.example.com".to_owned()]));
    }

    #[test]
    fn a_pipeline_without_uid_cannot_own_children() {
        let mut lp = LogPipeline::test();
        lp.metadata.uid = None;
        assert!(matches!(
            render(&lp, 1, None),
            Err(Error::MissingField("metadata.uid"))
        ));
    }

    #[test]
    fn the_worker_deployment_records_the_last_scale_time() {
        let at: Timestamp = "2026-11-22T01:02:03Z".parse().unwrap();
        let children = render(&LogPipeline::test(), 4, Some(at)).unwrap();
        let annotations = children.worker_deployment.metadata.annotations.unwrap();
        assert_eq!(annotations[LAST_SCALE_TIME], "2026-11-22T01:02:03Z");
        assert_eq!(
            annotations[LAST_SCALE_TIME].parse::<Timestamp>().unwrap(),
            at
        );
    }

    #[test]
    fn apply_bodies_carry_type_meta() {
        let children = render(&LogPipeline::test(), 1, None).unwrap();
        let body = with_type_meta(&children.worker_disruption_budget).unwrap();
        assert_eq!(body["apiVersion"], "policy/v1");
        assert_eq!(body["kind"], "PodDisruptionBudget");
    }
}

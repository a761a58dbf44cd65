//! The reconcile loop: the thin layer between the API server and the pure functions in
//! [`render`](crate::render), [`scaling`](crate::scaling) and [`status`](crate::status).

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Client, Resource, ResourceExt};
use logpipeline_core::stream::Shards;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::crd::{LogPipeline, LogPipelineStatus, SecretKeyRef};
use crate::metrics::Metrics;
use crate::render::{self, Children, Component, MANAGER};
use crate::scaling::{self, Backlog, Decision, Policy};
use crate::status::{self, DEGRADED, Observation, Problem, Rollout};
use crate::{Error, Result, lag};

/// How soon a failed reconcile is retried.
const ERROR_REQUEUE: Duration = Duration::from_secs(5);

/// What every reconcile shares.
#[derive(Clone)]
pub struct Context {
    /// Client of the API server.
    pub client: Client,
    /// The operator's metrics.
    pub metrics: Metrics,
    /// Who publishes the operator's Events.
    pub reporter: Reporter,
    /// Bound on each Redis request when reading the lag.
    pub redis_timeout: Duration,
    /// The Degraded condition (status, reason) this process last announced, per
    /// pipeline uid. A reconcile can read a pipeline whose status the watch cache has not
    /// caught up with yet; without this it would announce the same change twice.
    announced: Arc<Mutex<HashMap<String, (String, String)>>>,
}

impl Context {
    /// A context for the controller named `instance` (the pod name in a cluster).
    pub fn new(
        client: Client,
        metrics: Metrics,
        instance: String,
        redis_timeout: Duration,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.to_owned(),
            instance: Some(instance),
        };
        Self {
            reporter,
            client,
            metrics,
            redis_timeout,
            announced: Arc::default(),
        }
    }
}

/// Runs the controller until `shutdown` resolves, then finishes the reconciles in flight.
pub async fn run(
    ctx: Context,
    namespace: Option<&str>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let client = ctx.client.clone();
    let pipelines: Api<LogPipeline> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let owned =
        watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"));
    // Only spec changes (a new generation) trigger a reconcile: the status the operator
    // writes itself does not, or every lag reading would trigger the next at once.
    let (reader, writer) = reflector::store();
    let trigger = watcher(pipelines, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(predicates::generation, Default::default());
    let scoped = |client: &Client| -> (Api<Deployment>, Api<ConfigMap>) {
        match namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (Api::all(client.clone()), Api::all(client.clone())),
        }
    };
    let (deployments, config_maps) = scoped(&client);
    Controller::for_stream(trigger, reader)
        .owns(deployments, owned.clone())
        .owns(config_maps, owned)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, Arc::new(ctx))
        .for_each(|result| async move {
            match result {
                Ok((object, _)) => {
                    debug!(pipeline = %object.name, namespace = ?object.namespace, "reconciled")
                }
                Err(error) => debug!(%error, "reconcile failed"),
            }
        })
        .await;
}

/// Retries a failed reconcile after a short pause.
pub fn error_policy(lp: Arc<LogPipeline>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(%error, pipeline = %lp.name_any(), namespace = ?lp.namespace(), "reconcile failed");
    ctx.metrics.reconciles.with_label_values(&["error"]).inc();
    ctx.metrics
        .errors
        .with_label_values(&[error.metric_label()])
        .inc();
    Action::requeue(ERROR_REQUEUE)
}

/// Brings the children of `lp` to what its spec wants and writes its status.
pub async fn reconcile(lp: Arc<LogPipeline>, ctx: Arc<Context>) -> Result<Action> {
    let span = info_span!("reconcile", pipeline = %lp.name_any(), namespace = ?lp.namespace());
    let timer = ctx.metrics.duration.start_timer();
    let result = reconcile_inner(&lp, &ctx).instrument(span).await;
    timer.observe_duration();
    if result.is_ok() {
        ctx.metrics.reconciles.with_label_values(&["ok"]).inc();
    }
    result
}

async fn reconcile_inner(lp: &LogPipeline, ctx: &Context) -> Result<Action> {
    let ns = lp
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = lp.name_any();
    let client = &ctx.client;
    let now = Timestamp::now();
    let previous = lp.status.clone().unwrap_or_default();

    // Where Redis and PostgreSQL are, and the backlog.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let redis_url = secret_value(&secrets, &ns, &lp.spec.redis_secret_ref).await?;
    let database_url = secret_value(&secrets, &ns, &lp.spec.database_secret_ref).await?;
    let api_keys = api_keys_problem(&secrets, &ns, lp).await?;
    let (reading, mut problem) = match redis_url {
        Ok(url) => {
            let count = u32::try_from(lp.spec.redis.shards).unwrap_or(1);
            let cluster = lp.spec.redis.cluster;
            let shards = if cluster {
                Shards::on_cluster(&lp.spec.stream.name, count)
            } else {
                Shards::new(&lp.spec.stream.name, count)
            };
            let reading = match lag::target(&url, &ns, cluster) {
                Ok(target) => {
                    lag::read(
                        &target,
                        shards.keys(),
                        &lp.spec.stream.group,
                        ctx.redis_timeout,
                        lag::active_within(lp.spec.worker.block_ms),
                    )
                    .await
                }
                Err(error) => Err(error),
            };
            match reading {
                Ok(reading) => (Some(reading), None),
                Err(error) => (
                    None,
                    Some(Problem {
                        reason: "RedisUnavailable",
                        message: format!(
                            "Cannot read the lag of stream {}: {error}",
                            lp.spec.stream.name
                        ),
                    }),
                ),
            }
        }
        Err(problem) => (None, Some(problem)),
    };
    if let Err(database_problem) = database_url {
        problem.get_or_insert(database_problem);
    }
    if let Some(keys_problem) = api_keys {
        problem.get_or_insert(keys_problem);
    }
    let backlog = reading.as_ref().map(|reading| reading.backlog);
    let shard_lag = reading.as_ref().map(|reading| reading.shard_lag.clone());

    // How many workers.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let worker_name = render::component_name(&name, Component::Worker);
    let existing_worker = deployments.get_opt(&worker_name).await?;
    let current = existing_worker
        .as_ref()
        .and_then(|d| d.spec.as_ref()?.replicas)
        .unwrap_or(lp.spec.worker.min_replicas);
    let last_change = existing_worker
        .as_ref()
        .and_then(|d| {
            d.metadata
                .annotations
                .as_ref()?
                .get(render::LAST_SCALE_TIME)?
                .parse()
                .ok()
        })
        .or_else(|| previous.last_scale_time.as_ref().map(|t| t.0));
    let policy = Policy::from(&lp.spec.worker);
    let decision = match backlog {
        Some(backlog) => scaling::decide(backlog, current, last_change, now, &policy),
        // Without a reading, only enforce the bounds.
        None => scaling::decide(
            Backlog { lag: 0, pending: 0 },
            current,
            Some(now),
            now,
            &policy,
        ),
    };
    ctx.metrics.record_decision(&ns, &name, decision);

    // The children.
    let scaled_at = match decision {
        Decision::Scale { .. } => Some(now),
        Decision::Hold(_) => last_change,
    };
    let children = render::render(lp, decision.replicas(), scaled_at)?;
    let changes = apply_children(client, lp, &ns, &children).await?;
    let reference = lp.object_ref(&());
    for change in &changes {
        info!(object = %change, "applied");
        publish(
            ctx,
            &reference,
            EventType::Normal,
            "Applied",
            format!("{change}"),
        )
        .await;
    }
    if let Decision::Scale { from, to } = decision {
        let backlog = backlog.unwrap_or(Backlog { lag: 0, pending: 0 });
        let note = format!(
            "Scaled workers from {from} to {to} (lag {}, pending {})",
            backlog.lag, backlog.pending
        );
        info!(
            from,
            to,
            lag = backlog.lag,
            pending = backlog.pending,
            "scaled workers"
        );
        publish(ctx, &reference, EventType::Normal, "ScaledWorkers", note).await;
    }

    // The status.
    let api_deployment = deployments
        .get_opt(&render::component_name(&name, Component::Api))
        .await?;
    let worker_deployment = deployments.get_opt(&worker_name).await?;
    let observed = Observation {
        generation: lp.metadata.generation,
        problem,
        api: Rollout::of(api_deployment.as_ref()),
        worker: Rollout::of(worker_deployment.as_ref()),
        backlog,
        shard_lag,
        worker_replicas: decision.replicas(),
        scaled_at,
    };
    let next = status::next(&previous, &observed, now);
    ctx.metrics.observe(&ns, &name, &next, reading);
    announce_degradation(ctx, &reference, &previous, &next).await;
    if next != previous {
        write_status(client, &ns, &name, &next).await?;
    }
    let poll = u64::try_from(lp.spec.worker.lag_poll_secs)
        .unwrap_or(15)
        .max(1);
    Ok(Action::requeue(Duration::from_secs(poll)))
}

/// What keeps the API from reading its keys: no Secret named while auth is on (which
/// the CRD's rule refuses), or a missing Secret or key, as for Redis and PostgreSQL.
async fn api_keys_problem(
    secrets: &Api<Secret>,
    ns: &str,
    lp: &LogPipeline,
) -> Result<Option<Problem>> {
    let auth = &lp.spec.auth;
    if !auth.enabled {
        return Ok(None);
    }
    let Some(keys) = &auth.keys_secret_ref else {
        return Ok(Some(Problem {
            reason: "ApiKeysSecretNotSet",
            message: "auth.keysSecretRef is required while auth.enabled is true".to_owned(),
        }));
    };
    let reference = SecretKeyRef {
        name: keys.name.clone(),
        key: keys.key.clone(),
    };
    Ok(secret_value(secrets, ns, &reference).await?.err())
}

/// Reads a Secret key; a missing Secret or key is a [`Problem`], not an error.
async fn secret_value(
    secrets: &Api<Secret>,
    ns: &str,
    reference: &SecretKeyRef,
) -> Result<std::result::Result<String, Problem>> {
    let Some(secret) = secrets.get_opt(&reference.name).await? else {
        return Ok(Err(Problem {
            reason: "SecretNotFound",
            message: format!("Secret {ns}/{} not found", reference.name),
        }));
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|data| data.get(&reference.key));
    Ok(
        match value.map(|bytes| String::from_utf8(bytes.0.clone())) {
            Some(Ok(value)) => Ok(value),
            Some(Err(_)) => Err(Problem {
                reason: "SecretKeyInvalid",
                message: format!(
                    "Key {} of Secret {ns}/{} is not UTF-8",
                    reference.key, reference.name
                ),
            }),
            None => Err(Problem {
                reason: "SecretKeyNotFound",
                message: format!(
                    "Secret {ns}/{} has no key {}",
                    reference.name, reference.key
                ),
            }),
        },
    )
}

/// A child object the reconcile created, changed or deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Change {
    verb: &'static str,
    kind: String,
    name: String,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} {}", self.verb, self.kind, self.name)
    }
}

async fn apply_children(
    client: &Client,
    lp: &LogPipeline,
    ns: &str,
    children: &Children,
) -> Result<Vec<Change>> {
    let name = lp.name_any();
    let api_name = render::component_name(&name, Component::Api);
    let worker_name = render::component_name(&name, Component::Worker);
    // The NetworkPolicies before the pods they protect.
    let changes = vec![
        apply(client, ns, &children.settings).await?,
        match &children.api_network_policy {
            Some(policy) => apply(client, ns, policy).await?,
            None => remove::<NetworkPolicy>(client, lp, ns, &api_name).await?,
        },
        match &children.worker_network_policy {
            Some(policy) => apply(client, ns, policy).await?,
            None => remove::<NetworkPolicy>(client, lp, ns, &worker_name).await?,
        },
        apply(client, ns, &children.api_deployment).await?,
        apply(client, ns, &children.api_service).await?,
        apply(client, ns, &children.api_disruption_budget).await?,
        apply(client, ns, &children.worker_deployment).await?,
        apply(client, ns, &children.worker_disruption_budget).await?,
        match &children.api_autoscaler {
            Some(hpa) => apply(client, ns, hpa).await?,
            None => remove::<HorizontalPodAutoscaler>(client, lp, ns, &api_name).await?,
        },
        match &children.api_ingress {
            Some(ingress) => apply(client, ns, ingress).await?,
            None => remove::<Ingress>(client, lp, ns, &api_name).await?,
        },
    ];
    Ok(changes.into_iter().flatten().collect())
}

/// Server-side applies `object`; reports whether that created or changed it.
async fn apply<K>(client: &Client, ns: &str, object: &K) -> Result<Option<Change>>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Serialize
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let name = object
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingField("metadata.name"))?;
    let before = api
        .get_metadata_opt(&name)
        .await?
        .map(|m| m.metadata.resource_version);
    let params = PatchParams::apply(MANAGER).force();
    let after = api
        .patch(
            &name,
            &params,
            &Patch::Apply(render::with_type_meta(object)?),
        )
        .await?;
    let verb = match before {
        None => "Created",
        Some(version) if version != after.meta().resource_version => "Updated",
        Some(_) => return Ok(None),
    };
    Ok(Some(Change {
        verb,
        kind: K::kind(&()).into_owned(),
        name,
    }))
}

/// Deletes an optional child the spec no longer wants, if this pipeline owns it.
async fn remove<K>(
    client: &Client,
    lp: &LogPipeline,
    ns: &str,
    name: &str,
) -> Result<Option<Change>>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let Some(existing) = api.get_metadata_opt(name).await? else {
        return Ok(None);
    };
    let owned = existing
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|owner| Some(&owner.uid) == lp.metadata.uid.as_ref());
    if !owned {
        return Ok(None);
    }
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(Some(Change {
            verb: "Deleted",
            kind: K::kind(&()).into_owned(),
            name: name.to_owned(),
        })),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(error) => Err(error.into()),
    }
}

async fn write_status(
    client: &Client,
    ns: &str,
    name: &str,
    status: &LogPipelineStatus,
) -> Result<()> {
    let api: Api<LogPipeline> = Api::namespaced(client.clone(), ns);
    let body = serde_json::json!({
        "apiVersion": LogPipeline::api_version(&()),
        "kind": LogPipeline::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(body),
    )
    .await?;
    Ok(())
}

/// An Event when the pipeline becomes degraded or recovers, none while it stays so.
async fn announce_degradation(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    previous: &LogPipelineStatus,
    next: &LogPipelineStatus,
) {
    let Some(now) = next.condition(DEGRADED) else {
        return;
    };
    let current = (now.status.clone(), now.reason.clone());
    let key = reference.uid.clone().unwrap_or_else(|| {
        format!(
            "{}/{}",
            reference.namespace.as_deref().unwrap_or_default(),
            reference.name.as_deref().unwrap_or_default()
        )
    });
    let remembered = ctx
        .announced
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(key, current.clone());
    let was = remembered.or_else(|| {
        previous
            .condition(DEGRADED)
            .map(|c| (c.status.clone(), c.reason.clone()))
    });
    if was.as_ref() == Some(&current) {
        return;
    }
    if now.status == "True" {
        warn!(reason = %now.reason, message = %now.message, "degraded");
        publish(
            ctx,
            reference,
            EventType::Warning,
            &now.reason,
            now.message.clone(),
        )
        .await;
    } else if was.is_some_and(|(status, _)| status == "True") {
        info!("recovered");
        publish(
            ctx,
            reference,
            EventType::Normal,
            "Recovered",
            now.message.clone(),
        )
        .await;
    }
}

/// Publishes an Event; a failure to do so is logged, never fails the reconcile.
async fn publish(
    ctx: &Context,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    // A fresh recorder each time: the reconcile already publishes only on change, and a
    // shared one would fold a later change with the same reason into the first Event's
    // series, keeping the first note.
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    if let Err(error) = recorder.publish(&event, reference).await {
        warn!(%error, reason, "could not publish event");
    }
}

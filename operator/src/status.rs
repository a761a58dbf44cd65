//! The status a reconcile writes, as a pure function of what it observed.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::crd::LogPipelineStatus;
use crate::scaling::Backlog;

/// Condition: every part is rolled out and nothing is wrong.
pub const READY: &str = "Ready";
/// Condition: a Deployment is still rolling out.
pub const PROGRESSING: &str = "Progressing";
/// Condition: something the pipeline needs is missing or failing.
pub const DEGRADED: &str = "Degraded";

/// Why the pipeline cannot work as specified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// CamelCase reason, e.g. `SecretNotFound`.
    pub reason: &'static str,
    /// What is wrong, naming the object.
    pub message: String,
}

/// How far a Deployment has rolled out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rollout {
    pub desired: i32,
    pub ready: i32,
    pub done: bool,
}

impl Rollout {
    /// Reads the rollout from a Deployment as the API server has it.
    pub fn of(deployment: Option<&Deployment>) -> Self {
        let Some(deployment) = deployment else {
            return Self::default();
        };
        let desired = deployment
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1);
        let status = deployment.status.clone().unwrap_or_default();
        let ready = status.ready_replicas.unwrap_or(0);
        let observed =
            status.observed_generation.unwrap_or(0) >= deployment.metadata.generation.unwrap_or(0);
        let updated = status.updated_replicas.unwrap_or(0) >= desired;
        let available = status.available_replicas.unwrap_or(0) >= desired;
        Self {
            desired,
            ready,
            done: observed && updated && available && ready >= desired,
        }
    }
}

/// What one reconcile saw and decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub generation: Option<i64>,
    pub problem: Option<Problem>,
    pub api: Rollout,
    pub worker: Rollout,
    /// The backlog reading, if Redis answered.
    pub backlog: Option<Backlog>,
    /// Each shard's lag, if Redis answered.
    pub shard_lag: Option<Vec<u64>>,
    /// The worker replicas the operator applied.
    pub worker_replicas: i32,
    /// When the worker replicas last changed (in this reconcile or before).
    pub scaled_at: Option<Timestamp>,
}

/// The next status, keeping transition times of conditions that did not change.
pub fn next(
    previous: &LogPipelineStatus,
    observed: &Observation,
    now: Timestamp,
) -> LogPipelineStatus {
    let rolled_out = observed.api.done && observed.worker.done;
    let waiting = format!(
        "API {}/{} ready, workers {}/{} ready",
        observed.api.ready, observed.api.desired, observed.worker.ready, observed.worker.desired
    );
    let degraded = match &observed.problem {
        Some(problem) => (true, problem.reason, problem.message.clone()),
        None => (
            false,
            "AsExpected",
            "Secrets are present and Redis answers".to_owned(),
        ),
    };
    let progressing = if rolled_out {
        (
            false,
            "RolledOut",
            format!("Deployments are rolled out: {waiting}"),
        )
    } else {
        (
            true,
            "RollingOut",
            format!("Waiting for the Deployments: {waiting}"),
        )
    };
    let ready = match (&observed.problem, rolled_out) {
        (Some(problem), _) => (false, problem.reason, problem.message.clone()),
        (None, false) => (
            false,
            "RollingOut",
            format!("Waiting for the Deployments: {waiting}"),
        ),
        (None, true) => (true, "Ready", format!("The pipeline is running: {waiting}")),
    };
    let conditions = [
        (READY, ready),
        (PROGRESSING, progressing),
        (DEGRADED, degraded),
    ]
    .into_iter()
    .map(|(type_, (status, reason, message))| {
        let status = if status { "True" } else { "False" };
        let since = previous
            .condition(type_)
            .filter(|c| c.status == status)
            .map_or(Time(now), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.to_owned(),
            status: status.to_owned(),
            reason: reason.to_owned(),
            message,
            observed_generation: observed.generation,
            last_transition_time: since,
        }
    })
    .collect();
    LogPipelineStatus {
        observed_generation: observed.generation,
        conditions,
        api_replicas: Some(observed.api.desired),
        api_ready_replicas: Some(observed.api.ready),
        worker_replicas: Some(observed.worker_replicas),
        worker_ready_replicas: Some(observed.worker.ready),
        lag: observed
            .backlog
            .map(|b| i64::try_from(b.lag).unwrap_or(i64::MAX))
            .or(previous.lag),
        pending: observed
            .backlog
            .map(|b| i64::try_from(b.pending).unwrap_or(i64::MAX))
            .or(previous.pending),
        shard_lag: observed
            .shard_lag
            .as_ref()
            .map(|lags| {
                lags.iter()
                    .map(|lag| i64::try_from(*lag).unwrap_or(i64::MAX))
                    .collect()
            })
            .or_else(|| previous.shard_lag.clone()),
        last_scale_time: observed
            .scaled_at
            .map(Time)
            .or_else(|| previous.last_scale_time.clone()),
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn done(n: i32) -> Rollout {
        Rollout {
            desired: n,
            ready: n,
            done: true,
        }
    }

    fn observation(problem: Option<Problem>) -> Observation {
        Observation {
            generation: Some(3),
            problem,
            api: done(2),
            worker: done(1),
            backlog: Some(Backlog {
                lag: 42,
                pending: 7,
            }),
            shard_lag: Some(vec![40, 2]),
            worker_replicas: 1,
            scaled_at: None,
        }
    }

    fn missing_secret() -> Problem {
        Problem {
            reason: "SecretNotFound",
            message: "Secret default/redis not found".into(),
        }
    }

    #[test]
    fn healthy_and_rolled_out_is_ready() {
        let status = next(&LogPipelineStatus::default(), &observation(None), at(0));
        assert_eq!(status.condition(READY).unwrap().status, "True");
        assert_eq!(status.condition(PROGRESSING).unwrap().status, "False");
        assert_eq!(status.condition(DEGRADED).unwrap().status, "False");
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!((status.lag, status.pending), (Some(42), Some(7)));
        assert_eq!(
            status.condition(READY).unwrap().observed_generation,
            Some(3)
        );
    }

    #[test]
    fn a_problem_degrades_with_its_reason_and_message() {
        let status = next(
            &LogPipelineStatus::default(),
            &observation(Some(missing_secret())),
            at(0),
        );
        let degraded = status.condition(DEGRADED).unwrap();
        assert_eq!(
            (degraded.status.as_str(), degraded.reason.as_str()),
            ("True", "SecretNotFound")
        );
        assert_eq!(degraded.message, "Secret default/redis not found");
        assert_eq!(status.condition(READY).unwrap().status, "False");
    }

    #[test]
    fn transition_times_move_only_when_a_condition_flips() {
        let first = next(&LogPipelineStatus::default(), &observation(None), at(0));
        let same = next(&first, &observation(None), at(100));
        assert_eq!(first, same, "nothing changed, so the status is identical");
        let broken = next(&same, &observation(Some(missing_secret())), at(200));
        assert_eq!(
            broken.condition(DEGRADED).unwrap().last_transition_time,
            Time(at(200))
        );
        assert_eq!(
            broken.condition(PROGRESSING).unwrap().last_transition_time,
            Time(at(0))
        );
    }

    #[test]
    fn rollout_waits_for_the_deployment_controller() {
        let mut deployment = Deployment {
            metadata: ObjectMeta {
                generation: Some(2),
                ..ObjectMeta::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(3),
                ..DeploymentSpec::default()
            }),
            status: Some(DeploymentStatus {
                observed_generation: Some(1),
                replicas: Some(3),
                updated_replicas: Some(3),
                ready_replicas: Some(3),
                available_replicas: Some(3),
                ..DeploymentStatus::default()
            }),
        };
        assert!(
            !Rollout::of(Some(&deployment)).done,
            "status is of an older generation"
        );
        deployment.status.as_mut().unwrap().observed_generation = Some(2);
        assert_eq!(
            Rollout::of(Some(&deployment)),
            Rollout {
                desired: 3,
                ready: 3,
                done: true
            }
        );
        assert!(!Rollout::of(None).done);
    }

    #[test]
    fn a_failed_reading_keeps_the_last_lag() {
        let first = next(&LogPipelineStatus::default(), &observation(None), at(0));
        let blind = Observation {
            backlog: None,
            shard_lag: None,
            ..observation(None)
        };
        assert_eq!(next(&first, &blind, at(5)).lag, Some(42));
        assert_eq!(next(&first, &blind, at(5)).shard_lag, Some(vec![40, 2]));
    }
}

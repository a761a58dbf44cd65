//! Lag-based worker scaling, as a pure function.
//!
//! The backlog is the consumer group's lag (entries not yet delivered) plus its pending
//! entries (delivered, not yet acknowledged). Each worker pod is expected to clear
//! `lagTargetPerReplica` of it, so the operator wants `ceil(backlog / target)` pods,
//! within `[minReplicas, maxReplicas]`.
//!
//! - Up: at once, as soon as the backlog needs more pods.
//! - Down: only when the backlog fits in fewer pods with room to spare (a hysteresis
//!   band of [`SCALE_DOWN_HEADROOM`]) *and* the last change is at least
//!   `scaleDownStabilizationSecs` old. A lag that hovers around a threshold therefore
//!   scales up once and stays there instead of flapping.

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::crd::WorkerSpec;

/// Scaling down to `n` pods needs the backlog to fit in `n * target * SCALE_DOWN_HEADROOM`.
pub const SCALE_DOWN_HEADROOM: f64 = 0.8;

/// A reading of the consumer group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Entries not yet delivered to the group.
    pub lag: u64,
    /// Entries delivered and not yet acknowledged.
    pub pending: u64,
}

impl Backlog {
    fn total(self) -> u64 {
        self.lag.saturating_add(self.pending)
    }
}

/// The bounds and timing that govern scaling, taken from the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub min_replicas: i32,
    pub max_replicas: i32,
    pub lag_target_per_replica: u64,
    pub scale_down_stabilization: SignedDuration,
}

impl From<&WorkerSpec> for Policy {
    fn from(worker: &WorkerSpec) -> Self {
        Self {
            min_replicas: worker.min_replicas,
            max_replicas: worker.max_replicas.max(worker.min_replicas),
            lag_target_per_replica: u64::try_from(worker.lag_target_per_replica.max(1))
                .unwrap_or(1),
            scale_down_stabilization: SignedDuration::from_secs(
                worker.scale_down_stabilization_secs.max(0),
            ),
        }
    }
}

/// What the operator should do with the worker replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Keep the current number of pods.
    Hold(i32),
    /// Change to this many pods (up or down).
    Scale { from: i32, to: i32 },
}

impl Decision {
    /// The replicas to run after this decision.
    pub fn replicas(self) -> i32 {
        match self {
            Self::Hold(n) => n,
            Self::Scale { to, .. } => to,
        }
    }
}

/// Decides the worker replicas from a backlog reading.
///
/// `current` is what the worker Deployment runs now, `last_change` when the operator
/// last changed it (none yet: any time is long enough ago).
pub fn decide(
    backlog: Backlog,
    current: i32,
    last_change: Option<Timestamp>,
    now: Timestamp,
    policy: &Policy,
) -> Decision {
    let clamp = |n: u64| -> i32 {
        let n = i32::try_from(n).unwrap_or(i32::MAX);
        n.clamp(policy.min_replicas, policy.max_replicas)
    };
    let total = backlog.total();
    let needed = clamp(total.div_ceil(policy.lag_target_per_replica));
    if current < policy.min_replicas || needed > current {
        return scale(current, needed);
    }
    if current > policy.max_replicas {
        return scale(current, policy.max_replicas);
    }

    // Down: the backlog must fit in fewer pods with headroom, after the window.
    let roomy_target = (policy.lag_target_per_replica as f64 * SCALE_DOWN_HEADROOM).max(1.0);
    let comfortable = clamp((total as f64 / roomy_target).ceil() as u64);
    let window_passed =
        last_change.is_none_or(|at| now.duration_since(at) >= policy.scale_down_stabilization);
    if comfortable < current && window_passed {
        return scale(current, comfortable);
    }
    Decision::Hold(current)
}

fn scale(from: i32, to: i32) -> Decision {
    if from == to {
        Decision::Hold(from)
    } else {
        Decision::Scale { from, to }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            min_replicas: 1,
            max_replicas: 10,
            lag_target_per_replica: 1000,
            scale_down_stabilization: SignedDuration::from_secs(300),
        }
    }

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn backlog(lag: u64) -> Backlog {
        Backlog { lag, pending: 0 }
    }

    #[test]
    fn scales_up_at_once_to_clear_the_backlog() {
        let d = decide(backlog(4500), 1, Some(at(0)), at(1), &policy());
        assert_eq!(d, Decision::Scale { from: 1, to: 5 });
    }

    #[test]
    fn pending_entries_count_as_backlog() {
        let d = decide(
            Backlog {
                lag: 1500,
                pending: 1500,
            },
            1,
            None,
            at(0),
            &policy(),
        );
        assert_eq!(d.replicas(), 3);
    }

    #[test]
    fn stays_within_bounds() {
        assert_eq!(
            decide(backlog(1_000_000), 2, None, at(0), &policy()).replicas(),
            10
        );
        assert_eq!(
            decide(backlog(0), 1, None, at(0), &policy()),
            Decision::Hold(1)
        );
        let floor = Policy {
            min_replicas: 3,
            ..policy()
        };
        assert_eq!(decide(backlog(0), 1, None, at(0), &floor).replicas(), 3);
        assert_eq!(
            decide(backlog(0), 20, Some(at(0)), at(1), &policy()).replicas(),
            10
        );
    }

    #[test]
    fn scales_down_only_after_the_stabilization_window() {
        let p = policy();
        assert_eq!(
            decide(backlog(0), 5, Some(at(0)), at(299), &p),
            Decision::Hold(5)
        );
        assert_eq!(
            decide(backlog(0), 5, Some(at(0)), at(300), &p),
            Decision::Scale { from: 5, to: 1 }
        );
        assert_eq!(
            decide(backlog(0), 5, None, at(0), &p),
            Decision::Scale { from: 5, to: 1 }
        );
    }

    #[test]
    fn scales_down_to_what_the_backlog_still_needs_with_headroom() {
        // 3000 entries fit in 3 pods exactly, but not with 20% headroom: keep 4.
        let d = decide(backlog(3000), 6, Some(at(0)), at(1000), &policy());
        assert_eq!(d, Decision::Scale { from: 6, to: 4 });
    }

    #[test]
    fn lag_hovering_around_a_threshold_does_not_flap() {
        // Lag swings 5% either side of the 3-pod threshold, every 10 s for two hours.
        let p = policy();
        let mut replicas = 1;
        let mut last_change = None;
        let mut changes = Vec::new();
        for step in 0..720 {
            let now = at(step * 10);
            let lag = if step % 2 == 0 { 3150 } else { 2850 };
            if let Decision::Scale { to, .. } = decide(backlog(lag), replicas, last_change, now, &p)
            {
                changes.push((step, replicas, to));
                replicas = to;
                last_change = Some(now);
            }
        }
        assert_eq!(changes, [(0, 1, 4)]);
    }

    #[test]
    fn a_spike_scales_up_at_once_and_down_one_window_after() {
        let p = policy();
        let up = decide(backlog(9000), 1, Some(at(0)), at(1000), &p);
        assert_eq!(up, Decision::Scale { from: 1, to: 9 });
        for secs in [1010, 1200, 1299] {
            assert_eq!(
                decide(backlog(0), 9, Some(at(1000)), at(secs), &p),
                Decision::Hold(9)
            );
        }
        assert_eq!(
            decide(backlog(0), 9, Some(at(1000)), at(1300), &p),
            Decision::Scale { from: 9, to: 1 }
        );
    }
}

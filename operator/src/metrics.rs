//! The operator's own Prometheus metrics.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::Result;
use crate::crd::LogPipelineStatus;
use crate::lag::Reading;
use crate::scaling::Decision;

/// Metrics of reconciles, errors, scaling and leadership, in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles by result (`ok`, `error`).
    pub reconciles: IntCounterVec,
    /// Failed reconciles by kind of error.
    pub errors: IntCounterVec,
    /// Time one reconcile took.
    pub duration: Histogram,
    /// Worker scaling changes by direction (`up`, `down`).
    pub scaling_decisions: IntCounterVec,
    /// Per pipeline: lag plus pending at the last reading.
    lag: IntGaugeVec,
    /// Per pipeline: pending entries at the last reading.
    pending: IntGaugeVec,
    /// Per pipeline: consumers that read recently.
    consumers_active: IntGaugeVec,
    /// Per pipeline: worker pods asked for.
    workers_desired: IntGaugeVec,
    /// Per pipeline: worker pods ready.
    workers_ready: IntGaugeVec,
    /// Per pipeline and condition type: 1 when True.
    conditions: IntGaugeVec,
    /// 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new(
                "logpipeline_operator_reconciles_total",
                "Reconciles of LogPipelines, by result",
            ),
            &["result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "logpipeline_operator_reconcile_errors_total",
                "Failed reconciles, by kind of error",
            ),
            &["kind"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "logpipeline_operator_reconcile_duration_seconds",
                "Time one reconcile took",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
        )?;
        let scaling_decisions = IntCounterVec::new(
            Opts::new(
                "logpipeline_operator_scaling_decisions_total",
                "Changes of worker replicas, by direction",
            ),
            &["namespace", "pipeline", "direction"],
        )?;
        let per_pipeline = |name: &str, help: &str| -> Result<IntGaugeVec> {
            let gauge = IntGaugeVec::new(Opts::new(name, help), &["namespace", "pipeline"])?;
            registry.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        let lag = per_pipeline(
            "logpipeline_operator_stream_lag_entries",
            "Stream lag plus pending entries at the last reading",
        )?;
        let pending = per_pipeline(
            "logpipeline_operator_stream_pending_entries",
            "Entries delivered to a consumer and not yet acknowledged, at the last reading",
        )?;
        let consumers_active = per_pipeline(
            "logpipeline_operator_stream_consumers_active",
            "Consumers of the group that read or claimed within the pipeline's blockMs plus 10 s, at the last reading",
        )?;
        let workers_desired = per_pipeline(
            "logpipeline_operator_workers_desired",
            "Worker pods the operator asks for",
        )?;
        let workers_ready = per_pipeline(
            "logpipeline_operator_workers_ready",
            "Worker pods that are ready",
        )?;
        let conditions = IntGaugeVec::new(
            Opts::new(
                "logpipeline_operator_pipeline_condition",
                "1 when the pipeline's condition of this type is True, else 0",
            ),
            &["namespace", "pipeline", "type"],
        )?;
        let leader = IntGauge::new(
            "logpipeline_operator_leader",
            "1 while this replica holds the leader Lease",
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(scaling_decisions.clone()))?;
        registry.register(Box::new(conditions.clone()))?;
        // Series exported from the start, at 0, so rates and alerts see them.
        for result in ["ok", "error"] {
            reconciles.with_label_values(&[result]);
        }
        for kind in crate::Error::METRIC_LABELS {
            errors.with_label_values(&[kind]);
        }
        registry.register(Box::new(leader.clone()))?;
        logpipeline_core::metrics::register_process(&registry, env!("CARGO_PKG_VERSION"))?;
        Ok(Self {
            registry,
            reconciles,
            errors,
            duration,
            scaling_decisions,
            lag,
            pending,
            consumers_active,
            workers_desired,
            workers_ready,
            conditions,
            leader,
        })
    }

    /// Counts a scaling change of pipeline `namespace/name`.
    pub fn record_decision(&self, namespace: &str, name: &str, decision: Decision) {
        if let Decision::Scale { from, to } = decision {
            let direction = if to > from { "up" } else { "down" };
            self.scaling_decisions
                .with_label_values(&[namespace, name, direction])
                .inc();
        }
    }

    /// Records the state of pipeline `namespace/name`: its status as just computed and
    /// what was read of its stream (nothing when Redis could not be read).
    pub fn observe(
        &self,
        namespace: &str,
        name: &str,
        status: &LogPipelineStatus,
        reading: Option<Reading>,
    ) {
        let labels = [namespace, name];
        for direction in ["up", "down"] {
            self.scaling_decisions
                .with_label_values(&[namespace, name, direction]);
        }
        let set = |gauge: &IntGaugeVec, value: u64| {
            gauge
                .with_label_values(&labels)
                .set(i64::try_from(value).unwrap_or(i64::MAX));
        };
        if let Some(reading) = reading {
            let backlog = reading.backlog;
            set(&self.lag, backlog.lag.saturating_add(backlog.pending));
            set(&self.pending, backlog.pending);
            set(&self.consumers_active, reading.consumers_active);
        }
        let replicas = |count: Option<i32>| u64::try_from(count.unwrap_or(0)).unwrap_or(0);
        set(&self.workers_desired, replicas(status.worker_replicas));
        set(&self.workers_ready, replicas(status.worker_ready_replicas));
        for condition in &status.conditions {
            self.conditions
                .with_label_values(&[namespace, name, condition.type_.as_str()])
                .set(i64::from(condition.status == "True"));
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        logpipeline_core::metrics::render(&self.registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_their_names() {
        let metrics = Metrics::new().unwrap();
        metrics.reconciles.with_label_values(&["ok"]).inc();
        metrics.record_decision("logs", "a", Decision::Scale { from: 1, to: 4 });
        metrics.record_decision("logs", "a", Decision::Hold(4));
        let text = metrics.render();
        assert!(text.contains("logpipeline_operator_reconciles_total{result=\"ok\"} 1"));
        assert!(text.contains(
            "logpipeline_operator_scaling_decisions_total{direction=\"up\",namespace=\"logs\",pipeline=\"a\"} 1"
        ));
        assert!(!text.contains("direction=\"down\""));
        assert!(text.contains("logpipeline_operator_reconcile_errors_total{kind=\"kube\"} 0"));
        assert!(text.contains("logpipeline_build_info{version="));
    }

    #[test]
    fn an_observed_pipeline_exports_its_series_from_the_start() {
        let metrics = Metrics::new().unwrap();
        let status = LogPipelineStatus {
            worker_replicas: Some(3),
            worker_ready_replicas: Some(2),
            ..LogPipelineStatus::default()
        };
        let reading = Reading {
            backlog: crate::scaling::Backlog {
                lag: 10,
                pending: 5,
            },
            shard_lag: vec![10],
            consumers_active: 4,
        };
        metrics.observe("logs", "a", &status, Some(reading));
        let text = metrics.render();
        for sample in [
            "logpipeline_operator_scaling_decisions_total{direction=\"down\",namespace=\"logs\",pipeline=\"a\"} 0",
            "logpipeline_operator_stream_lag_entries{namespace=\"logs\",pipeline=\"a\"} 15",
            "logpipeline_operator_stream_pending_entries{namespace=\"logs\",pipeline=\"a\"} 5",
            "logpipeline_operator_stream_consumers_active{namespace=\"logs\",pipeline=\"a\"} 4",
            "logpipeline_operator_workers_desired{namespace=\"logs\",pipeline=\"a\"} 3",
            "logpipeline_operator_workers_ready{namespace=\"logs\",pipeline=\"a\"} 2",
        ] {
            assert!(text.contains(sample), "{sample} missing:\n{text}");
        }
    }
}

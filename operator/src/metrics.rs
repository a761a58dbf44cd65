//! The operator's own Prometheus metrics.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::Result;
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
    /// Last stream lag read per pipeline.
    pub lag: IntGaugeVec,
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
            &["direction"],
        )?;
        let lag = IntGaugeVec::new(
            Opts::new(
                "logpipeline_operator_stream_lag_entries",
                "Stream lag plus pending entries at the last reading",
            ),
            &["namespace", "pipeline"],
        )?;
        let leader = IntGauge::new(
            "logpipeline_operator_leader",
            "1 while this replica holds the leader Lease",
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(scaling_decisions.clone()))?;
        registry.register(Box::new(lag.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Self {
            registry,
            reconciles,
            errors,
            duration,
            scaling_decisions,
            lag,
            leader,
        })
    }

    /// Counts a scaling change.
    pub fn record_decision(&self, decision: Decision) {
        if let Decision::Scale { from, to } = decision {
            let direction = if to > from { "up" } else { "down" };
            self.scaling_decisions.with_label_values(&[direction]).inc();
        }
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> Result<String> {
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer)?;
        Ok(String::from_utf8_lossy(&buffer).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_their_names() {
        let metrics = Metrics::new().unwrap();
        metrics.reconciles.with_label_values(&["ok"]).inc();
        metrics.record_decision(Decision::Scale { from: 1, to: 4 });
        metrics.record_decision(Decision::Hold(4));
        let text = metrics.render().unwrap();
        assert!(text.contains("logpipeline_operator_reconciles_total{result=\"ok\"} 1"));
        assert!(text.contains("logpipeline_operator_scaling_decisions_total{direction=\"up\"} 1"));
        assert!(!text.contains("direction=\"down\""));
    }
}

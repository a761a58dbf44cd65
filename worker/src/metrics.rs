//! The worker's Prometheus metrics.

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// Why an entry went to the dead-letter stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// It could not be decoded.
    Undecodable,
    /// PostgreSQL rejected it on every delivery.
    Rejected,
    /// It was delivered too often without being stored (its consumers kept dying).
    TooManyDeliveries,
}

impl DeadLetterReason {
    const ALL: [Self; 3] = [Self::Undecodable, Self::Rejected, Self::TooManyDeliveries];

    fn label(self) -> &'static str {
        match self {
            Self::Undecodable => "undecodable",
            Self::Rejected => "rejected",
            Self::TooManyDeliveries => "too_many_deliveries",
        }
    }
}

/// The worker's metrics, registered in their own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Batches stored.
    pub batches: IntCounter,
    /// Entries per stored batch.
    pub batch_entries: Histogram,
    /// Logs per stored batch.
    pub batch_logs: Histogram,
    /// Logs inserted.
    pub logs_inserted: IntCounter,
    /// Logs skipped because they were stored already (re-deliveries).
    pub logs_duplicate: IntCounter,
    /// Time of each batch insert.
    pub insert_duration: Histogram,
    /// Batch inserts that failed and were retried (PostgreSQL unavailable).
    pub insert_retries: IntCounter,
    /// Entries acknowledged.
    pub entries_acked: IntCounter,
    /// Entries claimed from consumers that stopped acknowledging.
    pub entries_claimed: IntCounter,
    dead_lettered: IntCounterVec,
    redis_duration: HistogramVec,
    /// Failed Redis calls.
    pub redis_errors: IntCounter,
    /// Entries trimmed from the stream after acknowledgement.
    pub entries_trimmed: IntCounter,
    /// Entries in the stream.
    pub stream_length: IntGauge,
    /// Entries not yet delivered to any consumer.
    pub group_lag: IntGauge,
    /// Entries delivered and not yet acknowledged.
    pub group_pending: IntGauge,
    /// Age of the oldest of those, in seconds.
    pub oldest_pending_age: Gauge,
    /// Per stream shard (`shard`, its number): entries, lag and pending entries, of
    /// which the gauges above are the sums.
    pub shard_length: IntGaugeVec,
    /// See [`Self::shard_length`].
    pub shard_lag: IntGaugeVec,
    /// See [`Self::shard_length`].
    pub shard_pending: IntGaugeVec,
    /// Logs not stored because they were received longer ago than the retention.
    pub logs_expired: IntCounter,
    /// Partitions of `logs`.
    pub partitions: IntGauge,
    /// Partitions dropped past the retention.
    pub partitions_dropped: IntCounter,
    /// Upkeep passes of the table (partitions, retention) that failed.
    pub storage_upkeep_errors: IntCounter,
    /// Rows moved into chunks.
    pub compacted_rows: IntCounter,
    /// Chunks written, by compaction and by merging.
    pub chunks_written: IntCounter,
    /// Small chunks merged into larger ones.
    pub chunks_merged: IntCounter,
    /// Time of each compaction pass.
    pub compaction_duration: Histogram,
    /// Compaction passes that failed.
    pub compaction_errors: IntCounter,
    /// How far behind now the watermark of acknowledged entries is, in seconds: rows of
    /// entries after it stay rows.
    pub watermark_age: Gauge,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| -> Result<IntCounter, prometheus::Error> {
            let counter = IntCounter::new(name, help)?;
            registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        let gauge = |name: &str, help: &str| -> Result<IntGauge, prometheus::Error> {
            let gauge = IntGauge::new(name, help)?;
            registry.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        let histogram =
            |name: &str, help: &str, buckets: Vec<f64>| -> Result<Histogram, prometheus::Error> {
                let histogram =
                    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))?;
                registry.register(Box::new(histogram.clone()))?;
                Ok(histogram)
            };
        let sizes = prometheus::exponential_buckets(1.0, 2.0, 17)?;
        let dead_lettered = IntCounterVec::new(
            Opts::new(
                "logpipeline_worker_entries_dead_lettered_total",
                "Entries moved to the dead-letter stream, by reason",
            ),
            &["reason"],
        )?;
        registry.register(Box::new(dead_lettered.clone()))?;
        // Every reason is exported from the start, at 0, so alerts see the series.
        for reason in DeadLetterReason::ALL {
            dead_lettered.with_label_values(&[reason.label()]);
        }
        let redis_duration = HistogramVec::new(
            HistogramOpts::new(
                "logpipeline_worker_redis_command_duration_seconds",
                "Time of Redis calls on the consumers' path, by command",
            )
            .buckets(prometheus::exponential_buckets(0.0001, 2.0, 17)?),
            &["command"],
        )?;
        registry.register(Box::new(redis_duration.clone()))?;
        let oldest_pending_age = Gauge::new(
            "logpipeline_worker_oldest_pending_age_seconds",
            "Age of the oldest entry delivered and not yet acknowledged (0 when none)",
        )?;
        registry.register(Box::new(oldest_pending_age.clone()))?;
        let per_shard = |name: &str, help: &str| -> prometheus::Result<IntGaugeVec> {
            let gauge = IntGaugeVec::new(Opts::new(name, help), &["shard"])?;
            registry.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        let shard_length = per_shard(
            "logpipeline_worker_shard_length",
            "Entries in a shard of the stream",
        )?;
        let shard_lag = per_shard(
            "logpipeline_worker_shard_lag",
            "Entries of a shard of the stream not yet delivered to any consumer",
        )?;
        let shard_pending = per_shard(
            "logpipeline_worker_shard_pending",
            "Entries of a shard of the stream delivered and not yet acknowledged",
        )?;
        let watermark_age = Gauge::new(
            "logpipeline_worker_watermark_age_seconds",
            "How far behind now the watermark of acknowledged stream entries is: rows of later entries stay rows",
        )?;
        registry.register(Box::new(watermark_age.clone()))?;
        logpipeline_core::metrics::register_process(&registry, env!("CARGO_PKG_VERSION"))?;
        Ok(Self {
            batches: counter(
                "logpipeline_worker_batches_total",
                "Batches stored in PostgreSQL",
            )?,
            batch_entries: histogram(
                "logpipeline_worker_batch_entries",
                "Stream entries per stored batch",
                sizes.clone(),
            )?,
            batch_logs: histogram(
                "logpipeline_worker_batch_logs",
                "Logs per stored batch",
                sizes,
            )?,
            logs_inserted: counter(
                "logpipeline_worker_logs_inserted_total",
                "Logs inserted into PostgreSQL",
            )?,
            logs_duplicate: counter(
                "logpipeline_worker_logs_duplicate_total",
                "Logs skipped because they were stored already (re-delivered entries)",
            )?,
            insert_duration: histogram(
                "logpipeline_worker_insert_duration_seconds",
                "Time to insert one batch",
                prometheus::exponential_buckets(0.0005, 2.0, 16)?,
            )?,
            insert_retries: counter(
                "logpipeline_worker_insert_retries_total",
                "Batch inserts that failed for a reason other than the data and were retried",
            )?,
            entries_acked: counter(
                "logpipeline_worker_entries_acked_total",
                "Stream entries acknowledged after commit",
            )?,
            entries_claimed: counter(
                "logpipeline_worker_entries_claimed_total",
                "Stream entries claimed from consumers that stopped acknowledging",
            )?,
            dead_lettered,
            redis_duration,
            redis_errors: counter(
                "logpipeline_worker_redis_errors_total",
                "Failed Redis calls",
            )?,
            entries_trimmed: counter(
                "logpipeline_worker_entries_trimmed_total",
                "Acknowledged entries trimmed from the stream",
            )?,
            stream_length: gauge("logpipeline_worker_stream_length", "Entries in the stream")?,
            group_lag: gauge(
                "logpipeline_worker_group_lag",
                "Stream entries not yet delivered to any consumer",
            )?,
            group_pending: gauge(
                "logpipeline_worker_group_pending",
                "Stream entries delivered and not yet acknowledged",
            )?,
            oldest_pending_age,
            shard_length,
            shard_lag,
            shard_pending,
            logs_expired: counter(
                "logpipeline_worker_logs_expired_total",
                "Logs not stored because they were received longer ago than the retention",
            )?,
            partitions: gauge(
                "logpipeline_worker_partitions",
                "Partitions of the logs table, as the last upkeep pass found them",
            )?,
            partitions_dropped: counter(
                "logpipeline_worker_partitions_dropped_total",
                "Partitions of the logs table dropped past the retention",
            )?,
            storage_upkeep_errors: counter(
                "logpipeline_worker_storage_upkeep_errors_total",
                "Upkeep passes of the logs table (partitions ahead, retention) that failed",
            )?,
            compacted_rows: counter(
                "logpipeline_worker_compacted_rows_total",
                "Rows of logs moved into chunks",
            )?,
            chunks_written: counter(
                "logpipeline_worker_chunks_written_total",
                "Chunks written, by compaction and by merging small chunks",
            )?,
            chunks_merged: counter(
                "logpipeline_worker_chunks_merged_total",
                "Small chunks merged into larger ones",
            )?,
            compaction_duration: histogram(
                "logpipeline_worker_compaction_duration_seconds",
                "Time of each compaction pass",
                prometheus::exponential_buckets(0.01, 2.0, 14)?,
            )?,
            compaction_errors: counter(
                "logpipeline_worker_compaction_errors_total",
                "Compaction passes that failed",
            )?,
            watermark_age,
            registry,
        })
    }

    /// Counts one dead-lettered entry.
    pub fn dead_lettered(&self, reason: DeadLetterReason) {
        self.dead_lettered
            .with_label_values(&[reason.label()])
            .inc();
    }

    /// Records the time of a Redis call.
    pub fn redis_call(&self, command: &str, took: std::time::Duration) {
        self.redis_duration
            .with_label_values(&[command])
            .observe(took.as_secs_f64());
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        logpipeline_core::metrics::render(&self.registry)
    }
}

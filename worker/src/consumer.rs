//! One consumer of the group: read a batch, store it, acknowledge it, repeat.
//!
//! Acknowledgement comes only after PostgreSQL has committed, and inserts are idempotent
//! on each log's id, so a consumer may die at any point without losing or duplicating a
//! log: its unacknowledged entries are claimed by another consumer (or re-read by its
//! successor of the same name) and stored again, which adds nothing already stored.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use logpipeline_core::codec;
use logpipeline_core::generations::{self, Kind};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::metrics::{DeadLetterReason, Metrics};
use crate::store::{Decoded, Outcome, Rejection, Store};
use crate::stream::{Stream, StreamEntry};

/// How long a read of a shard being drained waits for entries.
const DRAIN_BLOCK: Duration = Duration::from_millis(100);

/// How a consumer behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Most entries per batch.
    pub batch_size: u32,
    /// How long a read waits for new entries.
    pub block: Duration,
    /// How long an entry may stay unacknowledged before it is claimed.
    pub claim_idle: Duration,
    /// Deliveries after which a failing entry is dead-lettered.
    pub max_deliveries: u32,
}

/// One consumer of the group.
pub struct Consumer {
    /// Its name in the group.
    pub name: Arc<str>,
    /// Its connection to the stream (its own: reads block it).
    pub stream: Stream,
    /// The `logs` table.
    pub store: Store,
    /// The worker's metrics.
    pub metrics: Metrics,
    /// How it behaves.
    pub settings: Settings,
    /// Cancelled when the worker is asked to stop.
    pub shutdown: CancellationToken,
    /// Set when a Redis call failed: it then reads its own unacknowledged entries again.
    pub(crate) recovering: bool,
}

impl Consumer {
    /// Consumes until shutdown is requested, then finishes the batch in hand.
    pub async fn run(self) {
        self.consume(false).await;
    }

    /// Stores every entry of a shard that is no longer in use, then deletes it: reads
    /// until nothing is left, claims what other consumers left behind, and returns once
    /// the shard is gone (or on shutdown).
    pub async fn drain(self) {
        self.consume(true).await;
    }

    /// Reads, stores and acknowledges until shutdown; when `drain`, until the shard is
    /// drained and deleted too.
    async fn consume(mut self, drain: bool) {
        info!(consumer = %self.name, stream = self.stream.key(), drain, "consumer started");
        let mut rejected = JoinSet::new();
        self.resume_own_pending(&mut rejected).await;
        let claim_every = (self.settings.claim_idle / 2).max(Duration::from_millis(100));
        let block = if drain {
            DRAIN_BLOCK
        } else {
            self.settings.block
        };
        let mut next_claim = Instant::now();
        while !self.shutdown.is_cancelled() {
            // Redis failed under an earlier call: what this consumer read and could not
            // acknowledge is its own to finish now Redis answers again, not another's to
            // claim once the claim timeout has passed.
            // Entries being retried for a rejection are pending too: they are read again
            // with the rest rather than retried twice.
            if std::mem::take(&mut self.recovering) {
                rejected.abort_all();
                self.resume_own_pending(&mut rejected).await;
                continue;
            }
            if Instant::now() >= next_claim {
                next_claim = Instant::now() + claim_every;
                self.claim_from_dead_consumers(&mut rejected).await;
            }
            let started = Instant::now();
            let read = self
                .stream
                .read_new(&self.name, self.settings.batch_size, block)
                .await;
            match read {
                // An empty read waited out its block time: not a latency worth recording.
                Ok(entries) if entries.is_empty() => {
                    if drain && self.retired().await {
                        break;
                    }
                }
                Ok(entries) => {
                    self.metrics.redis_call("XREADGROUP", started.elapsed());
                    self.process(entries, &mut rejected).await;
                }
                Err(error) => self.redis_failed(&error, "read").await,
            }
            while rejected.try_join_next().is_some() {}
        }
        // Entries being retried for a rejection stay pending and will be claimed later.
        rejected.abort_all();
        info!(consumer = %self.name, "consumer stopped");
    }

    /// Deletes the drained shard this consumer reads, if every entry is stored; true
    /// when it is gone.
    async fn retired(&mut self) -> bool {
        match self.stream.retire_if_drained().await {
            Ok(gone) => {
                if gone {
                    info!(consumer = %self.name, stream = self.stream.key(), "drained and removed a shard no longer in use");
                }
                gone
            }
            Err(error) => {
                self.redis_failed(&error, "remove a drained shard").await;
                false
            }
        }
    }

    /// Stores the entries an earlier process of the same name read and did not
    /// acknowledge.
    async fn resume_own_pending(&mut self, rejected: &mut JoinSet<()>) {
        let mut after = "0".to_owned();
        while !self.shutdown.is_cancelled() {
            let read = self
                .stream
                .read_own_pending(&self.name, self.settings.batch_size, &after)
                .await;
            match read {
                Ok(entries) => {
                    let Some(last) = entries.last() else {
                        return;
                    };
                    after.clone_from(&last.id);
                    info!(consumer = %self.name, entries = entries.len(), "resuming unacknowledged entries");
                    self.process(entries, rejected).await;
                }
                Err(error) => {
                    self.redis_failed(&error, "read own pending entries").await;
                    return;
                }
            }
        }
    }

    /// Claims the entries of consumers that stopped acknowledging (presumed dead) and
    /// stores them; entries delivered too often already go to the dead-letter stream.
    async fn claim_from_dead_consumers(&mut self, rejected: &mut JoinSet<()>) {
        let claimed = match self
            .stream
            .claim_idle(
                &self.name,
                self.settings.claim_idle,
                self.settings.batch_size,
            )
            .await
        {
            Ok(claimed) if claimed.is_empty() => return,
            Ok(claimed) => claimed,
            Err(error) => return self.redis_failed(&error, "claim").await,
        };
        self.metrics.entries_claimed.inc_by(claimed.len() as u64);
        info!(consumer = %self.name, entries = claimed.len(), "claimed entries from an idle consumer");
        let ids: Vec<String> = claimed.iter().map(|entry| entry.id.clone()).collect();
        let deliveries = match self.stream.deliveries(&ids).await {
            Ok(deliveries) => deliveries,
            Err(error) => return self.redis_failed(&error, "count deliveries").await,
        };
        let max = u64::from(self.settings.max_deliveries);
        let mut to_store = Vec::with_capacity(claimed.len());
        for entry in claimed {
            let delivered = deliveries
                .iter()
                .find(|(id, _)| *id == entry.id)
                .map_or(0, |(_, n)| *n);
            if delivered > max {
                let reason = format!("delivered {delivered} times without being stored");
                self.dead_letter(
                    &entry,
                    &reason,
                    delivered,
                    DeadLetterReason::TooManyDeliveries,
                )
                .await;
            } else {
                to_store.push(entry);
            }
        }
        if !to_store.is_empty() {
            self.process(to_store, rejected).await;
        }
    }

    /// Decodes, stores and acknowledges `entries`. Entries PostgreSQL rejects are retried
    /// in the background, apart from the rest.
    async fn process(&mut self, entries: Vec<StreamEntry>, rejected: &mut JoinSet<()>) {
        let ids: Vec<String> = entries.iter().map(|entry| entry.id.clone()).collect();
        match self.stream.replicated(&self.name, &ids).await {
            Ok(true) => {}
            Ok(false) => {
                warn!(consumer = %self.name, entries = entries.len(), "the replicas do not hold the entries read yet; they stay pending until claimed again");
                return self.wait_a_moment().await;
            }
            Err(error) => return self.redis_failed(&error, "wait for the replicas").await,
        }
        let span = info_span!("batch", consumer = %self.name, entries = entries.len());
        async {
            let mut decoded = Vec::with_capacity(entries.len());
            for raw in entries {
                let checked = match codec::decode(&raw.fields) {
                    Ok(entry) => Decoded::new(raw, entry),
                    Err(error) => Err((raw, error.to_string())),
                };
                match checked {
                    Ok(entry) => decoded.push(entry),
                    Err((raw, reason)) => {
                        // Decoding is deterministic: no delivery will ever succeed.
                        self.dead_letter(&raw, &reason, 1, DeadLetterReason::Undecodable)
                            .await;
                    }
                }
            }
            if decoded.is_empty() {
                return;
            }
            let Some(outcome) = self.store_retrying(&decoded).await else {
                return;
            };
            let stored: Vec<&Decoded> = outcome
                .stored
                .iter()
                .map(|&index| &decoded[index])
                .collect();
            self.acknowledge(&stored).await;
            self.metrics.batches.inc();
            self.metrics.batch_entries.observe(stored.len() as f64);
            self.metrics.batch_logs.observe(outcome.logs as f64);
            self.metrics.logs_inserted.inc_by(outcome.inserted);
            self.metrics
                .logs_duplicate
                .inc_by(outcome.logs - outcome.inserted);
            if outcome.expired > 0 {
                self.metrics.logs_expired.inc_by(outcome.expired);
                warn!(
                    logs = outcome.expired,
                    "logs received longer ago than the retention were not stored"
                );
            }
            debug!(
                logs = outcome.logs,
                inserted = outcome.inserted,
                "batch stored"
            );
            for (index, rejection) in outcome.rejected {
                warn!(entry = %decoded[index].raw.id, reason = %rejection.reason, logs = ?rejection.logs, "PostgreSQL rejected logs of an entry");
                if rejection.inserted > 0 {
                    self.metrics.logs_inserted.inc_by(rejection.inserted);
                    let retired = retired_by(std::iter::once(&decoded[index]));
                    if let Err(error) = self.stream.retire(&retired).await {
                        self.redis_failed(&error, "retire cached reads").await;
                    }
                }
                rejected.spawn(
                    Rejected {
                        consumer: self.name.clone(),
                        stream: self.stream.clone(),
                        store: self.store.clone(),
                        metrics: self.metrics.clone(),
                        max_deliveries: self.settings.max_deliveries,
                        decoded: decoded[index].clone(),
                        rejection,
                    }
                    .settle(),
                );
            }
        }
        .instrument(span)
        .await;
    }

    /// Stores `decoded`, retrying with backoff while PostgreSQL is unavailable and keeping
    /// the entries claimed meanwhile. Gives up (None) only once shutdown is requested;
    /// the entries then stay pending and are claimed by another worker.
    async fn store_retrying(&self, decoded: &[Decoded]) -> Option<Outcome> {
        let ids: Vec<String> = decoded.iter().map(|d| d.raw.id.clone()).collect();
        let attempts = AtomicU32::new(0);
        let attempt = || async {
            if attempts.fetch_add(1, Ordering::Relaxed) > 0 {
                // Still ours: without this, a long outage would let others claim them.
                if let Err(error) = self.stream.clone().touch(&self.name, &ids).await {
                    debug!(%error, "cannot refresh the claim on the batch");
                }
            }
            let started = Instant::now();
            let result = self.store.store(decoded).await;
            if result.is_ok() {
                self.metrics
                    .insert_duration
                    .observe(started.elapsed().as_secs_f64());
            }
            result
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times();
        let stored = attempt
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(|_| !self.shutdown.is_cancelled())
            .notify(|error, delay| {
                self.metrics.insert_retries.inc();
                warn!(%error, ?delay, "cannot store the batch; retrying");
            })
            .await;
        match stored {
            Ok(outcome) => Some(outcome),
            Err(error) => {
                warn!(%error, entries = ids.len(), "stopping with the batch unstored; it stays pending");
                None
            }
        }
    }

    async fn acknowledge(&mut self, stored: &[&Decoded]) {
        let ids: Vec<String> = stored
            .iter()
            .map(|decoded| decoded.raw.id.clone())
            .collect();
        match self
            .stream
            .ack(&ids, &retired_by(stored.iter().copied()))
            .await
        {
            Ok(acked) => self.metrics.entries_acked.inc_by(acked),
            // Stored but not acknowledged: the entries will be delivered again and skipped
            // as duplicates.
            Err(error) => self.redis_failed(&error, "acknowledge").await,
        }
    }

    async fn dead_letter(
        &mut self,
        entry: &StreamEntry,
        reason: &str,
        deliveries: u64,
        kind: DeadLetterReason,
    ) {
        match self
            .stream
            .dead_letter(entry, reason, deliveries, &self.name)
            .await
        {
            Ok(true) => {
                self.metrics.dead_lettered(kind);
                warn!(entry = %entry.id, %reason, "moved an entry to the dead-letter stream");
            }
            Ok(false) => {}
            Err(error) => self.redis_failed(&error, "dead-letter").await,
        }
    }

    /// Counts and logs a failed Redis call, and pauses briefly unless stopping.
    /// Pauses a second, or until shutdown.
    async fn wait_a_moment(&self) {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = self.shutdown.cancelled() => {}
        }
    }

    async fn redis_failed(&mut self, error: &redis::RedisError, doing: &str) {
        self.recovering = true;
        self.metrics.redis_errors.inc();
        warn!(%error, consumer = %self.name, doing, "Redis call failed");
        if error.code() == Some("NOGROUP") {
            warn!(consumer = %self.name, "the consumer group is gone (Redis lost its data?): creating it again");
            if let Err(error) = self.stream.recreate_group().await {
                warn!(%error, consumer = %self.name, "the consumer group could not be created");
            }
        }
        self.wait_a_moment().await;
    }
}

/// An entry with logs PostgreSQL rejected, retried apart from the batch: each retry is a
/// new delivery (counted by Redis), and once it has been delivered `max_deliveries` times
/// its refused logs go to the dead-letter stream (its other logs are stored already). The
/// consumer meanwhile goes on with other entries.
struct Rejected {
    consumer: Arc<str>,
    stream: Stream,
    store: Store,
    metrics: Metrics,
    max_deliveries: u32,
    decoded: Decoded,
    rejection: Rejection,
}

impl Rejected {
    async fn settle(mut self) {
        let id = self.decoded.raw.id.clone();
        let mut delay = Duration::from_millis(100);
        loop {
            let delivered = match self.stream.deliveries(std::slice::from_ref(&id)).await {
                Ok(deliveries) => match deliveries.first() {
                    Some((_, delivered)) => *delivered,
                    None => return,
                },
                Err(error) => {
                    self.metrics.redis_errors.inc();
                    warn!(%error, entry = %id, "cannot count deliveries; leaving the entry pending");
                    return;
                }
            };
            if delivered >= u64::from(self.max_deliveries) {
                let held_back = self.rejection.held_back(&self.decoded);
                let reason = &self.rejection.reason;
                match self
                    .stream
                    .dead_letter(&held_back, reason, delivered, &self.consumer)
                    .await
                {
                    Ok(true) => {
                        self.metrics.dead_lettered(DeadLetterReason::Rejected);
                        warn!(entry = %id, %reason, logs = ?self.rejection.logs, delivered, "moved refused logs to the dead-letter stream");
                    }
                    Ok(false) => {}
                    Err(error) => {
                        self.metrics.redis_errors.inc();
                        warn!(%error, entry = %id, "cannot dead-letter; leaving the entry pending");
                    }
                }
                return;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(2));
            match self.stream.redeliver(&self.consumer, &id).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => {
                    self.metrics.redis_errors.inc();
                    warn!(%error, entry = %id, "cannot redeliver; leaving the entry pending");
                    return;
                }
            }
            match self.store.store(std::slice::from_ref(&self.decoded)).await {
                Ok(outcome) => match outcome.rejected.into_iter().next() {
                    Some((_, rejection)) => {
                        self.metrics.logs_inserted.inc_by(rejection.inserted);
                        self.rejection = rejection;
                    }
                    None => {
                        let retired = retired_by(std::iter::once(&self.decoded));
                        if let Ok(acked) =
                            self.stream.ack(std::slice::from_ref(&id), &retired).await
                        {
                            self.metrics.entries_acked.inc_by(acked);
                        }
                        self.metrics.logs_inserted.inc_by(outcome.inserted);
                        info!(entry = %id, "a previously rejected entry was stored");
                        return;
                    }
                },
                // PostgreSQL is unavailable: the entry stays pending and is claimed later.
                Err(_) => return,
            }
        }
    }
}

/// The generations a commit of `entries` retires: those of the devices, services and
/// traces whose logs they hold, each of its tenant.
fn retired_by<'a>(entries: impl Iterator<Item = &'a Decoded>) -> BTreeSet<(Kind, String)> {
    let mut retired = BTreeSet::new();
    for decoded in entries {
        generations::retired(&decoded.entry.tenant, &decoded.entry.logs, &mut retired);
    }
    retired
}

//! Figures per phase of a run (`--phase-secs`): the run's time cut into equal phases,
//! each request counted in the phase of its intended send time, so that what happened
//! around a fault (`logpipeline bench soak`) is seen apart from the calm before it.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::report::Latency;

/// What one phase measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Phase {
    /// Its number, from 0.
    pub index: u32,
    /// When it began, in seconds since the start of the run.
    pub from_secs: f64,
    /// When it ended.
    pub to_secs: f64,
    /// Requests due in it.
    pub requests: u64,
    /// Logs of those that were accepted.
    pub accepted_logs: u64,
    /// Attempts sent again, beyond each request's first (with `--retry`).
    pub retries: u64,
    /// Requests that were not accepted in the end.
    pub failed: u64,
    /// Latency of its requests, from the intended send time to the last answer.
    pub latency_ms: Latency,
    /// The same by the shard each device's logs go to, when the run knows them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardFigures>,
}

/// What a phase measured of the requests of one shard's devices.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardFigures {
    /// Requests due in the phase.
    pub requests: u64,
    /// Requests that were not accepted in the end.
    pub failed: u64,
    /// Their latency.
    pub latency_ms: Latency,
}

/// Running totals of a phase, or of a shard in it.
#[derive(Clone)]
struct Tally {
    latencies: Histogram<u64>,
    requests: u64,
    accepted: u64,
    retries: u64,
    failed: u64,
}

impl Tally {
    fn count(&mut self, request: &Finished) {
        self.latencies
            .saturating_record(request.latency.as_micros().try_into().unwrap_or(u64::MAX));
        self.requests += 1;
        self.retries += request.retries;
        if request.accepted {
            self.accepted += 1;
        } else {
            self.failed += 1;
        }
    }
}

/// The phases of a run, filled in as requests finish.
pub struct Phases {
    length: Duration,
    shards: usize,
    empty: Tally,
    /// Per phase: its tally, then one per shard.
    tallies: Mutex<Vec<Vec<Tally>>>,
}

/// What became of one request, for its phase.
#[derive(Debug, Clone, Copy)]
pub struct Finished {
    /// Its intended send time, since the start of the run.
    pub due: Duration,
    /// From then to its last answer.
    pub latency: Duration,
    /// Attempts beyond the first.
    pub retries: u64,
    /// Whether it was accepted in the end.
    pub accepted: bool,
    /// The shard its device's logs go to, when the run knows shards.
    pub shard: Option<usize>,
}

impl Phases {
    /// Phases of `length` each, telling apart `shards` shards (0 for none).
    pub fn new(length: Duration, shards: usize) -> anyhow::Result<Self> {
        Ok(Self {
            length: length.max(Duration::from_millis(1)),
            shards,
            empty: Tally {
                latencies: Histogram::new_with_bounds(1, 3_600_000_000, 3)?,
                requests: 0,
                accepted: 0,
                retries: 0,
                failed: 0,
            },
            tallies: Mutex::new(Vec::new()),
        })
    }

    /// Counts `request` in its phase.
    pub fn record(&self, request: Finished) {
        let index = (request.due.as_nanos() / self.length.as_nanos()) as usize;
        // Counting cannot leave a tally half-updated: a poisoned lock is usable.
        let mut tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
        while tallies.len() <= index {
            tallies.push(vec![self.empty.clone(); 1 + self.shards]);
        }
        let phase = &mut tallies[index];
        phase[0].count(&request);
        if let Some(shard) = request.shard.filter(|&shard| shard < self.shards) {
            phase[1 + shard].count(&request);
        }
    }

    /// Every phase so far, with `logs_per_request` logs in each request.
    pub fn report(&self, logs_per_request: u64) -> Vec<Phase> {
        let tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
        let length = self.length.as_secs_f64();
        tallies
            .iter()
            .enumerate()
            .map(|(index, phase)| Phase {
                index: index as u32,
                from_secs: index as f64 * length,
                to_secs: (index + 1) as f64 * length,
                requests: phase[0].requests,
                accepted_logs: phase[0].accepted * logs_per_request,
                retries: phase[0].retries,
                failed: phase[0].failed,
                latency_ms: Latency::of(&phase[0].latencies),
                shards: phase[1..]
                    .iter()
                    .map(|shard| ShardFigures {
                        requests: shard.requests,
                        failed: shard.failed,
                        latency_ms: Latency::of(&shard.latencies),
                    })
                    .collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finished(due_ms: u64, latency_ms: u64, retries: u64, accepted: bool) -> Finished {
        Finished {
            due: Duration::from_millis(due_ms),
            latency: Duration::from_millis(latency_ms),
            retries,
            accepted,
            shard: Some(usize::from(retries > 0)),
        }
    }

    #[test]
    fn each_request_counts_in_the_phase_it_was_due_in() -> anyhow::Result<()> {
        let phases = Phases::new(Duration::from_secs(10), 2)?;
        phases.record(finished(500, 2, 0, true));
        // Due at the end of phase 0, answered in phase 1: it counts in phase 0.
        phases.record(finished(9_999, 4_000, 3, true));
        phases.record(finished(25_000, 1, 1, false));
        let report = phases.report(5);
        assert_eq!(report.len(), 3);
        assert_eq!(
            (
                report[0].requests,
                report[0].accepted_logs,
                report[0].retries
            ),
            (2, 10, 3)
        );
        assert!(report[0].latency_ms.max >= 3_999.0, "{:?}", report[0]);
        assert_eq!((report[1].requests, report[1].latency_ms.count), (0, 0));
        assert_eq!(
            (report[2].requests, report[2].failed, report[2].retries),
            (1, 1, 1)
        );
        assert_eq!((report[2].from_secs, report[2].to_secs), (20.0, 30.0));
        // By shard: the calm request on shard 0, the retried ones on shard 1.
        let shards = &report[0].shards;
        assert_eq!((shards[0].requests, shards[1].requests), (1, 1));
        assert!(shards[0].latency_ms.max < 3.0 && shards[1].latency_ms.max >= 3_999.0);
        assert_eq!(
            (report[2].shards[0].requests, report[2].shards[1].failed),
            (0, 1)
        );
        Ok(())
    }
}

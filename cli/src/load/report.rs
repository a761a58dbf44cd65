//! What a run measured: the figures printed at the end and written as JSON, and the
//! progress line printed each second.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::phases::Phase;

/// The result of a load run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The run id every log carries as `log_data.run`.
    pub run: String,
    /// Where the requests went (`host:port` and path).
    pub target: String,
    /// `closed` (as fast as answered) or `open` (constant arrival rate).
    pub mode: String,
    /// The open loop's target rate, in logs/s.
    pub target_logs_per_sec: Option<u64>,
    /// Simulated devices.
    pub devices: u64,
    /// Concurrent connections.
    pub connections: u32,
    /// Logs per request.
    pub logs_per_request: u64,
    /// Seconds at the start whose latencies are left out.
    #[serde(default)]
    pub warmup_secs: u64,
    /// Length of each message, in bytes.
    pub message_bytes: usize,
    /// How long requests were sent, in seconds.
    pub elapsed_secs: f64,
    /// Requests sent.
    pub requests: u64,
    /// Requests answered 200.
    pub accepted_requests: u64,
    /// Logs in those requests.
    pub accepted_logs: u64,
    /// Requests answered 503 with `Retry-After`: refused by backpressure, not lost, and
    /// not retried.
    pub refused_requests: u64,
    /// Requests that failed otherwise: any other status, no answer in time, a broken
    /// connection, or a 200 whose answer does not hold the request's message ids.
    pub errors: u64,
    /// Attempts sent again with `--retry`, beyond each request's first.
    #[serde(default)]
    pub retries: u64,
    /// Accepted logs per second of sending.
    pub logs_per_sec: f64,
    /// Accepted requests per second of sending.
    pub requests_per_sec: f64,
    /// Latency of every request, answered or failed.
    pub latency_ms: Latency,
    /// Answers by HTTP status code, of every attempt.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests without a usable answer, by cause (`timeout`, `connect`, `io`,
    /// `bad_answer`).
    pub failures: BTreeMap<String, u64>,
    /// One sample per second.
    pub timeline: Vec<Sample>,
    /// Figures per phase, with `--phase-secs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<Phase>,
    /// What end-to-end mode found in PostgreSQL and the stream.
    pub end_to_end: Option<EndToEnd>,
}

/// Latency percentiles in milliseconds, from an HDR histogram of microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Requests measured.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
}

impl Latency {
    /// The percentiles of `histogram`, which holds microseconds.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            count: histogram.len(),
            mean: histogram.mean() / 1000.0,
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p95: ms(histogram.value_at_quantile(0.95)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// The state of the run at one moment, cumulative since its start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the start.
    pub t_secs: f64,
    /// Requests sent.
    pub requests: u64,
    /// Logs accepted.
    pub accepted_logs: u64,
    /// Refused and failed requests.
    pub errors: u64,
    /// 99th percentile latency so far, in milliseconds.
    pub p99_ms: f64,
    /// Logs of the run stored in PostgreSQL (end-to-end mode).
    pub persisted_logs: Option<u64>,
    /// Entries not yet delivered to the consumer group (end-to-end mode).
    pub lag: Option<u64>,
    /// Entries delivered but not acknowledged (end-to-end mode).
    pub pending: Option<u64>,
}

/// What end-to-end mode found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EndToEnd {
    /// Rows of the run in the `logs` table.
    pub rows: u64,
    /// Accepted logs found in the table.
    pub persisted_logs: u64,
    /// Accepted logs not in the table.
    pub lost: u64,
    /// Rows beyond the first for the same log (same device and sequence number).
    pub duplicated: u64,
    /// Rows of requests that got no usable answer (timeouts, 5xx): stored, though the
    /// device was not told. Not an error.
    pub stored_unconfirmed: u64,
    /// Rows of logs that were refused (4xx) or never sent: must be 0.
    pub stored_unsent: u64,
    /// Whether the backlog drained (lag and pending 0) before the drain timeout.
    pub drained: bool,
    /// Seconds from the last accepted answer until everything was persisted.
    pub drain_secs: Option<f64>,
    /// Accepted logs per second from the start until everything was persisted.
    pub persisted_logs_per_sec: f64,
    /// Logs persisted per second while requests were being sent.
    pub persisted_during_load_logs_per_sec: f64,
    /// How fast the backlog (lag + pending, in logs) grew over the second half of the
    /// load, in logs/s: about 0 when the workers keep up.
    pub backlog_growth_logs_per_sec: f64,
    /// The largest backlog seen, in logs.
    pub max_backlog_logs: u64,
    /// Whether persistence kept up with acceptance: the backlog grew by less than 1 % of
    /// the accepted rate.
    pub keeps_up: bool,
    /// What watching cost: polls made and their mean and slowest duration.
    pub watch_polls: u64,
    /// Mean duration of one poll (PostgreSQL and Redis), in milliseconds.
    pub watch_poll_mean_ms: f64,
    /// Slowest poll, in milliseconds.
    pub watch_poll_max_ms: f64,
    /// How long the final row-by-row verification took, in seconds.
    pub verify_secs: f64,
}

impl EndToEnd {
    /// Whether every accepted log was stored exactly once.
    pub fn exactly_once(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.stored_unsent == 0
    }
}

impl Report {
    /// The figures as text, for the terminal.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let l = &self.latency_ms;
        let rate = self
            .target_logs_per_sec
            .map_or_else(String::new, |rate| format!(" at {rate} logs/s"));
        // Writing into a String cannot fail.
        let _ = writeln!(
            out,
            "run {} ({} loop{rate}): {} devices, {} connections, {} logs/request, {:.1} s → {}",
            self.run,
            self.mode,
            self.devices,
            self.connections,
            self.logs_per_request,
            self.elapsed_secs,
            self.target,
        );
        let _ = writeln!(
            out,
            "  accepted   {:.0} logs/s, {:.0} requests/s ({} logs in {} requests)",
            self.logs_per_sec, self.requests_per_sec, self.accepted_logs, self.accepted_requests
        );
        let warmup = if self.warmup_secs > 0 {
            format!(" (after the first {} s)", self.warmup_secs)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  latency ms p50 {:.2}  p90 {:.2}  p95 {:.2}  p99 {:.2}  p99.9 {:.2}  max {:.2}{warmup}",
            l.p50, l.p90, l.p95, l.p99, l.p999, l.max
        );
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(status, count)| format!("{status}: {count}"))
            .chain(
                self.failures
                    .iter()
                    .map(|(cause, count)| format!("{cause}: {count}")),
            )
            .collect();
        let retried = if self.retries > 0 {
            format!(", {} attempts sent again", self.retries)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  answers    {} (refused {}, errors {}{retried})",
            statuses.join(", "),
            self.refused_requests,
            self.errors
        );
        for phase in &self.phases {
            let l = &phase.latency_ms;
            let shards: Vec<String> = phase
                .shards
                .iter()
                .map(|shard| format!("{:.2}", shard.latency_ms.p99))
                .collect();
            let shards = if shards.is_empty() {
                String::new()
            } else {
                format!("; p99 by shard {} ms", shards.join(" / "))
            };
            let _ = writeln!(
                out,
                "  phase {:>3}  {:>6.0}–{:<6.0} s  {} logs accepted, {} requests failed, {} retries; p50 {:.2}  p99 {:.2}  max {:.2} ms{shards}",
                phase.index,
                phase.from_secs,
                phase.to_secs,
                phase.accepted_logs,
                phase.failed,
                phase.retries,
                l.p50,
                l.p99,
                l.max
            );
        }
        if let Some(e2e) = &self.end_to_end {
            let drain = e2e
                .drain_secs
                .map_or_else(|| "did not drain".to_owned(), |secs| format!("{secs:.2} s"));
            let _ = writeln!(
                out,
                "  persisted  {:.0} logs/s overall, {:.0} logs/s during load; drain after last accept {drain}",
                e2e.persisted_logs_per_sec, e2e.persisted_during_load_logs_per_sec
            );
            let _ = writeln!(
                out,
                "  backlog    max {} logs, growth {:.0} logs/s ({})",
                e2e.max_backlog_logs,
                e2e.backlog_growth_logs_per_sec,
                if e2e.keeps_up {
                    "keeps up"
                } else {
                    "falls behind"
                }
            );
            let _ = writeln!(
                out,
                "  verified   {} rows: {} of {} accepted logs stored, lost {}, duplicated {}, stored unconfirmed {}, stored unsent {} ({:.1} s)",
                e2e.rows,
                e2e.persisted_logs,
                self.accepted_logs,
                e2e.lost,
                e2e.duplicated,
                e2e.stored_unconfirmed,
                e2e.stored_unsent,
                e2e.verify_secs
            );
            let _ = writeln!(
                out,
                "  watching   {} polls, mean {:.2} ms, max {:.2} ms",
                e2e.watch_polls, e2e.watch_poll_mean_ms, e2e.watch_poll_max_ms
            );
        }
        out
    }
}

/// The progress line for `now` after `previous` (one second earlier).
pub fn progress_line(previous: &Sample, now: &Sample) -> String {
    let secs = (now.t_secs - previous.t_secs).max(1e-3);
    let per_sec = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
    let mut line = format!(
        "{:>6.1}s  accepted {:>8.0} logs/s  {:>7.0} req/s  errors {:>5}  p99 {:>7.2} ms",
        now.t_secs,
        per_sec(previous.accepted_logs, now.accepted_logs),
        per_sec(previous.requests, now.requests),
        now.errors,
        now.p99_ms,
    );
    if let (Some(before), Some(persisted)) = (previous.persisted_logs, now.persisted_logs) {
        let _ = write!(
            line,
            "  persisted {:>8.0} logs/s",
            per_sec(before, persisted)
        );
    }
    if let (Some(lag), Some(pending)) = (now.lag, now.pending) {
        let _ = write!(line, "  lag {lag:>7}  pending {pending:>6}");
    }
    line
}

/// The least-squares slope of `points` (x, y): how fast y grows per unit of x; 0 for
/// fewer than two distinct x.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let mean_x = points.iter().map(|(x, _)| x).sum::<f64>() / n;
    let mean_y = points.iter().map(|(_, y)| y).sum::<f64>() / n;
    let (mut covariance, mut variance) = (0.0, 0.0);
    for (x, y) in points {
        covariance += (x - mean_x) * (y - mean_y);
        variance += (x - mean_x) * (x - mean_x);
    }
    if variance == 0.0 {
        0.0
    } else {
        covariance / variance
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_secs: f64, accepted_logs: u64) -> Sample {
        Sample {
            t_secs,
            requests: accepted_logs / 5,
            accepted_logs,
            errors: 0,
            p99_ms: 2.5,
            persisted_logs: None,
            lag: None,
            pending: None,
        }
    }

    #[test]
    fn percentiles_come_from_the_histogram_in_milliseconds() {
        let mut histogram = Histogram::<u64>::new(3).unwrap();
        for micros in 1..=1000 {
            histogram.record(micros * 10).unwrap();
        }
        let latency = Latency::of(&histogram);
        assert_eq!(latency.count, 1000);
        assert!((latency.p50 - 5.0).abs() < 0.01, "{latency:?}");
        assert!((latency.p99 - 9.9).abs() < 0.01, "{latency:?}");
        assert!((latency.p999 - 9.99).abs() < 0.01, "{latency:?}");
        assert!((latency.max - 10.0).abs() < 0.01, "{latency:?}");
    }

    #[test]
    fn the_progress_line_shows_rates_over_the_last_interval() {
        let line = progress_line(&sample(1.0, 100_000), &sample(2.0, 250_000));
        assert!(line.contains("accepted   150000 logs/s"), "{line}");
        assert!(line.contains("30000 req/s"), "{line}");
        assert!(!line.contains("persisted"), "{line}");
    }

    #[test]
    fn slope_is_the_growth_per_second() {
        assert_eq!(slope(&[]), 0.0);
        assert_eq!(slope(&[(1.0, 5.0), (1.0, 9.0)]), 0.0);
        let growing: Vec<_> = (0..10)
            .map(|t| (t as f64, 100.0 + 50.0 * t as f64))
            .collect();
        assert!((slope(&growing) - 50.0).abs() < 1e-9);
    }

    #[test]
    fn the_json_report_round_trips() {
        let report = Report {
            run: "r".into(),
            target: "127.0.0.1:8080/api/logs/batch".into(),
            mode: "closed".into(),
            target_logs_per_sec: None,
            devices: 100,
            connections: 200,
            logs_per_request: 5,
            warmup_secs: 0,
            message_bytes: 64,
            elapsed_secs: 30.0,
            requests: 10,
            accepted_requests: 9,
            accepted_logs: 45,
            refused_requests: 1,
            errors: 0,
            retries: 2,
            logs_per_sec: 1.5,
            requests_per_sec: 0.3,
            latency_ms: Latency::default(),
            statuses: BTreeMap::from([(200, 9), (503, 1)]),
            failures: BTreeMap::new(),
            timeline: vec![sample(1.0, 45)],
            phases: vec![Phase {
                index: 0,
                from_secs: 0.0,
                to_secs: 30.0,
                requests: 10,
                accepted_logs: 45,
                retries: 2,
                failed: 1,
                latency_ms: Latency::default(),
                shards: Vec::new(),
            }],
            end_to_end: None,
        };
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(serde_json::from_str::<Report>(&json).unwrap(), report);
        assert!(
            report
                .render()
                .contains("200: 9, 503: 1 (refused 1, errors 0, 2 attempts sent again)")
        );
        assert!(
            report
                .render()
                .contains("45 logs accepted, 1 requests failed, 2 retries")
        );
    }
}

//! The load generator: simulated devices posting logs to a LogPipeline api, closed loop
//! (as fast as answered) or open loop (constant arrival rate), with latency in an HDR
//! histogram; in end-to-end mode it also watches PostgreSQL and the stream and checks
//! that every accepted log was stored exactly once.
//!
//! [`run`] is the whole of it; `logpipeline load` is its command line and
//! `logpipeline bench` runs it against a local stack.

mod body;
mod generator;
mod ledger;
mod phases;
mod plan;
mod report;
mod schedule;
mod watch;

use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::time::MissedTickBehavior;

use crate::load::generator::{Generator, Tally};
use crate::load::ledger::{Fate, Ledger};
pub use crate::load::phases::Phase;
pub use crate::load::plan::{LoadOptions, Plan, Protocol};
pub use crate::load::report::{EndToEnd, Latency, Report, Sample};
use crate::load::watch::{Seen, StreamKeys, Watch};

/// How often progress is sampled and printed.
const TICK: Duration = Duration::from_secs(1);
/// How often the backlog is checked while waiting for it to drain.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// Runs the load `options` describe and reports what it measured; prints a progress
/// line each second unless `options.quiet`.
pub async fn run(options: &LoadOptions) -> Result<Report> {
    let plan = Plan::new(options)?;
    let mut watch = match (&options.database_url, &options.redis_url) {
        (Some(database_url), Some(redis_url)) => Some(
            Watch::connect(
                database_url,
                redis_url,
                &StreamKeys {
                    name: &options.stream,
                    shards: options.stream_shards,
                    cluster: options.redis_cluster,
                },
                &options.group,
                &plan.run,
            )
            .await?,
        ),
        _ => None,
    };
    let mut progress = Progress {
        quiet: options.quiet,
        timeline: Vec::new(),
    };
    let mut generator = Generator::start(&plan)?;
    let start = generator.start_time();
    let mut ticks = tokio::time::interval_at((start + TICK).into(), TICK);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut fates = Vec::new();
    loop {
        tokio::select! {
            joined = generator.tasks.join_next() => match joined {
                Some(connection) => fates.extend(connection?),
                None => break,
            },
            _ = ticks.tick() => {
                let seen = poll(watch.as_mut()).await;
                let sample = sample(&generator, start, seen, plan.logs_per_request);
                progress.push(sample);
            }
        }
    }
    let sent = Sent {
        elapsed: start.elapsed(),
        issued: generator.issued(),
        fates,
        tally: generator.counters.tally(),
    };
    let histogram = generator.latencies.snapshot();
    let end_to_end = match watch.as_mut() {
        Some(watch) => {
            Some(end_to_end(watch, &generator, &mut progress, options, &plan, &sent).await?)
        }
        None => None,
    };
    let Sent { elapsed, tally, .. } = sent;
    let accepted_logs = tally.accepted_requests * plan.logs_per_request;
    let secs = elapsed.as_secs_f64();
    Ok(Report {
        run: plan.run.clone(),
        target: format!("{}{}", plan.target.authority, plan.target.path),
        mode: if plan.requests_per_sec.is_some() {
            "open"
        } else {
            "closed"
        }
        .into(),
        target_logs_per_sec: options.rate,
        warmup_secs: options.warmup_secs,
        devices: plan.devices,
        connections: plan.connections,
        logs_per_request: plan.logs_per_request,
        message_bytes: plan.message_bytes,
        elapsed_secs: secs,
        requests: tally.requests,
        accepted_requests: tally.accepted_requests,
        accepted_logs,
        refused_requests: tally.refused_requests,
        errors: tally.errors,
        retries: tally.retries,
        logs_per_sec: accepted_logs as f64 / secs,
        requests_per_sec: tally.accepted_requests as f64 / secs,
        latency_ms: Latency::of(&histogram),
        statuses: tally.statuses.into_iter().collect(),
        failures: tally
            .failures
            .into_iter()
            .map(|(cause, count)| (cause.to_owned(), count))
            .collect(),
        timeline: progress.timeline,
        phases: generator
            .phases
            .as_ref()
            .map(|phases| phases.report(plan.logs_per_request))
            .unwrap_or_default(),
        end_to_end,
    })
}

/// What the generator sent, once every connection has finished.
struct Sent {
    elapsed: Duration,
    issued: u64,
    fates: Vec<(u64, Fate)>,
    tally: Tally,
}

/// Waits for the backlog to drain, then checks every row of the run.
async fn end_to_end(
    watch: &mut Watch,
    generator: &Generator,
    progress: &mut Progress,
    options: &LoadOptions,
    plan: &Plan,
    sent: &Sent,
) -> Result<EndToEnd> {
    let start = generator.start_time();
    let load_secs = sent.elapsed.as_secs_f64();
    let at_load_end = poll(Some(watch)).await;
    let drained = drain(watch, generator, progress, options, plan).await?;
    let ledger = Ledger::new(
        plan.devices,
        plan.logs_per_request,
        sent.issued,
        sent.fates.iter().copied(),
    );
    let verify_started = Instant::now();
    let verdict = watch.verify(ledger).await?;
    let verify_secs = verify_started.elapsed().as_secs_f64();
    let finished = drained.unwrap_or_else(Instant::now);
    let last_accepted = sent.tally.last_accepted.map(|since| start + since);
    let backlog: Vec<(f64, f64)> = progress
        .timeline
        .iter()
        .filter(|s| s.t_secs >= load_secs / 2.0 && s.t_secs <= load_secs)
        .map(|s| (s.t_secs, backlog_logs(s, plan.logs_per_request) as f64))
        .collect();
    let growth = report::slope(&backlog);
    let accepted_per_sec =
        (sent.tally.accepted_requests * plan.logs_per_request) as f64 / load_secs;
    let cost = watch.cost();
    Ok(EndToEnd {
        rows: verdict.rows,
        persisted_logs: verdict.persisted,
        lost: verdict.lost,
        duplicated: verdict.duplicated,
        stored_unconfirmed: verdict.stored_unconfirmed,
        stored_unsent: verdict.stored_unsent,
        drained: drained.is_some(),
        drain_secs: drained
            .zip(last_accepted)
            .map(|(drained, last)| drained.saturating_duration_since(last).as_secs_f64()),
        persisted_logs_per_sec: verdict.persisted as f64
            / finished.duration_since(start).as_secs_f64(),
        persisted_during_load_logs_per_sec: at_load_end.map_or(0, |seen| seen.persisted) as f64
            / load_secs,
        backlog_growth_logs_per_sec: growth,
        max_backlog_logs: progress
            .timeline
            .iter()
            .map(|s| backlog_logs(s, plan.logs_per_request))
            .max()
            .unwrap_or(0),
        keeps_up: drained.is_some() && growth < 0.01 * accepted_per_sec,
        watch_polls: cost.polls,
        watch_poll_mean_ms: cost.mean_ms,
        watch_poll_max_ms: cost.max_ms,
        verify_secs,
    })
}

/// The timeline so far, printed as it grows.
struct Progress {
    quiet: bool,
    timeline: Vec<Sample>,
}

impl Progress {
    fn push(&mut self, sample: Sample) {
        if !self.quiet {
            let start = Sample {
                t_secs: 0.0,
                requests: 0,
                accepted_logs: 0,
                errors: 0,
                p99_ms: 0.0,
                persisted_logs: sample.persisted_logs.map(|_| 0),
                lag: None,
                pending: None,
            };
            let previous = self.timeline.last().unwrap_or(&start);
            println!("{}", report::progress_line(previous, &sample));
        }
        self.timeline.push(sample);
    }
}

/// Polls `watch`, if any; a failed poll is reported and skipped, not fatal.
async fn poll(watch: Option<&mut Watch>) -> Option<Seen> {
    match watch?.poll().await {
        Ok(seen) => Some(seen),
        Err(error) => {
            eprintln!("watching PostgreSQL and Redis: {error:#}");
            None
        }
    }
}

fn sample(
    generator: &Generator,
    start: Instant,
    seen: Option<Seen>,
    logs_per_request: u64,
) -> Sample {
    let p99_micros = generator.latencies.quantile(0.99);
    let tally = generator.counters.tally();
    Sample {
        t_secs: start.elapsed().as_secs_f64(),
        requests: tally.requests,
        accepted_logs: tally.accepted_requests * logs_per_request,
        errors: tally.refused_requests + tally.errors,
        p99_ms: p99_micros as f64 / 1000.0,
        persisted_logs: seen.map(|seen| seen.persisted),
        lag: seen.and_then(|seen| seen.backlog.lag),
        pending: seen.map(|seen| seen.backlog.pending),
    }
}

fn backlog_logs(sample: &Sample, logs_per_request: u64) -> u64 {
    (sample.lag.unwrap_or(0) + sample.pending.unwrap_or(0)) * logs_per_request
}

/// Waits until the consumer group has delivered and acknowledged everything, sampling
/// each second; returns when that happened, or `None` after the drain timeout.
async fn drain(
    watch: &mut Watch,
    generator: &Generator,
    progress: &mut Progress,
    options: &LoadOptions,
    plan: &Plan,
) -> Result<Option<Instant>> {
    let start = generator.start_time();
    let deadline = Instant::now() + Duration::from_secs(options.drain_timeout_secs);
    let mut next_sample = Instant::now() + TICK;
    while Instant::now() < deadline {
        let seen = poll(Some(watch)).await;
        if seen.is_some_and(|seen| seen.backlog.is_empty()) {
            let drained = Instant::now();
            progress.push(sample(generator, start, seen, plan.logs_per_request));
            return Ok(Some(drained));
        }
        if Instant::now() >= next_sample {
            next_sample += TICK;
            progress.push(sample(generator, start, seen, plan.logs_per_request));
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
    Ok(None)
}

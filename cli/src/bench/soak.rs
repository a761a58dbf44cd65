//! `logpipeline bench soak`: an open-loop writer for N minutes while faults take turns,
//! one a phase — a worker SIGKILLed, Redis (or a Redis Cluster master) SIGKILLed and
//! started again from its append-only file, another tenant's search storm and tail
//! flood, PostgreSQL switched over to its standby — with latency and answers per phase,
//! and at the end every log checked: each accepted one stored exactly once.
//!
//! The writer is a careful client: each request carries an `Idempotency-Key`, and what
//! may or may not be stored (503, 504, a timeout, a broken connection) is sent again
//! with the same key, so a fault costs latency and never a log.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::PostgresStandby;
use super::stack::{BenchStack, StackSettings};
use crate::load::{self, LoadOptions, Phase, Protocol, Report};
use crate::logs::{Connection, request};
use logpipeline_core::stream::Shards;
use logpipeline_local::auth::{ApiKey, keys_file};
use logpipeline_local::services::Env;

/// The stream's key, as the services name it by default.
const STREAM: &str = "logs:stream";

/// How long a killed worker, or a killed Redis, stays down.
const DOWN: Duration = Duration::from_secs(5);

/// How long a killed Redis Cluster master stays down: its replica takes over meanwhile.
const CLUSTER_MASTER_DOWN: Duration = Duration::from_secs(8);

/// `logpipeline bench soak`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct SoakArgs {
    /// Minutes the writer sends.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=1440))]
    pub minutes: u64,

    /// Seconds of each phase (even). Its first half is calm, the baseline its second
    /// half is held to; the fault comes at half time, and the reads last to its end.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(20..=3600))]
    pub phase_secs: u64,

    /// The faults, one a phase, in turn (comma-separated); `none` is a calm phase, the
    /// baseline the others are held to. PostgreSQL is switched over once; its later
    /// turns are calm.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "none,worker-kill,reads,redis-kill,postgres-switchover"
    )]
    pub faults: Vec<Fault>,

    /// The writer's open-loop rate, in logs/s (5 logs a request, 100 devices).
    #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: u64,

    /// Run on a Redis Cluster of 3 masters, each with a replica, with 3 shards and
    /// `replicated` acceptance; `redis-kill` then kills shard 0's master.
    #[arg(long)]
    pub redis_cluster: bool,

    /// Concurrent fleet-wide searches of the storm, from the other tenant.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=10_000))]
    pub storm_searches: u32,

    /// Logs the storm's tenant holds, written before the soak.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(0..))]
    pub storm_logs: u64,

    /// Tail subscribers of the other tenant that never read, during the reads.
    #[arg(long, default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(0..=50_000))]
    pub flood_subscribers: u32,

    /// Tail subscribers of the writer's tenant that take every log and never read: the
    /// api drops each at its bound.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(0..=1_000))]
    pub stuck_subscribers: u32,

    /// The workers' hot window (`LOGPIPELINE_HOT_WINDOW`): older rows are compacted into
    /// chunks as the soak goes, and the final check reads both.
    #[arg(long, default_value = "2m")]
    pub hot_window: String,

    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,

    /// Print no progress line each second.
    #[arg(long)]
    pub quiet: bool,
}

/// What a phase does to the pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// Nothing: the baseline.
    None,
    /// Worker 0 SIGKILLed mid-batch, started again 5 s later.
    WorkerKill,
    /// Redis SIGKILLed and started again from its append-only file 5 s later; on a
    /// cluster, shard 0's master, started again 8 s later as a replica.
    RedisKill,
    /// The other tenant's search storm and tail flood.
    Reads,
    /// PostgreSQL's primary stopped and its standby promoted.
    PostgresSwitchover,
}

/// One phase: its fault, what was done when, and what the writer saw.
#[derive(Debug, Serialize)]
pub struct SoakPhase {
    /// The fault it had.
    pub fault: Fault,
    /// The writer's figures of its first half, before the fault.
    pub before: Option<Phase>,
    /// The writer's figures of its second half, from the fault on.
    pub during: Option<Phase>,
    /// What was done, with seconds since the start.
    pub events: Vec<String>,
    /// The storm's and flood's figures, in a reads phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reads: Option<ReadFigures>,
}

/// What the soak found.
#[derive(Debug, Serialize)]
pub struct SoakReport {
    /// The writer's report, with its phases and the end-to-end check.
    pub load: Report,
    /// The phases' faults, in the order of the report's phases.
    pub phases: Vec<SoakPhase>,
    /// Logs in chunks at the end, of both tenants (the rest are rows).
    pub compacted_logs: u64,
}

/// The writer's and the readers' API keys, in two tenants.
struct SoakKeys {
    writer: ApiKey,
    reader: ApiKey,
    file: tempfile::NamedTempFile,
}

impl SoakKeys {
    fn new() -> Result<Self> {
        let writer = ApiKey::new("fleet", "writer", &["write", "read"]);
        let reader = ApiKey::new("storm", "reader", &["write", "read"]);
        let file = tempfile::NamedTempFile::new()?;
        std::fs::write(file.path(), keys_file(&[&writer, &reader]))?;
        Ok(Self {
            writer,
            reader,
            file,
        })
    }
}

/// Starts the stack, fills the storm's tenant, runs the writer through the faults, and
/// prints what each phase saw; `false` when an accepted log was lost or stored twice.
pub fn run(args: &SoakArgs) -> Result<bool> {
    anyhow::ensure!(
        args.phase_secs.is_multiple_of(2),
        "--phase-secs must be even: each phase is a calm half and a half with its fault"
    );
    logpipeline_local::packages::ensure_installed(true)?;
    let keys = SoakKeys::new()?;
    let durability = if args.redis_cluster {
        "replicated"
    } else {
        "primary"
    };
    let switchover = args.faults.contains(&Fault::PostgresSwitchover);
    let settings = StackSettings {
        workers: 2,
        worker_concurrency: 2,
        worker_batch_size: 100,
        stream_capacity: 10_000_000,
        // Every accepted entry is on disk before the answer: a SIGKILLed Redis loses none.
        appendfsync: "always".into(),
        redis_replica: args.redis_cluster,
        redis_cluster_masters: if args.redis_cluster { 3 } else { 0 },
        stream_shards: if args.redis_cluster { 3 } else { 1 },
        postgres_standby: if switchover {
            PostgresStandby::Async
        } else {
            PostgresStandby::Off
        },
        api_env: Env::from([
            ("LOGPIPELINE_AUTH".into(), "keys".into()),
            (
                "LOGPIPELINE_API_KEYS_FILE".into(),
                keys.file.path().display().to_string(),
            ),
            ("LOGPIPELINE_REDIS_DURABILITY".into(), durability.into()),
            (
                "LOGPIPELINE_TAIL_MAX_SUBSCRIBERS".into(),
                (args.flood_subscribers + args.stuck_subscribers + 100).to_string(),
            ),
            // Every client of the soak comes from 127.0.0.1.
            (
                "LOGPIPELINE_MAX_CONNECTIONS_PER_ADDRESS".into(),
                (args.flood_subscribers + args.stuck_subscribers + args.storm_searches + 1_000)
                    .to_string(),
            ),
        ]),
        worker_env: Env::from([
            ("LOGPIPELINE_REDIS_DURABILITY".into(), durability.into()),
            ("LOGPIPELINE_HOT_WINDOW".into(), args.hot_window.clone()),
        ]),
    };
    println!(
        "starting Redis{}, PostgreSQL{}, 2 workers and the api…",
        if args.redis_cluster {
            " Cluster (3 masters, 3 replicas)"
        } else {
            ""
        },
        if switchover { " with a standby" } else { "" }
    );
    let mut stack = BenchStack::start(&settings)?;
    let writer_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // The readers have a runtime of their own, so that they do not delay the writer's
    // requests and add their own wait to its latencies.
    let readers_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    if args.storm_logs > 0 {
        println!("writing {} logs of the storm's tenant…", args.storm_logs);
        let mut seed = writer_options(args, &stack, &settings, &keys.reader, "soak-storm-seed");
        seed.rate = None;
        seed.total_logs = Some(args.storm_logs);
        seed.connections = 50;
        seed.retry = false;
        seed.phase_secs = None;
        seed.quiet = true;
        let seeded = writer_runtime.block_on(load::run(&seed))?;
        println!(
            "  {} logs stored at {:.0} logs/s accepted",
            seeded
                .end_to_end
                .as_ref()
                .map_or(0, |e2e| e2e.persisted_logs),
            seeded.logs_per_sec
        );
    }
    let run = format!("soak-{}", std::process::id());
    let options = writer_options(args, &stack, &settings, &keys.writer, &run);
    let phase = Duration::from_secs(args.phase_secs);
    let phases = args.minutes * 60 / args.phase_secs;
    println!(
        "soak: {} logs/s for {} min, {phases} phases of {} s: {}",
        args.rate,
        args.minutes,
        args.phase_secs,
        args.faults
            .iter()
            .map(|fault| fault_name(*fault))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let start = Instant::now();
    let writer = writer_runtime.spawn(async move { load::run(&options).await });
    let mut soak_phases = Vec::new();
    let mut switched = false;
    for index in 0..phases {
        let mut fault = args.faults[index as usize % args.faults.len()];
        if fault == Fault::PostgresSwitchover && switched {
            fault = Fault::None;
        }
        let began = start + phase * index as u32;
        sleep_until(began + phase / 2);
        let mut events = Vec::new();
        let mut note = |what: String| {
            let line = format!("{:.1} s: {what}", start.elapsed().as_secs_f64());
            if !args.quiet {
                println!("soak: {line}");
            }
            events.push(line);
        };
        let mut reads = None;
        match fault {
            Fault::None => {}
            Fault::WorkerKill => {
                stack.kill_worker(0)?;
                note("worker 0 SIGKILLed".into());
                std::thread::sleep(DOWN);
                stack.start_worker_again(0)?;
                note("worker 0 started again".into());
            }
            Fault::RedisKill => {
                let shard0 = shard_keys(&stack, &settings)[0].clone();
                let node = stack.redis.kill_master_of(&shard0)?;
                note(format!("Redis node {node} (master of shard 0) SIGKILLed"));
                std::thread::sleep(if args.redis_cluster {
                    CLUSTER_MASTER_DOWN
                } else {
                    DOWN
                });
                stack.redis.start_again(node)?;
                note(format!("Redis node {node} started again from its AOF"));
            }
            Fault::Reads => {
                let readers = readers_runtime.block_on(Readers::start(args, &stack, &keys))?;
                note(format!(
                    "{} searches and {} + {} idle tail subscribers of the other tenant started",
                    args.storm_searches, args.flood_subscribers, args.stuck_subscribers
                ));
                sleep_until(began + phase);
                reads = Some(readers_runtime.block_on(readers.finish())?);
                note("the reads stopped".into());
            }
            Fault::PostgresSwitchover => {
                stack.switch_postgres_over()?;
                switched = true;
                note("PostgreSQL's primary stopped, its standby promoted".into());
            }
        }
        soak_phases.push(SoakPhase {
            fault,
            before: None,
            during: None,
            events,
            reads,
        });
    }
    let report = writer_runtime.block_on(writer)??;
    print!("{}", report.render());
    for (index, phase) in soak_phases.iter_mut().enumerate() {
        phase.before = report.phases.get(2 * index).cloned();
        phase.during = report.phases.get(2 * index + 1).cloned();
    }
    let compacted_logs = stack
        .psql_logs("select coalesce(sum(rows), 0) from log_chunks")?
        .parse()
        .context("counting the logs in chunks")?;
    let soak = SoakReport {
        load: report,
        phases: soak_phases,
        compacted_logs,
    };
    print!("{}", render(&soak));
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&soak)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(soak
        .load
        .end_to_end
        .as_ref()
        .is_some_and(|e2e| e2e.exactly_once()))
}

/// The writer's load: open loop, careful (keyed retries), in phases, checked end to end.
fn writer_options(
    args: &SoakArgs,
    stack: &BenchStack,
    settings: &StackSettings,
    key: &ApiKey,
    run: &str,
) -> LoadOptions {
    LoadOptions {
        url: stack.api.url(),
        protocol: Protocol::Http,
        devices: 100,
        connections: 200,
        logs_per_request: 5,
        duration_secs: args.minutes * 60,
        warmup_secs: 0,
        total_logs: None,
        rate: Some(args.rate),
        run: Some(run.to_owned()),
        message_bytes: 64,
        timeout_ms: 10_000,
        database_url: Some(stack.services_database_url().to_owned()),
        redis_url: Some(stack.redis.url()),
        stream: STREAM.into(),
        stream_shards: settings.stream_shards,
        redis_cluster: stack.redis.is_cluster(),
        group: "log_workers".into(),
        drain_timeout_secs: 600,
        quiet: args.quiet,
        api_key: Some(key.secret.clone()),
        retry: true,
        retry_for_secs: 300,
        phase_secs: Some(args.phase_secs / 2),
        tenant: key.tenant.clone(),
    }
}

/// The stream's shard keys on `stack`.
fn shard_keys(stack: &BenchStack, settings: &StackSettings) -> Vec<String> {
    let shards = if stack.redis.is_cluster() {
        Shards::on_cluster(STREAM, settings.stream_shards)
    } else {
        Shards::new(STREAM, settings.stream_shards)
    };
    shards.keys().to_vec()
}

fn sleep_until(at: Instant) {
    std::thread::sleep(at.saturating_duration_since(Instant::now()));
}

fn fault_name(fault: Fault) -> &'static str {
    match fault {
        Fault::None => "none",
        Fault::WorkerKill => "worker-kill",
        Fault::RedisKill => "redis-kill",
        Fault::Reads => "reads",
        Fault::PostgresSwitchover => "postgres-switchover",
    }
}

/// What the storm's searches and the flood's subscriptions got.
#[derive(Debug, Clone, Serialize)]
pub struct ReadFigures {
    /// Searches by answer (`429` is `search_busy`).
    pub searches: BTreeMap<u16, u64>,
    /// Searches that got no answer.
    pub search_failures: u64,
    /// Latency of the searches answered 200, ms.
    pub search_p50_ms: f64,
    /// The same.
    pub search_p99_ms: f64,
    /// Tail subscriptions admitted.
    pub subscribed: u32,
    /// Tail subscriptions refused.
    pub refused_subscriptions: u32,
}

/// One searcher's tally.
struct SearchTally {
    answers: BTreeMap<u16, u64>,
    failures: u64,
    latencies: Histogram<u64>,
}

/// The storm and the flood, running.
struct Readers {
    stop: watch::Sender<bool>,
    searchers: JoinSet<Result<SearchTally>>,
    subscriptions: Vec<reqwest::Response>,
    refused_subscriptions: u32,
}

impl Readers {
    /// Subscribes the flood (the other tenant's, matching nothing the writer sends) and
    /// the stuck subscribers (the writer's tenant, every log), none of which reads, and
    /// starts the storm's searches.
    async fn start(args: &SoakArgs, stack: &BenchStack, keys: &SoakKeys) -> Result<Self> {
        let client = crate::http_client()?;
        let other = Connection {
            url: stack.api.url(),
            api_key: Some(keys.reader.secret.clone()),
        };
        let writers = Connection {
            url: stack.api.url(),
            api_key: Some(keys.writer.secret.clone()),
        };
        let mut subscriptions = Vec::new();
        let mut refused_subscriptions = 0;
        let subscribers = std::iter::repeat_n(&other, args.flood_subscribers as usize).chain(
            std::iter::repeat_n(&writers, args.stuck_subscribers as usize),
        );
        for connection in subscribers {
            let answer = request(
                &client,
                connection,
                reqwest::Method::GET,
                "/api/logs/tail",
                &[],
            )?
            .send()
            .await;
            match answer {
                Ok(answer) if answer.status().is_success() => subscriptions.push(answer),
                _ => refused_subscriptions += 1,
            }
        }
        let (stop, stopped) = watch::channel(false);
        let mut searchers = JoinSet::new();
        for searcher in 0..args.storm_searches {
            searchers.spawn(search(
                client.clone(),
                other.clone(),
                searcher,
                stopped.clone(),
            ));
        }
        Ok(Self {
            stop,
            searchers,
            subscriptions,
            refused_subscriptions,
        })
    }

    /// Stops the searches, closes the subscriptions, and adds up what they got.
    async fn finish(mut self) -> Result<ReadFigures> {
        self.stop.send_replace(true);
        let mut searches = BTreeMap::new();
        let mut search_failures = 0;
        let mut latencies = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
        while let Some(tally) = self.searchers.join_next().await {
            let tally = tally??;
            for (status, count) in tally.answers {
                *searches.entry(status).or_default() += count;
            }
            search_failures += tally.failures;
            latencies.add(&tally.latencies)?;
        }
        let subscribed = self.subscriptions.len() as u32;
        drop(self.subscriptions);
        let ms = |micros: u64| micros as f64 / 1000.0;
        Ok(ReadFigures {
            searches,
            search_failures,
            search_p50_ms: ms(latencies.value_at_quantile(0.5)),
            search_p99_ms: ms(latencies.value_at_quantile(0.99)),
            subscribed,
            refused_subscriptions: self.refused_subscriptions,
        })
    }
}

/// One searcher of the storm: fleet-wide searches over 30 days, a phrase no log has and
/// a common word with a level by turns, one after another until stopped; a 429 waits
/// out its `Retry-After`, as a client that respects it does.
async fn search(
    client: reqwest::Client,
    connection: Connection,
    searcher: u32,
    mut stopped: watch::Receiver<bool>,
) -> Result<SearchTally> {
    let mut tally = SearchTally {
        answers: BTreeMap::new(),
        failures: 0,
        latencies: Histogram::new_with_bounds(1, 3_600_000_000, 3)?,
    };
    let mut turn = searcher;
    while !*stopped.borrow() {
        let since = (OffsetDateTime::now_utc() - time::Duration::days(30)).format(&Rfc3339)?;
        let mut params = vec![("since".to_owned(), since)];
        if turn.is_multiple_of(2) {
            params.push(("q".into(), "\"valve 3 stuck open\"".into()));
        } else {
            params.push(("q".into(), "connection".into()));
            params.push(("level".into(), "ERROR".into()));
        }
        turn += 1;
        let sent = Instant::now();
        let answer = request(
            &client,
            &connection,
            reqwest::Method::GET,
            "/api/logs",
            &params,
        )?
        .timeout(Duration::from_secs(30))
        .send()
        .await;
        let wait = match answer {
            Ok(answer) => {
                let status = answer.status();
                let retry_after = answer
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|value| value.to_str().ok()?.parse::<u64>().ok());
                if status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS {
                    let text = answer.text().await.unwrap_or_default();
                    anyhow::bail!("the storm's search was refused: {status} {text}");
                }
                let read = answer.bytes().await.is_ok();
                *tally.answers.entry(status.as_u16()).or_default() += 1;
                if status.is_success() && read {
                    let micros = sent.elapsed().as_micros().try_into().unwrap_or(u64::MAX);
                    tally.latencies.saturating_record(micros);
                }
                retry_after.map(Duration::from_secs)
            }
            Err(_) => {
                tally.failures += 1;
                Some(Duration::from_millis(100))
            }
        };
        if let Some(wait) = wait {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stopped.wait_for(|stop| *stop) => {}
            }
        }
    }
    Ok(tally)
}

/// The phases as a table: each half's figures, and each fault's p99 beside the calm
/// halves' median.
fn render(soak: &SoakReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "\nphase  seconds      fault                half     accepted  failed  retries    p50 ms    p99 ms    max ms\n",
    );
    let mut calm = Vec::new();
    for (index, phase) in soak.phases.iter().enumerate() {
        let halves = [("before", &phase.before), ("during", &phase.during)];
        for (half, figures) in halves {
            let Some(figures) = figures else { continue };
            let l = &figures.latency_ms;
            if half == "before" || phase.fault == Fault::None {
                calm.push(l.p99);
            }
            // Writing into a String cannot fail.
            let _ = writeln!(
                out,
                "{index:>5}  {:>5.0}–{:<5.0}  {:<19}  {half:<6}  {:>9}  {:>6}  {:>7}  {:>8.2}  {:>8.2}  {:>8.2}",
                figures.from_secs,
                figures.to_secs,
                fault_name(phase.fault),
                figures.accepted_logs,
                figures.failed,
                figures.retries,
                l.p50,
                l.p99,
                l.max
            );
            if !figures.shards.is_empty() {
                let shards: Vec<String> = figures
                    .shards
                    .iter()
                    .enumerate()
                    .map(|(shard, figures)| {
                        format!(
                            "shard {shard} p99 {:.2} ms ({} failed)",
                            figures.latency_ms.p99, figures.failed
                        )
                    })
                    .collect();
                let _ = writeln!(out, "{:41}{}", "", shards.join(", "));
            }
        }
        for event in &phase.events {
            let _ = writeln!(out, "{:41}{event}", "");
        }
        if let Some(reads) = &phase.reads {
            let answers: Vec<String> = reads
                .searches
                .iter()
                .map(|(status, count)| format!("{status}: {count}"))
                .collect();
            let _ = writeln!(
                out,
                "{:41}searches {} (no answer {}), answered p50 {:.1} ms p99 {:.1} ms; {} subscribed, {} refused",
                "",
                answers.join(", "),
                reads.search_failures,
                reads.search_p50_ms,
                reads.search_p99_ms,
                reads.subscribed,
                reads.refused_subscriptions
            );
        }
    }
    calm.sort_by(f64::total_cmp);
    if let Some(&median) = calm.get(calm.len() / 2)
        && median > 0.0
    {
        let _ = writeln!(
            out,
            "\ncalm halves' median p99: {median:.2} ms; each fault's half beside it:"
        );
        for (index, phase) in soak.phases.iter().enumerate() {
            let Some(during) = phase.during.as_ref().filter(|_| phase.fault != Fault::None) else {
                continue;
            };
            // On a cluster the fault is shard 0's: the others are held to the baseline.
            let others = during
                .shards
                .iter()
                .skip(1)
                .map(|shard| shard.latency_ms.p99)
                .reduce(f64::max)
                .map_or_else(String::new, |p99| {
                    format!(", the other shards' p99 {:.1}×", p99 / median)
                });
            let own = phase
                .before
                .as_ref()
                .filter(|before| before.latency_ms.p99 > 0.0)
                .map_or_else(String::new, |before| {
                    format!(
                        " ({:.1}× its own calm half)",
                        during.latency_ms.p99 / before.latency_ms.p99
                    )
                });
            let _ = writeln!(
                out,
                "  phase {index} ({}): p99 {:.1}×{own}{others}",
                fault_name(phase.fault),
                during.latency_ms.p99 / median
            );
        }
    }
    if let Some(e2e) = &soak.load.end_to_end {
        let _ = writeln!(
            out,
            "every log: {} stored of {} accepted ({} logs of both tenants in chunks), {} lost, {} duplicated{}",
            e2e.persisted_logs,
            soak.load.accepted_logs,
            soak.compacted_logs,
            e2e.lost,
            e2e.duplicated,
            if e2e.exactly_once() {
                " — exactly once"
            } else {
                " — NOT exactly once"
            }
        );
    }
    out
}

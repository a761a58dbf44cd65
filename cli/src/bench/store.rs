//! `logpipeline bench store`: the worker's store path alone, against a durable
//! PostgreSQL. Consumers store batches of stream entries (as the api writes them) with
//! the worker's own code for a while, and the run reports logs/s, PostgreSQL's and this
//! process's CPU per log, the WAL written per log and the bytes on disk per stored log.
//! No Redis, no api: what PostgreSQL costs per log, and nothing else.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use logpipeline_core::codec;
use logpipeline_core::tenant::Tenant;
use logpipeline_local::postgres::{PostgresOptions, PostgresServer};
use logpipeline_worker::store::{Decoded, Store, StoreSettings};
use logpipeline_worker::stream::StreamEntry;
use serde::Serialize;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use time::OffsetDateTime;

use super::probe::{cpu_secs, postgres_cpu, postmaster_pid};

/// What to store, how, and for how long.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreBenchArgs {
    /// Concurrent consumers, each storing one batch after another (the worker's
    /// `LOGPIPELINE_CONCURRENCY`).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub consumers: u32,

    /// Stream entries per batch (the worker's `LOGPIPELINE_BATCH_SIZE`).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub entries_per_batch: u32,

    /// Logs per entry (per request to the api): 5 is the seed's stress test.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub logs_per_entry: u32,

    /// Devices the logs come from.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub devices: u32,

    /// Length of each log's message, in bytes: words of a device's vocabulary and
    /// numbers, so that a text index sees as many distinct trigrams as in real logs.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=5000))]
    pub message_bytes: u32,

    /// Partitions carry a GIN index on `log_data` (`spec.storage.logDataIndex`).
    #[arg(long)]
    pub log_data_index: bool,

    /// Partitions carry a trigram GIN index on `message` (`spec.storage.messageIndex`).
    #[arg(long)]
    pub message_index: bool,

    /// Seconds each run stores.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub seconds: u64,

    /// Most logs a run stores: its batches are made before it starts, so that this
    /// process's CPU during the run is the worker's code alone.
    #[arg(long, default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_logs: u64,

    /// Runs, each on a fresh database; the summary shows the median.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub runs: u32,

    /// Also write the runs as JSON to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct StoreRun {
    /// Logs stored.
    pub logs: u64,
    /// Logs stored per second.
    pub logs_per_sec: f64,
    /// PostgreSQL's CPU (every backend and background process) per stored log, µs.
    pub postgres_us_per_log: f64,
    /// This process's CPU per stored log (the worker's code: encoding, the driver), µs.
    pub worker_us_per_log: f64,
    /// WAL written per stored log, bytes.
    pub wal_bytes_per_log: f64,
    /// The `logs` partitions (heap, TOAST, indexes) per stored log, bytes.
    pub table_bytes_per_log: f64,
    /// Of those, the indexes', bytes.
    pub index_bytes_per_log: f64,
}

/// Starts a durable PostgreSQL, runs the store benchmark `args.runs` times and prints
/// each run and the medians.
pub async fn run(args: StoreBenchArgs) -> Result<()> {
    logpipeline_local::packages::ensure_installed(true)?;
    let postgres = PostgresServer::start_with(PostgresOptions {
        durable: true,
        settings: Vec::new(),
    })?;
    let postmaster = postmaster_pid(postgres.dir())?;
    println!(
        "{} consumers, batches of {} entries × {} logs, {} devices, {} s per run, search indexes: {}",
        args.consumers,
        args.entries_per_batch,
        args.logs_per_entry,
        args.devices,
        args.seconds,
        match (args.log_data_index, args.message_index) {
            (false, false) => "none",
            (true, false) => "log_data",
            (false, true) => "message",
            (true, true) => "log_data, message",
        }
    );
    let mut runs = Vec::new();
    for index in 0..args.runs {
        let url = postgres.create_database()?;
        let pool = PgPoolOptions::new()
            .max_connections(args.consumers + 2)
            .connect(&url)
            .await?;
        logpipeline_core::db::migrate(&pool).await?;
        sqlx::query("checkpoint").execute(&pool).await?;
        let run = store_for(&args, &pool, postmaster).await?;
        println!(
            "run {}: {:.0} logs/s, PostgreSQL {:.1} µs/log, worker {:.1} µs/log, WAL {:.0} B/log, on disk {:.0} B/log ({:.0} indexes)",
            index + 1,
            run.logs_per_sec,
            run.postgres_us_per_log,
            run.worker_us_per_log,
            run.wal_bytes_per_log,
            run.table_bytes_per_log,
            run.index_bytes_per_log
        );
        pool.close().await;
        runs.push(run);
    }
    let median = |value: fn(&StoreRun) -> f64| {
        let mut values: Vec<f64> = runs.iter().map(value).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    println!(
        "median of {}: {:.0} logs/s, PostgreSQL {:.1} µs/log, worker {:.1} µs/log, WAL {:.0} B/log, on disk {:.0} B/log",
        runs.len(),
        median(|run| run.logs_per_sec),
        median(|run| run.postgres_us_per_log),
        median(|run| run.worker_us_per_log),
        median(|run| run.wal_bytes_per_log),
        median(|run| run.table_bytes_per_log)
    );
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&runs)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn wal_lsn(pool: &PgPool) -> Result<f64> {
    Ok(
        sqlx::query_scalar::<_, f64>("select (pg_current_wal_lsn() - '0/0'::pg_lsn)::float8")
            .fetch_one(pool)
            .await?,
    )
}

/// One run: the consumers store batches for `args.seconds`.
async fn store_for(args: &StoreBenchArgs, pool: &PgPool, postmaster: u32) -> Result<StoreRun> {
    let mut settings = StoreSettings::default();
    settings.partitions.log_data_index = args.log_data_index;
    settings.partitions.message_index = args.message_index;
    let store = Store::new(pool.clone(), settings);
    let stored = Arc::new(AtomicU64::new(0));
    let sequence = AtomicU64::new(0);
    let batches = u64::from(args.entries_per_batch * args.logs_per_entry);
    let batches: Vec<Vec<Decoded>> = (0..args.max_logs.div_ceil(batches))
        .map(|number| batch(args, number, &sequence))
        .collect::<Result<_>>()?;
    let queue = Arc::new(std::sync::Mutex::new(batches));
    let wal_before = wal_lsn(pool).await?;
    let postgres_before = postgres_cpu(postmaster)?;
    let worker_before = cpu_secs(std::process::id())?;
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let mut consumers = tokio::task::JoinSet::new();
    for _ in 0..args.consumers {
        let (store, stored, queue) = (store.clone(), stored.clone(), queue.clone());
        consumers.spawn(async move {
            while Instant::now() < deadline {
                let next = queue
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .pop();
                let Some(batch) = next else { break };
                let outcome = store.store(&batch).await?;
                anyhow::ensure!(
                    outcome.rejected.is_empty(),
                    "PostgreSQL refused logs: {:?}",
                    outcome.rejected
                );
                stored.fetch_add(outcome.inserted, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    // The worker folds the counts every second; so does the run.
    let folding = tokio::spawn({
        let pool = pool.clone();
        async move {
            let mut ticker = tokio::time::interval(logpipeline_worker::upkeep::FOLD_EVERY);
            loop {
                ticker.tick().await;
                if let Err(error) = logpipeline_core::storage::fold_counts(&pool).await {
                    break error;
                }
            }
        }
    });
    while let Some(done) = consumers.join_next().await {
        done??;
    }
    if folding.is_finished() {
        return Err(folding.await?).context("folding the counts");
    }
    folding.abort();
    let elapsed = started.elapsed().as_secs_f64();
    let postgres_secs = postgres_cpu(postmaster)? - postgres_before;
    let worker_secs = cpu_secs(std::process::id())? - worker_before;
    let wal = wal_lsn(pool).await? - wal_before;
    let logs = stored.load(Ordering::Relaxed);
    let (table, indexes): (i64, i64) = sqlx::query_as(
        "select coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint, \
                coalesce(sum(pg_indexes_size(c.oid)), 0)::bigint \
         from pg_inherits i join pg_class c on c.oid = i.inhrelid \
         where i.inhparent = 'logs'::regclass",
    )
    .fetch_one(pool)
    .await?;
    let per_log = |total: f64| total / logs.max(1) as f64;
    Ok(StoreRun {
        logs,
        logs_per_sec: logs as f64 / elapsed,
        postgres_us_per_log: per_log(postgres_secs * 1e6),
        worker_us_per_log: per_log(worker_secs * 1e6),
        wal_bytes_per_log: per_log(wal),
        table_bytes_per_log: per_log(table as f64),
        index_bytes_per_log: per_log(indexes as f64),
    })
}

/// A batch of entries as a consumer reads them: each holds `logs_per_entry` logs of one
/// device, in the shape the seed's devices send (a level, a message, `log_data`).
fn batch(args: &StoreBenchArgs, number: u64, sequence: &AtomicU64) -> Result<Vec<Decoded>> {
    const LEVELS: [&str; 5] = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"];
    let tenant = Tenant::default();
    let now = OffsetDateTime::now_utc();
    let ms = now.unix_timestamp_nanos() / 1_000_000;
    (0..args.entries_per_batch)
        .map(|entry| {
            let seq = sequence.fetch_add(1, Ordering::Relaxed);
            let device = (number * 31 + u64::from(entry)) % u64::from(args.devices);
            let logs: Vec<serde_json::Value> = (0..args.logs_per_entry)
                .map(|i| {
                    serde_json::json!({
                        "device_id": format!("device-{device:03}"),
                        "log_level": LEVELS[(seq as usize + i as usize) % LEVELS.len()],
                        "message": message(seq * 1000 + u64::from(i), args.message_bytes as usize),
                        "log_data": {"run": "store", "device": device, "seq": seq, "temperature": 21.5},
                    })
                })
                .collect();
            let logs = serde_json::to_vec(&logs)?;
            let fields: Vec<(Vec<u8>, Vec<u8>)> = codec::encode(now, &tenant, &logs)
                .iter()
                .map(|(name, value)| (name.as_bytes().to_vec(), value.as_bytes().to_vec()))
                .collect();
            let decoded = codec::decode(&fields)?;
            // Entry ids as Redis makes them, `<ms>-<seq>`, at most 4,096 a millisecond
            // (the sequence bits of a log's key).
            let id = format!("{}-{}", ms + i128::from(seq / 4096), seq % 4096);
            Decoded::new(StreamEntry { id, fields }, decoded)
                .map_err(|(_, reason)| anyhow::anyhow!(reason))
        })
        .collect()
}

/// A message of `bytes` bytes made of words and numbers, different for every `seed`.
fn message(seed: u64, bytes: usize) -> String {
    const WORDS: &str = "pump valve pressure sensor reading within bounds motor speed rpm flow \
        rate temperature exceeded threshold battery voltage low firmware update applied \
        rebooting connection lost restored retry after timeout calibration started finished \
        drift detected upstream downstream tank level alarm cleared raised door opened closed \
        heartbeat missed queue full ok";
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut text = String::with_capacity(bytes + 16);
    while text.len() < bytes {
        // xorshift64: cheap, and the same text for the same seed in every run.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        if !text.is_empty() {
            text.push(' ');
        }
        if state.is_multiple_of(4) {
            text.push_str(&(state >> 40).to_string());
        } else {
            text.push_str(words[(state >> 8) as usize % words.len()]);
        }
    }
    text.truncate(bytes);
    text
}

//! `logpipeline bench shelf`: what a stored log costs on disk and what a fleet-wide
//! search costs, as rows, as chunks, and in VictoriaLogs, side by side on the same logs.
//!
//! For each size it stores seed-shaped logs as rows (100 devices, 5 logs an entry, the
//! seed's kinds of messages and `log_data`), measures the bytes and the searches through
//! the api, hands the same logs to VictoriaLogs as JSON lines, compacts the rows into
//! chunks with the workers' own code (timing its CPU and PostgreSQL's), and measures
//! again. VictoriaLogs (Apache-2.0) installs with `go install
//! github.com/VictoriaMetrics/VictoriaLogs/app/victoria-logs@v1.52.2`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use hdrhistogram::Histogram;
use logpipeline_core::chunk::DEFAULT_CHUNK_ROWS;
use logpipeline_core::storage::{self, PartitionSettings};
use logpipeline_local::postgres::{PostgresOptions, PostgresServer};
use logpipeline_local::process::{ChildProcess, find_on_path, free_port, scratch_dir, wait_until};
use logpipeline_local::redis::RedisServer;
use logpipeline_local::services::{ApiProcess, Env};
use logpipeline_worker::compact::{self, CompactSettings};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::probe::{cpu_secs, postgres_cpu, postmaster_pid};

/// What to store and how to search it.
#[derive(Debug, clap::Args)]
pub struct ShelfBenchArgs {
    /// Logs stored, one run per size (comma-separated), such as 1000000,10000000.
    #[arg(long, value_delimiter = ',', default_value = "1000000")]
    pub logs: Vec<u64>,

    /// Devices the logs come from (a stream each in VictoriaLogs).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub devices: u64,

    /// Logs per second over which the logs spread: their time span is logs / rate.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: u64,

    /// Logs per chunk (`LOGPIPELINE_CHUNK_ROWS`).
    #[arg(long, default_value_t = DEFAULT_CHUNK_ROWS)]
    pub chunk_rows: usize,

    /// Requests of each search; the table shows their median.
    #[arg(long, default_value_t = 21, value_parser = clap::value_parser!(u32).range(1..))]
    pub requests: u32,

    /// The `victoria-logs` binary; by default the one on PATH or in ~/go/bin.
    #[arg(long)]
    pub victoria_logs: Option<PathBuf>,

    /// Leave VictoriaLogs out.
    #[arg(long)]
    pub no_victoria_logs: bool,

    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Where the logs start: a day of their own, whole, so that compaction finds it ended.
const START: OffsetDateTime = time::macros::datetime!(2026-01-01 0:00 UTC);

/// A search, as the api and VictoriaLogs take it.
struct Search {
    name: &'static str,
    /// Path and query of the api, without the time range.
    api: String,
    /// Path and query of VictoriaLogs, without the time range.
    victoria_logs: String,
}

/// The searches of the targets, and a device's page.
fn searches() -> Vec<Search> {
    let search = |name, api: &str, victoria_logs: &str| Search {
        name,
        api: api.to_owned(),
        victoria_logs: victoria_logs.to_owned(),
    };
    vec![
        search(
            "a phrase no log has",
            "/api/logs?q=%22valve%203%20stuck%20open%22&limit=100",
            "/select/logsql/query?query=%22valve%203%20stuck%20open%22&limit=100",
        ),
        search(
            "a common word + level",
            "/api/logs?q=connection&level=ERROR&limit=100",
            "/select/logsql/query?query=connection%20log_level:ERROR&limit=100",
        ),
        search(
            "a log_data field equal",
            "/api/logs?data.version=1.0.2&limit=100",
            "/select/logsql/query?query=log_data.version:%3D%221.0.2%22&limit=100",
        ),
        search(
            "ERROR per minute",
            "/api/logs/histogram?level=ERROR&interval=1m",
            "/select/logsql/hits?query=log_level:ERROR&step=1m",
        ),
        search(
            "a device's page",
            "/api/logs/device_042?limit=100",
            "/select/logsql/query?query=%7Bdevice_id%3D%22device_042%22%7D&limit=100",
        ),
    ]
}

/// What one store measured.
#[derive(Debug, Clone, serde::Serialize)]
struct Measured {
    store: &'static str,
    bytes: u64,
    /// The median of each search, in ms, in the order of [`searches`].
    searches_ms: Vec<f64>,
}

pub async fn run(args: ShelfBenchArgs) -> Result<()> {
    let victoria_logs = if args.no_victoria_logs {
        None
    } else {
        Some(victoria_logs_binary(args.victoria_logs.as_deref())?)
    };
    let mut report = Vec::new();
    for &logs in &args.logs {
        let (measured, compaction) = run_size(&args, logs, victoria_logs.as_deref()).await?;
        print_table(logs, &measured, &compaction);
        report.push(json!({"logs": logs, "stores": measured, "compaction": compaction}));
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The figures of compaction.
#[derive(Debug, Clone, serde::Serialize)]
struct Compaction {
    seconds: f64,
    /// CPU of the compacting code (the workers') per log, µs.
    worker_us_per_log: f64,
    /// CPU of PostgreSQL per log, µs.
    postgres_us_per_log: f64,
    chunks: u64,
}

async fn run_size(
    args: &ShelfBenchArgs,
    logs: u64,
    victoria_logs: Option<&Path>,
) -> Result<(Vec<Measured>, Compaction)> {
    let postgres = PostgresServer::start_with(PostgresOptions {
        durable: true,
        settings: Vec::new(),
    })?;
    let postmaster = postmaster_pid(postgres.dir())?;
    let redis = RedisServer::start()?;
    let database = postgres.create_database()?;
    let api = ApiProcess::start(
        &redis.url(),
        &database,
        &Env::from([("LOGPIPELINE_AUTH".into(), "off".into())]),
    )?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&database)
        .await?;
    crate::wait_for_schema(&pool).await?;
    let span = Duration::from_secs_f64(logs as f64 / args.rate as f64);
    let end = START + span + Duration::from_secs(1);
    let range = Range {
        since: START,
        until: end,
    };
    eprintln!(
        "storing {logs} logs of {} devices over {:.0} s as rows",
        args.devices,
        span.as_secs_f64()
    );
    fill(&pool, logs, args.devices, args.rate).await?;
    let client = crate::http_client()?;
    let base = api.url();
    let mut measured = vec![Measured {
        store: "rows",
        bytes: table_bytes(&pool, "logs").await?,
        searches_ms: search_api(&client, &base, range, args.requests).await?,
    }];
    let mut victoria = match victoria_logs {
        Some(binary) => Some(VictoriaLogs::start(binary)?),
        None => None,
    };
    if let Some(victoria) = &mut victoria {
        eprintln!("handing the same logs to VictoriaLogs");
        victoria.ingest(&pool, &client).await?;
    }

    eprintln!("compacting");
    let mut connection = pool.acquire().await?;
    let postgres_before = postgres_cpu(postmaster)?;
    let own_before = cpu_secs(std::process::id())?;
    let started = Instant::now();
    let far = OffsetDateTime::now_utc() + Duration::from_secs(100 * 365 * 86_400);
    let compacted = compact::compact(
        &mut connection,
        CompactSettings {
            hot_window: Duration::ZERO,
            chunk_rows: args.chunk_rows,
        },
        i64::MAX,
        OffsetDateTime::now_utc(),
        far,
    )
    .await?;
    let seconds = started.elapsed().as_secs_f64();
    let per_log = |secs: f64| secs * 1e6 / logs as f64;
    let compaction = Compaction {
        seconds,
        worker_us_per_log: per_log(cpu_secs(std::process::id())? - own_before),
        postgres_us_per_log: per_log(postgres_cpu(postmaster)? - postgres_before),
        chunks: compacted.chunks + compacted.merged_into - compacted.merged,
    };
    drop(connection);
    if compacted.rows != logs {
        bail!("compaction moved {} rows of {logs}", compacted.rows);
    }
    sqlx::query("vacuum analyze log_chunks")
        .execute(&pool)
        .await?;
    let bytes = table_bytes(&pool, "logs").await? + table_bytes(&pool, "log_chunks").await?;
    measured.push(Measured {
        store: "chunks",
        bytes,
        searches_ms: search_api(&client, &base, range, args.requests).await?,
    });
    if let Some(victoria) = &victoria {
        measured.push(Measured {
            store: "VictoriaLogs",
            bytes: victoria.bytes()?,
            searches_ms: victoria.search(&client, START, end, args.requests).await?,
        });
    }
    Ok((measured, compaction))
}

/// Stores `logs` seed-shaped logs as rows, as the workers would: entries of 5 logs of
/// one device (one time, consecutive keys), `rate` logs a second from [`START`].
async fn fill(pool: &PgPool, logs: u64, devices: u64, rate: u64) -> Result<()> {
    let span = Duration::from_secs_f64(logs as f64 / rate as f64);
    let days: Vec<OffsetDateTime> = (0..=span.as_secs() / 86_400 + 1)
        .map(|day| START + time::Duration::days(day as i64))
        .collect();
    storage::ensure_partitions(pool, &days, PartitionSettings::default()).await?;
    let entries = logs.div_ceil(5);
    let step = 1_000_000 / 5;
    let mut first = 0;
    while first < entries {
        let last = (first + step).min(entries);
        sqlx::query(SEED_LOGS)
            .bind(i64::try_from(first)?)
            .bind(i64::try_from(last)?)
            .bind(i64::try_from(devices)?)
            .bind(5.0e6 / rate as f64)
            .bind(START)
            .execute(pool)
            .await?;
        first = last;
        eprintln!("  {} of {logs} logs", (first * 5).min(logs));
    }
    sqlx::query(ddl_trim(logs)).execute(pool).await?;
    sqlx::query("vacuum analyze logs").execute(pool).await?;
    Ok(())
}

/// Deletes the logs past `logs` (the last entry may hold fewer than 5).
fn ddl_trim(logs: u64) -> sqlx::AssertSqlSafe<String> {
    sqlx::AssertSqlSafe(format!(
        "delete from logs where (created_at, id) in \
         (select created_at, id from logs order by created_at, id offset {logs})"
    ))
}

/// Entries `$1` to `$2` of 5 logs, device `entry % $3`, entry `e` received `e × $4` µs
/// after `$5`: messages of the seed's kinds (its stress test's, its examples'), with
/// numbers in them, and `log_data` with its stress test's fields.
const SEED_LOGS: &str = "
insert into logs (id, message_id, tenant, device_id, log_level, message, log_data, created_at)
select ((ems - 1704067200000) << 22) | ((e % 4096) << 10) | i,
       ems || '-' || (e % 4096) || '.' || i,
       'default',
       'device_' || lpad((e % $3)::text, 3, '0'),
       (array['DEBUG','INFO','INFO','INFO','INFO','INFO','WARNING','WARNING','ERROR','CRITICAL'])
           [1 + (hashint8(e * 5 + i) & 2147483647) % 10],
       (array['Stress test log ' || (e * 5 + i) || ' from device_' || lpad((e % $3)::text, 3, '0'),
              'Temperature reading: ' || round((20 + (hashint8(e * 7 + i) % 1000) / 100.0)::numeric, 2) || 'C',
              'Connection to server established',
              'Battery level at ' || (abs(hashint8(e + i)) % 100) || '%',
              'Failed to upload data: timeout after ' || (1000 + abs(hashint8(e * 3 + i)) % 4000) || 'ms',
              'User login successful: user_' || (abs(hashint8(e * 11 + i)) % 5000),
              'Sensor calibration complete',
              'Disk usage at ' || (abs(hashint8(e * 13 + i)) % 100) || '% on /data'])
           [1 + (abs(hashint8(e * 17 + i)) % 8)],
       jsonb_build_object('test_id', e * 5 + i, 'batch', e,
                          'timestamp', round((extract(epoch from at) + i * 0.000137)::numeric, 6),
                          'version', '1.0.' || (e % 100 / 20),
                          'retry_count', abs(hashint8(e * 19 + i)) % 4),
       at
from (select e, at, (extract(epoch from at) * 1000)::bigint as ems
      from (select e, $5::timestamptz + (e * $4) * interval '1 microsecond' as at
            from generate_series($1::bigint, $2::bigint - 1) e) t) s,
     generate_series(0, 4) i
";

/// Bytes on disk of `parent`'s partitions, with their TOAST and indexes.
async fn table_bytes(pool: &PgPool, parent: &str) -> Result<u64> {
    let bytes: i64 = sqlx::query_scalar(
        "select coalesce(sum(pg_total_relation_size(inhrelid)), 0)::bigint \
         from pg_inherits where inhparent = to_regclass($1)",
    )
    .bind(parent)
    .fetch_one(pool)
    .await?;
    Ok(bytes.unsigned_abs())
}

/// The time range of the logs.
#[derive(Debug, Clone, Copy)]
struct Range {
    since: OffsetDateTime,
    until: OffsetDateTime,
}

/// The median time of each search through the api, ms. A device's page is asked with
/// an `until` a microsecond later each time, so that the api's cache answers none of them.
async fn search_api(
    client: &reqwest::Client,
    base: &str,
    range: Range,
    requests: u32,
) -> Result<Vec<f64>> {
    let mut medians = Vec::new();
    for search in searches() {
        let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
        for request in 0..requests {
            let until = if search.api.starts_with("/api/logs/device") {
                range.until + time::Duration::microseconds(request.into())
            } else {
                range.until
            };
            let url = format!(
                "{base}{}&since={}&until={}",
                search.api,
                rfc3339(range.since),
                rfc3339(until)
            );
            let started = Instant::now();
            let answer = client.get(&url).send().await?;
            let status = answer.status();
            let body: Value = answer.json().await?;
            latency.record(started.elapsed().as_micros().max(1) as u64)?;
            if !status.is_success() {
                bail!("{url} answered {status}: {body}");
            }
        }
        medians.push(latency.value_at_quantile(0.5) as f64 / 1000.0);
    }
    Ok(medians)
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

/// The `victoria-logs` binary: `given`, or the one on PATH, or in ~/go/bin.
fn victoria_logs_binary(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(given) = given {
        return Ok(given.to_owned());
    }
    find_on_path("victoria-logs")
        .or_else(|| {
            let home = std::env::var_os("HOME")?;
            let path = Path::new(&home).join("go/bin/victoria-logs");
            path.exists().then_some(path)
        })
        .context(
            "no victoria-logs: `go install github.com/VictoriaMetrics/VictoriaLogs/app/victoria-logs@v1.52.2`, \
             or pass --victoria-logs PATH or --no-victoria-logs",
        )
}

/// A VictoriaLogs server of its own, in a temporary directory.
struct VictoriaLogs {
    process: ChildProcess,
    dir: tempfile::TempDir,
    port: u16,
}

impl VictoriaLogs {
    fn start(binary: &Path) -> Result<Self> {
        let dir = scratch_dir("logpipeline-victoria-logs-")?;
        let port = free_port()?;
        let mut command = std::process::Command::new(binary);
        command
            .arg(format!(
                "-storageDataPath={}",
                dir.path().join("data").display()
            ))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            .arg("-retentionPeriod=100y");
        let mut process = ChildProcess::spawn(
            "victoria-logs",
            command,
            &dir.path().join("victoria-logs.log"),
        )?;
        wait_until("VictoriaLogs answers", Duration::from_secs(30), || {
            process.ensure_running()?;
            Ok(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
        })?;
        Ok(Self { process, dir, port })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Sends every stored row as a JSON line, then waits until VictoriaLogs has flushed
    /// and merged them.
    async fn ingest(&mut self, pool: &PgPool, client: &reqwest::Client) -> Result<()> {
        let mut connection = pool.acquire().await?;
        let mut lines = connection
            .copy_out_raw(
                "copy (select json_build_object('_time', created_at, 'device_id', device_id, \
                 'log_level', log_level, 'message', message, 'log_data', log_data)::text \
                 from logs order by created_at, id) to stdout",
            )
            .await?;
        let insert = format!(
            "{}/insert/jsonline?_stream_fields=device_id&_msg_field=message&_time_field=_time",
            self.url()
        );
        let mut body: Vec<u8> = Vec::new();
        while let Some(part) = lines.next().await {
            body.extend_from_slice(&part?);
            if body.len() > 8 << 20 {
                let cut = body
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |at| at + 1);
                let rest = body.split_off(cut);
                post(client, &insert, std::mem::replace(&mut body, rest)).await?;
            }
        }
        post(client, &insert, body).await?;
        drop(lines);
        for path in ["/internal/force_flush", "/internal/force_merge"] {
            client.get(format!("{}{path}", self.url())).send().await?;
        }
        let metrics = format!("{}/metrics", self.url());
        let settled = || async {
            let text = client.get(&metrics).send().await?.text().await?;
            Ok::<_, anyhow::Error>(text.lines().all(|line| {
                let busy = line.starts_with("vl_active_merges")
                    || line.starts_with("vl_active_force_merges")
                    || line.starts_with("vl_pending_rows");
                !busy || line.ends_with(" 0")
            }))
        };
        let deadline = Instant::now() + Duration::from_secs(600);
        while !settled().await? {
            self.process.ensure_running()?;
            if Instant::now() > deadline {
                bail!("VictoriaLogs did not finish merging within 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// Bytes of its data directory.
    fn bytes(&self) -> Result<u64> {
        fn size(path: &Path) -> std::io::Result<u64> {
            let meta = std::fs::symlink_metadata(path)?;
            if !meta.is_dir() {
                return Ok(meta.len());
            }
            std::fs::read_dir(path)?
                .map(|entry| size(&entry?.path()))
                .sum()
        }
        Ok(size(&self.dir.path().join("data"))?)
    }

    /// The median time of each search, ms.
    async fn search(
        &self,
        client: &reqwest::Client,
        start: OffsetDateTime,
        end: OffsetDateTime,
        requests: u32,
    ) -> Result<Vec<f64>> {
        let range = format!("start={}&end={}", rfc3339(start), rfc3339(end));
        let mut medians = Vec::new();
        for search in searches() {
            let url = format!("{}{}&{range}", self.url(), search.victoria_logs);
            let mut latency = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
            for _ in 0..requests {
                let started = Instant::now();
                let answer = client.get(&url).send().await?;
                let status = answer.status();
                let body = answer.bytes().await?;
                latency.record(started.elapsed().as_micros().max(1) as u64)?;
                if !status.is_success() {
                    bail!(
                        "{url} answered {status}: {}",
                        String::from_utf8_lossy(&body)
                    );
                }
            }
            medians.push(latency.value_at_quantile(0.5) as f64 / 1000.0);
        }
        Ok(medians)
    }
}

async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<()> {
    if body.is_empty() {
        return Ok(());
    }
    let answer = client
        .post(url)
        .header("content-type", "application/stream+json")
        .body(body)
        .send()
        .await?;
    if !answer.status().is_success() {
        bail!("VictoriaLogs refused logs: {}", answer.status());
    }
    Ok(())
}

fn print_table(logs: u64, measured: &[Measured], compaction: &Compaction) {
    println!("\n{logs} logs: bytes on disk per log, and each search's median (ms)");
    print!("{:<14} {:>10}", "", "B/log");
    for search in searches() {
        print!(" {:>22}", search.name);
    }
    println!();
    for store in measured {
        print!(
            "{:<14} {:>10.1}",
            store.store,
            store.bytes as f64 / logs as f64
        );
        for ms in &store.searches_ms {
            print!(" {ms:>22.2}");
        }
        println!();
    }
    if let (Some(chunks), Some(victoria)) = (
        measured.iter().find(|m| m.store == "chunks"),
        measured.iter().find(|m| m.store == "VictoriaLogs"),
    ) {
        print!(
            "{:<14} {:>9.2}×",
            "chunks / VL",
            chunks.bytes as f64 / victoria.bytes.max(1) as f64
        );
        for (ours, theirs) in chunks.searches_ms.iter().zip(&victoria.searches_ms) {
            print!(" {:>21.2}×", ours / theirs.max(0.001));
        }
        println!();
    }
    println!(
        "compaction: {:.1} s, {} chunks; CPU per log: {:.2} µs of the workers' code, {:.2} µs of PostgreSQL",
        compaction.seconds,
        compaction.chunks,
        compaction.worker_us_per_log,
        compaction.postgres_us_per_log
    );
}

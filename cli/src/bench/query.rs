//! `logpipeline bench query`: the read path on a large table. Latency of cached and
//! uncached device queries, of the statistics, and of fleet-wide searches (a text
//! search over an hour and over a day, for a word every log has and for a phrase one
//! log has; a field filter; a count per minute over a day), against the real api, Redis
//! and PostgreSQL.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use logpipeline_core::storage::{self, PartitionSettings};
use logpipeline_local::postgres::{PostgresOptions, PostgresServer};
use logpipeline_local::redis::RedisServer;
use logpipeline_local::services::{ApiProcess, Env};
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;

/// Fills a `logs` table and measures query latency through the api.
#[derive(Debug, clap::Args)]
pub struct QueryBenchArgs {
    /// Rows in the logs table.
    #[arg(long, default_value_t = 1_000_000)]
    pub rows: u64,

    /// Devices the rows are spread over.
    #[arg(long, default_value_t = 1000)]
    pub devices: u64,

    /// Requests measured per kind of query.
    #[arg(long, default_value_t = 2000)]
    pub requests: u32,

    /// Logs per page.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,

    /// Partitions carry a trigram GIN index on `message` (`spec.storage.messageIndex`),
    /// built after the fill.
    #[arg(long)]
    pub message_index: bool,

    /// Partitions carry a GIN index on `log_data` (`spec.storage.logDataIndex`), built
    /// after the fill.
    #[arg(long)]
    pub log_data_index: bool,

    /// Write the figures as JSON to this file too.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

pub async fn run(args: QueryBenchArgs) -> Result<()> {
    let redis = RedisServer::start()?;
    let postgres = PostgresServer::start_with(PostgresOptions {
        durable: true,
        settings: Vec::new(),
    })?;
    let database = postgres.create_database()?;
    let api = ApiProcess::start(&redis.url(), &database, &Env::new())?;
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&database)
        .await?;
    crate::wait_for_schema(&pool).await?;

    fill(&pool, args.rows, args.devices).await?;
    if args.message_index || args.log_data_index {
        let started = Instant::now();
        let settings = PartitionSettings {
            message_index: args.message_index,
            log_data_index: args.log_data_index,
            ..PartitionSettings::default()
        };
        storage::reconcile_search_indexes(&mut *pool.acquire().await?, settings).await?;
        let bytes: i64 = sqlx::query_scalar(
            "select coalesce(sum(pg_relation_size(x.indexrelid)), 0)::bigint \
             from pg_index x join pg_class i on i.oid = x.indexrelid \
             join pg_am a on a.oid = i.relam \
             join pg_inherits h on h.inhrelid = x.indrelid \
             where h.inhparent = 'logs'::regclass and a.amname = 'gin'",
        )
        .fetch_one(&pool)
        .await?;
        eprintln!(
            "search indexes built in {:.1} s, {:.0} MiB ({:.0} B per row)",
            started.elapsed().as_secs_f64(),
            bytes as f64 / (1024.0 * 1024.0),
            bytes as f64 / args.rows.max(1) as f64
        );
        sqlx::query("analyze logs").execute(&pool).await?;
    }
    let client = crate::http_client()?;
    let base = api.url();

    // Every request a query of its own (another device, another `until`): all misses.
    let mut uncached = new_histogram()?;
    for i in 0..args.requests {
        let device = u64::from(i) % args.devices;
        let url = format!(
            "{base}/api/logs/device-{device}?limit={}&until=2100-01-01T00:00:{:02}.{:06}Z",
            args.limit,
            i / 1_000_000 % 60,
            i % 1_000_000
        );
        let (took, page) = timed_get(&client, &url).await?;
        expect_source(&page, "database")?;
        uncached.record(micros(took))?;
    }
    // One query, asked again and again: all hits.
    let mut cached = new_histogram()?;
    let url = format!("{base}/api/logs/device-1?limit={}", args.limit);
    timed_get(&client, &url).await?;
    for _ in 0..args.requests {
        let (took, page) = timed_get(&client, &url).await?;
        expect_source(&page, "cache")?;
        cached.record(micros(took))?;
    }
    // Statistics with the cache emptied before each request.
    let mut stats = new_histogram()?;
    let mut redis_connection = redis::Client::open(redis.url())?
        .get_multiplexed_async_connection()
        .await?;
    for _ in 0..(args.requests / 10).max(10) {
        let _: () = redis::cmd("DEL")
            .arg("cache:stats:10")
            .query_async(&mut redis_connection)
            .await?;
        let (took, answer) = timed_get(&client, &format!("{base}/api/stats")).await?;
        if answer["total_logs"].as_u64() != Some(args.rows) {
            bail!(
                "stats counted {} logs, not {}",
                answer["total_logs"],
                args.rows
            );
        }
        stats.record(micros(took))?;
    }

    // Fleet-wide searches over the first hour and the first day of the rows (one log a
    // millisecond: an hour holds 3.6 million of them, when there are as many).
    let first = time::macros::datetime!(2026-01-01 0:00 UTC);
    let hour = format!(
        "since={}&until={}",
        rfc3339(first),
        rfc3339(first + time::Duration::HOUR)
    );
    let day = format!(
        "since={}&until={}",
        rfc3339(first),
        rfc3339(first + time::Duration::DAY)
    );
    let searches = (args.requests / 100).max(5);
    let rare = |i: u32| {
        format!(
            "q=%22reading%20{}%20of%22",
            u64::from(i) * 7919 % args.rows.max(1)
        )
    };
    let mut search_figures = Vec::new();
    // (name, over a day rather than an hour, the histogram, the filters)
    for (name, whole_day, histogram, filters) in [
        (
            "search 1h, common word",
            false,
            false,
            "q=pressure&level=ERROR",
        ),
        (
            "search 1d, common word",
            true,
            false,
            "q=pressure&level=ERROR",
        ),
        ("search 1h, rare phrase", false, false, ""),
        ("search 1d, rare phrase", true, false, ""),
        (
            "field filter 1d",
            true,
            false,
            "data.firmware=1.4.2&data.bar=%3E%3D9.5",
        ),
        ("count per minute 1d", true, true, "interval=1m"),
    ] {
        let range = if whole_day { &day } else { &hour };
        let path = if histogram {
            "/api/logs/histogram"
        } else {
            "/api/logs"
        };
        let mut latency = new_histogram()?;
        let mut refused = 0;
        for i in 0..searches {
            let mut query = format!("{range}&limit={}", args.limit);
            if !filters.is_empty() {
                query = format!("{query}&{filters}");
            }
            if name.contains("rare") {
                query = format!("{query}&{}", rare(i));
            }
            let started = Instant::now();
            let answer = client.get(format!("{base}{path}?{query}")).send().await?;
            let status = answer.status();
            let body: Value = answer.json().await?;
            latency.record(micros(started.elapsed()))?;
            match status.as_u16() {
                200 => {}
                422 if body["error"] == "search_too_broad" => refused += 1,
                _ => bail!("{path}?{query} answered {status}: {body}"),
            }
        }
        search_figures.push((name, latency, refused));
    }

    let report = json!({
        "rows": args.rows,
        "devices": args.devices,
        "limit": args.limit,
        "message_index": args.message_index,
        "log_data_index": args.log_data_index,
        "uncached_query": summary(&uncached),
        "cached_query": summary(&cached),
        "stats_uncached": summary(&stats),
        "searches": search_figures
            .iter()
            .map(|(name, latency, refused)| json!({"name": name, "latency": summary(latency), "too_broad": refused}))
            .collect::<Vec<_>>(),
    });
    println!(
        "\nread path on {} rows over {} devices, pages of {} logs, one client:",
        args.rows, args.devices, args.limit
    );
    println!(
        "{:<22} {:>10} {:>10} {:>10} {:>10}",
        "", "p50 ms", "p90 ms", "p99 ms", "max ms"
    );
    for (name, histogram) in [
        ("uncached query", &uncached),
        ("cached query", &cached),
        ("stats (uncached)", &stats),
    ] {
        println!(
            "{name:<22} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
            ms(histogram.value_at_quantile(0.5)),
            ms(histogram.value_at_quantile(0.9)),
            ms(histogram.value_at_quantile(0.99)),
            ms(histogram.max())
        );
    }
    for (name, histogram, refused) in &search_figures {
        println!(
            "{name:<22} {:>10.3} {:>10.3} {:>10.3} {:>10.3}{}",
            ms(histogram.value_at_quantile(0.5)),
            ms(histogram.value_at_quantile(0.9)),
            ms(histogram.value_at_quantile(0.99)),
            ms(histogram.max()),
            if *refused > 0 {
                format!(
                    "  ({refused} of {} past the search budget: 422)",
                    histogram.len()
                )
            } else {
                String::new()
            }
        );
    }
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Inserts `rows` logs spread over `devices`, a few per millisecond, with every index
/// in place, and counts them into `log_counts` as the worker would have.
async fn fill(pool: &sqlx::PgPool, rows: u64, devices: u64) -> Result<()> {
    const CHUNK: u64 = 250_000;
    let started = Instant::now();
    let mut done = 0;
    // One log a millisecond from 2026-01-01: the partitions of that span first.
    let first = time::macros::datetime!(2026-01-01 0:00 UTC);
    let last = first + Duration::from_millis(rows);
    let days: Vec<time::OffsetDateTime> = (0..=(last - first).whole_days())
        .map(|day| first + time::Duration::days(day))
        .collect();
    storage::ensure_partitions(pool, &days, PartitionSettings::default()).await?;
    while done < rows {
        let end = (done + CHUNK).min(rows);
        sqlx::query(
            "insert into logs (id, message_id, device_id, log_level, message, log_data, created_at) \
             select g, 'bench-' || g, 'device-' || (g % $3), \
                    (array['DEBUG','INFO','WARNING','ERROR','CRITICAL'])[1 + g % 5], \
                    'reading ' || g || ' of the pressure sensor is within bounds', \
                    jsonb_build_object('seq', g, 'firmware', '1.4.2', 'bar', (g % 100) / 10.0), \
                    timestamptz '2026-01-01 00:00:00+00' + g * interval '1 millisecond' \
             from generate_series($1::bigint, $2::bigint - 1) as g",
        )
        .bind(i64::try_from(done)?)
        .bind(i64::try_from(end)?)
        .bind(i64::try_from(devices)?)
        .execute(pool)
        .await?;
        done = end;
        eprintln!(
            "filled {done} of {rows} rows ({:.0} rows/s)",
            done as f64 / started.elapsed().as_secs_f64()
        );
    }
    sqlx::query(
        "insert into log_counts (device_id, log_level, period, stripe, count, last_at) \
         select l.device_id, l.log_level, p.from_at, 0, count(*), max(l.created_at) \
         from logs l join log_partitions p on l.created_at >= p.from_at and l.created_at < p.to_at \
         group by 1, 2, 3",
    )
    .execute(pool)
    .await?;
    sqlx::query("vacuum analyze logs").execute(pool).await?;
    sqlx::query("vacuum analyze log_counts")
        .execute(pool)
        .await?;
    Ok(())
}

fn rfc3339(at: time::OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

async fn timed_get(client: &reqwest::Client, url: &str) -> Result<(Duration, Value)> {
    let started = Instant::now();
    let response = client.get(url).send().await?;
    let status = response.status();
    let body: Value = response.json().await?;
    let took = started.elapsed();
    if !status.is_success() {
        bail!("{url} answered {status}: {body}");
    }
    Ok((took, body))
}

fn expect_source(page: &Value, source: &str) -> Result<()> {
    if page["source"] != source {
        bail!("expected a page from the {source}, got {}", page["source"]);
    }
    Ok(())
}

fn new_histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

fn micros(took: Duration) -> u64 {
    u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn summary(histogram: &Histogram<u64>) -> Value {
    json!({
        "count": histogram.len(),
        "p50_ms": ms(histogram.value_at_quantile(0.5)),
        "p90_ms": ms(histogram.value_at_quantile(0.9)),
        "p99_ms": ms(histogram.value_at_quantile(0.99)),
        "max_ms": ms(histogram.max()),
    })
}

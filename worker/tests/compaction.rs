//! Compaction on a real PostgreSQL and Redis: rows move into chunks only once their stream
//! entries can never be delivered again, every log stays stored once and reads back as it
//! was, small chunks merge, retention drops chunks with their periods, and a database
//! of rows from before chunks is compacted whole.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

mod common;

use std::time::Duration;

use common::{database, entry, scalar, settings};
use logpipeline_core::codec::unix_micros;
use logpipeline_core::connection::RedisTarget;
use logpipeline_core::db;
use logpipeline_core::partitions::PartitionInterval;
use logpipeline_core::storage::{self, PartitionSettings};
use logpipeline_e2e::stored::{assert_each_once, every_log};
use logpipeline_local::redis::RedisServer;
use logpipeline_worker::compact::{self, CompactSettings, Report};
use logpipeline_worker::metrics::Metrics;
use logpipeline_worker::store::{Decoded, Store};
use logpipeline_worker::{upkeep, watermark};
use sqlx::PgPool;
use time::OffsetDateTime;

/// Small chunks, so that a few hundred logs make several.
const SETTINGS: CompactSettings = CompactSettings {
    hot_window: Duration::ZERO,
    chunk_rows: 64,
};

/// Far in the future: every entry acknowledged.
const ALL_ACKNOWLEDGED: i64 = i64::MAX;

/// One compaction at `now` with `watermark_ms`, merging small chunks by tier only.
async fn compact_at(pool: &PgPool, watermark_ms: i64, now: OffsetDateTime) -> Report {
    let mut connection = pool.acquire().await.unwrap();
    compact::compact(
        &mut connection,
        SETTINGS,
        watermark_ms,
        now,
        now - time::Duration::days(3650),
    )
    .await
    .unwrap()
}

/// The milliseconds of an entry's id.
fn millis(decoded: &Decoded) -> i64 {
    decoded.raw.id.split_once('-').unwrap().0.parse().unwrap()
}

#[tokio::test]
async fn rows_move_into_chunks_and_read_back_as_they_were() {
    let pool = database().await;
    db::migrate(&pool).await.unwrap();
    let store = Store::new(pool.clone(), settings(None));
    let now = OffsetDateTime::now_utc();
    for back in 0..30u32 {
        let at = now - time::Duration::minutes(30) + time::Duration::seconds(back.into());
        let entries: Vec<Decoded> = (0..5)
            .map(|device| entry(at, &format!("device-{device}"), 1 + back as usize % 7))
            .collect();
        store.store(&entries).await.unwrap();
    }
    // Rows a seed database holds: no stream id, a level of its own, no log_data.
    sqlx::query(
        "insert into logs (id, device_id, log_level, message, log_data, created_at, message_id) \
         values (-1, 'device-0', 'WARN', 'from the seed', null, $1, null), \
                (-2, 'device-0', 'ERROR', null, '{\"a\": [1, 2.50]}', $1, 'bench-2')",
    )
    .bind(now - time::Duration::minutes(20))
    .execute(&pool)
    .await
    .unwrap();
    let (before, _) = every_log(&pool).await.unwrap();
    let report = compact_at(&pool, ALL_ACKNOWLEDGED, now).await;
    assert_eq!(report.rows, before.len() as u64);
    let (after, in_chunks) = every_log(&pool).await.unwrap();
    assert_eq!(after, before, "every log, as it was");
    assert_eq!(in_chunks, before.len());
    assert_eq!(scalar(&pool, "select count(*) from logs").await, 0);
    assert!(scalar(&pool, "select count(*) from log_chunks").await >= 5);
    // Nothing is left to move, and a second pass moves nothing.
    assert_eq!(compact_at(&pool, ALL_ACKNOWLEDGED, now).await.rows, 0);
}

#[tokio::test]
async fn an_entry_not_yet_acknowledged_keeps_its_rows_and_a_redelivery_is_refused() {
    let pool = database().await;
    db::migrate(&pool).await.unwrap();
    let store = Store::new(pool.clone(), settings(None));
    let now = OffsetDateTime::now_utc();
    let acknowledged = entry(now - time::Duration::minutes(10), "pump", 5);
    let pending = entry(now - time::Duration::minutes(9), "pump", 5);
    let unread = entry(now - time::Duration::minutes(8), "pump", 5);
    store
        .store(&[acknowledged.clone(), pending.clone(), unread.clone()])
        .await
        .unwrap();
    // The group's oldest entry not acknowledged is `pending`: the watermark is its id.
    let report = compact_at(&pool, millis(&pending), now).await;
    assert_eq!(report.rows, 5, "only the acknowledged entry's logs move");
    let rows: Vec<String> = sqlx::query_scalar("select message_id from logs order by id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(
        rows.iter()
            .all(|id| id.starts_with(&pending.raw.id) || id.starts_with(&unread.raw.id)),
        "{rows:?}"
    );
    // The consumer holding `pending` dies; another claims and stores it again.
    let outcome = store.store(std::slice::from_ref(&pending)).await.unwrap();
    assert_eq!((outcome.logs, outcome.inserted), (5, 0));
    let (logs, _) = every_log(&pool).await.unwrap();
    assert_eq!(logs.len(), 15);
    assert_each_once(&logs);

    // What the watermark guards against: had `pending`'s rows moved while it could still
    // be delivered, its redelivery would have found no row to be refused by.
    compact_at(&pool, millis(&unread) + 1, now).await;
    let outcome = store.store(std::slice::from_ref(&pending)).await.unwrap();
    assert_eq!(outcome.inserted, 5, "a chunked log is not a key in logs");
}

#[tokio::test]
async fn the_watermark_is_the_oldest_entry_not_acknowledged_in_any_shard() {
    let redis = RedisServer::start().unwrap();
    let mut connection = RedisTarget::Single(redis::Client::open(redis.url()).unwrap())
        .connect(Duration::from_secs(5))
        .await
        .unwrap();
    let control = connection.clone();
    let run = |args: &[&str]| {
        let mut connection = control.clone();
        let mut cmd = redis::cmd(args[0]);
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        async move {
            cmd.query_async::<redis::Value>(&mut connection)
                .await
                .unwrap()
        }
    };
    let keys = ["s0".to_owned(), "s1".to_owned(), "s2".to_owned()];
    // Shard 0: entries at 1000 to 4000 ms; the group read three, acknowledged the first.
    for id in ["1000-0", "2000-0", "3000-0", "4000-0"] {
        run(&["XADD", "s0", id, "f", "v"]).await;
    }
    run(&["XGROUP", "CREATE", "s0", "g", "0"]).await;
    run(&[
        "XREADGROUP",
        "GROUP",
        "g",
        "c",
        "COUNT",
        "3",
        "STREAMS",
        "s0",
        ">",
    ])
    .await;
    run(&["XACK", "s0", "g", "1000-0"]).await;
    assert_eq!(
        watermark::read(&mut connection, &keys[..1], "g")
            .await
            .unwrap(),
        2000,
        "the oldest pending entry"
    );
    run(&["XACK", "s0", "g", "2000-0", "3000-0"]).await;
    assert_eq!(
        watermark::read(&mut connection, &keys[..1], "g")
            .await
            .unwrap(),
        4000,
        "the first entry not given to the group"
    );
    // Shard 1 has no such group yet: it may deliver its first entry.
    run(&["XADD", "s1", "2500-0", "f", "v"]).await;
    assert_eq!(
        watermark::read(&mut connection, &keys[..2], "g")
            .await
            .unwrap(),
        2500
    );
    // With everything delivered and acknowledged, and shard 2 not there at all, the
    // bound is the server's time: later entries get ids past it.
    run(&["DEL", "s1"]).await;
    run(&["XREADGROUP", "GROUP", "g", "c", "STREAMS", "s0", ">"]).await;
    run(&["XACK", "s0", "g", "4000-0"]).await;
    let before = unix_micros(OffsetDateTime::now_utc()) / 1000;
    let bound = watermark::read(&mut connection, &keys, "g").await.unwrap();
    assert!(bound >= before - 1000, "{bound} vs {before}");
}

#[tokio::test]
async fn small_chunks_merge_by_tier_and_all_of_them_once_their_period_closes() {
    let pool = database().await;
    db::migrate(&pool).await.unwrap();
    let store = Store::new(pool.clone(), settings(None));
    let start = OffsetDateTime::now_utc() - time::Duration::hours(2);
    // Nine passes, each moving five logs of the device: nine chunks of five.
    for pass in 0..9 {
        let at = start + time::Duration::seconds(pass);
        store.store(&[entry(at, "rare", 5)]).await.unwrap();
        compact_at(&pool, ALL_ACKNOWLEDGED, at + time::Duration::SECOND).await;
    }
    let chunks = || async {
        let rows: Vec<i32> = sqlx::query_scalar("select rows from log_chunks order by first_at")
            .fetch_all(&pool)
            .await
            .unwrap();
        rows
    };
    // Four of a tier (4–15 logs) merge into one of 20: after nine, two merges happened.
    let mut sizes = chunks().await;
    sizes.sort_unstable();
    assert_eq!(sizes, [5, 20, 20]);
    // Once the period has closed (here: as if it had), every small chunk merges.
    let mut connection = pool.acquire().await.unwrap();
    let now = OffsetDateTime::now_utc();
    let closed = now + time::Duration::days(3650);
    let report = compact::compact(&mut connection, SETTINGS, ALL_ACKNOWLEDGED, now, closed)
        .await
        .unwrap();
    assert_eq!((report.merged, report.merged_into), (3, 1));
    assert_eq!(chunks().await, [45]);
    let (logs, in_chunks) = every_log(&pool).await.unwrap();
    assert_eq!((logs.len(), in_chunks), (45, 45));
    assert_each_once(&logs);
}

#[tokio::test]
async fn ended_periods_give_their_space_back_and_retention_drops_their_chunks() {
    let pool = database().await;
    db::migrate(&pool).await.unwrap();
    let keep_all = Store::new(pool.clone(), settings(None));
    let now = OffsetDateTime::now_utc();
    let today = PartitionInterval::DAY.bucket(now).from;
    for back in 0..6u8 {
        let at = today - time::Duration::days(i64::from(back)) + time::Duration::hours(12);
        keep_all
            .store(&[entry(at.min(now - time::Duration::minutes(5)), "d", 10)])
            .await
            .unwrap();
    }
    let report = compact_at(&pool, ALL_ACKNOWLEDGED, now).await;
    assert_eq!(scalar(&pool, "select count(*) from logs").await, 0);
    // The periods that ended gave their tables' space back; today's keeps its own.
    assert_eq!(report.truncated, 5);
    assert_eq!(
        scalar(
            &pool,
            "select count(*) from log_partitions \
             where to_at <= now() and pg_relation_size(name::regclass) > 0"
        )
        .await,
        0
    );
    let store = Store::new(pool.clone(), settings(Some("3d")));
    upkeep::pass(&store, &Metrics::new().unwrap(), now)
        .await
        .unwrap();
    // Every chunk partition beside a partition of logs, and none beside a dropped one.
    let orphans: i64 = sqlx::query_scalar(
        "select count(*) from pg_inherits i join pg_class c on c.oid = i.inhrelid \
         where i.inhparent = 'log_chunks'::regclass and not exists \
             (select 1 from log_partitions p where 'log_chunks' || substr(p.name, 5) = c.relname)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(orphans, 0);
    let (logs, _) = every_log(&pool).await.unwrap();
    let cutoff = unix_micros(now - time::Duration::days(3) - time::Duration::minutes(10));
    let kept_days = (0..6)
        .filter(|back| {
            let ended = today - time::Duration::days(*back) + time::Duration::days(1);
            unix_micros(ended) > cutoff
        })
        .count();
    assert_eq!(logs.len(), kept_days * 10);
    // The counters went with their partitions: they still equal the logs kept.
    assert_eq!(
        scalar(&pool, "select sum(count)::bigint from log_count_totals").await,
        logs.len() as i64
    );
}

#[tokio::test]
async fn a_database_of_rows_from_before_chunks_is_compacted_whole() {
    let pool = database().await;
    // The schema of the previous release, with rows in its legacy and day partitions.
    db::MIGRATOR
        .run_to(db::BEFORE_PARTITIONING, &pool)
        .await
        .unwrap();
    sqlx::query(
        "insert into logs (message_id, device_id, log_level, message, log_data, created_at) \
         select 'seed-' || g, 'device-' || (g % 7), 'INFO', 'log ' || g, \
                jsonb_build_object('seq', g), now() - interval '3 days' + g * interval '1 second' \
         from generate_series(1, 2000) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    storage::partition_legacy(&pool).await.unwrap();
    db::MIGRATOR.run_to(6, &pool).await.unwrap();
    let now = OffsetDateTime::now_utc();
    storage::ensure_partitions(&pool, &[now], PartitionSettings::default())
        .await
        .unwrap();
    // And rows stored by this release's worker before the migration, two days ago.
    let store = Store::new(pool.clone(), settings(None));
    for minute in 0..20 {
        let at = now - time::Duration::days(2) + time::Duration::minutes(minute);
        store.store(&[entry(at, "device-1", 10)]).await.unwrap();
    }
    let before: Vec<(i64, String)> = sqlx::query_as(
        "select count(*), md5(string_agg(message_id, ',' order by message_id)) from logs",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    // This release's migration gives each partition its chunks' partition.
    db::migrate(&pool).await.unwrap();
    assert_eq!(
        scalar(
            &pool,
            "select count(*) from log_partitions p where to_regclass('log_chunks' || substr(p.name, 5)) is null"
        )
        .await,
        0
    );
    let report = compact_at(&pool, ALL_ACKNOWLEDGED, now).await;
    assert_eq!(report.rows, 2200);
    let (logs, in_chunks) = every_log(&pool).await.unwrap();
    assert_eq!(in_chunks, 2200);
    assert_each_once(&logs);
    let mut ids: Vec<String> = logs.into_iter().filter_map(|log| log.message_id).collect();
    ids.sort();
    let after: String = sqlx::query_scalar("select md5($1)")
        .bind(ids.join(","))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(before[0], (2200, after), "every stored log, by its id");
    assert_eq!(scalar(&pool, "select count(*) from logs").await, 0);
}

//! The partitioned `logs` table on a real PostgreSQL: upgrades that keep every row,
//! partitions ahead and across day boundaries, retention that drops exactly what is past
//! it without stalling writers, exact counters, and pruned queries.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

mod common;

use common::{database, entry, scalar, settings};

use std::time::{Duration, Instant};

use logpipeline_core::codec;
use logpipeline_core::db;
use logpipeline_core::partitions::{PartitionInterval, Retention};
use logpipeline_core::storage::{self, PartitionSettings};
use logpipeline_worker::metrics::Metrics;
use logpipeline_worker::store::{Decoded, Store, StoreSettings};
use logpipeline_worker::upkeep;
use sqlx::PgPool;
use time::OffsetDateTime;
use time::macros::datetime;

/// Every row of `logs` as text, in a fixed order: what an upgrade must keep.
const ROWS: &str = "select md5(string_agg(row(id, device_id, log_level, message, log_data, \
    created_at, indexed_at, message_id, tenant)::text, ',' order by id)) from logs";

/// The previous release's worker statement: idempotent on the unique message_id.
const PREVIOUS_INSERT: &str = "
with inserted as (
    insert into logs (message_id, tenant, device_id, log_level, message, log_data, created_at)
    select 'm-' || g, 'default', 'device-' || (g % 7), 'INFO', 'log ' || g,
           jsonb_build_object('seq', g), now() - g * interval '1 second'
    from generate_series(1, $1) as g
    on conflict (message_id) do nothing
    returning tenant, device_id, log_level, created_at
)
insert into log_counts (tenant, device_id, log_level, stripe, count, last_at)
select tenant, device_id, log_level, 0, count(*), max(created_at) from inserted
group by 1, 2, 3";

#[tokio::test]
async fn an_upgrade_partitions_todays_table_and_keeps_every_row_and_count() {
    let pool = database().await;
    db::MIGRATOR.run_to(3, &pool).await.unwrap();
    sqlx::query(PREVIOUS_INSERT)
        .bind(20_000)
        .execute(&pool)
        .await
        .unwrap();
    let before = sqlx::query_scalar::<_, String>(ROWS)
        .fetch_one(&pool)
        .await
        .unwrap();
    db::migrate(&pool).await.unwrap();
    let kind: String =
        sqlx::query_scalar("select relkind::text from pg_class where relname = 'logs'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(kind, "p", "logs is partitioned");
    let after = sqlx::query_scalar::<_, String>(ROWS)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(before, after, "every row, unchanged");
    assert_eq!(
        scalar(&pool, "select count(*) from logs_legacy").await,
        20_000
    );
    assert_eq!(
        scalar(
            &pool,
            "select sum(count)::bigint from log_counts where period = '-infinity'"
        )
        .await,
        20_000
    );
    // Attached, not rebuilt: the partition's indexes are the ones built before the swap,
    // plus the service and trace indexes that every partition gets after the migrations.
    let indexes: Vec<String> = sqlx::query_scalar(
        "select indexname::text from pg_indexes where tablename = 'logs_legacy' order by 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        indexes,
        [
            "idx_log_data_gin",
            "idx_tenant_device_created",
            "logs_legacy_key",
            "logs_legacy_service",
            "logs_legacy_trace",
            "logs_message_id_key"
        ]
    );
    // A second start changes nothing.
    db::migrate(&pool).await.unwrap();
    assert_eq!(scalar(&pool, "select count(*) from logs").await, 20_000);

    // An entry stored before the upgrade and delivered again after it is not stored
    // twice: its message_id is in the legacy partition's unique index.
    let store = Store::new(pool.clone(), settings(None));
    let redelivered = entry(OffsetDateTime::now_utc(), "device-1", 1);
    sqlx::query("update logs set message_id = $1, created_at = $2 where message_id = 'm-1'")
        .bind(&redelivered.raw.id)
        .bind(redelivered.entry.received_at)
        .execute(&pool)
        .await
        .unwrap();
    let outcome = store
        .store(std::slice::from_ref(&redelivered))
        .await
        .unwrap();
    assert_eq!((outcome.logs, outcome.inserted), (1, 0));
    let fresh = entry(OffsetDateTime::now_utc(), "device-1", 3);
    let outcome = store.store(std::slice::from_ref(&fresh)).await.unwrap();
    assert_eq!(outcome.inserted, 3);
    assert_eq!(scalar(&pool, "select count(*) from logs").await, 20_003);
}

#[tokio::test]
async fn an_interrupted_partitioning_finishes_at_the_next_start() {
    let pool = database().await;
    db::MIGRATOR
        .run_to(db::BEFORE_PARTITIONING, &pool)
        .await
        .unwrap();
    // The previous release's worker writes on, with the counters' new column defaulted.
    sqlx::query(PREVIOUS_INSERT)
        .bind(1000)
        .execute(&pool)
        .await
        .unwrap();
    // Where a start that died half-way left it: the bound chosen and its constraint
    // added but not validated, and the key index left invalid, as an interrupted
    // concurrent build leaves it (marked so in the catalog here).
    for statement in [
        "insert into log_partitions (name, from_at, to_at) \
         values ('logs_legacy', null, date_trunc('day', now()) + interval '2 days')",
        "alter table logs add constraint logs_legacy_bound \
         check (created_at is not null and created_at < date_trunc('day', now()) + interval '2 days') not valid",
        "create unique index logs_legacy_key on logs (created_at, id)",
        "update pg_index set indisvalid = false where indexrelid = 'logs_legacy_key'::regclass",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    db::migrate(&pool).await.unwrap();
    assert_eq!(
        scalar(&pool, "select count(*) from logs_legacy").await,
        1000
    );
    assert_eq!(
        scalar(&pool, "select count(*) from pg_index where not indisvalid").await,
        0
    );
}

#[tokio::test]
async fn a_seed_database_is_adopted_with_every_row() {
    let pool = database().await;
    // The seed system's schema and indexes, as its documents create them.
    for statement in [
        "create table logs (id bigserial primary key, device_id varchar(50) not null, \
         log_level varchar(20) not null, message text, log_data jsonb, \
         created_at timestamptz default now(), indexed_at timestamptz default now())",
        "create index idx_device_created on logs (device_id, created_at desc)",
        "create index idx_log_level on logs (log_level)",
        "create index idx_created_at on logs (created_at desc)",
        "create index idx_log_data_gin on logs using gin (log_data)",
        "insert into logs (device_id, log_level, message, log_data, created_at) \
         select 'seed-' || (g % 5), 'ERROR', 'seed log ' || g, '{\"a\": 1}', \
                timestamptz '2025-06-01 00:00:00+00' + g * interval '1 minute' \
         from generate_series(1, 5000) g",
        // The seed's column allowed a log without a time.
        "insert into logs (device_id, log_level, message, created_at, indexed_at) \
         values ('seed-x', 'INFO', 'no time', null, '2025-06-02 00:00:00+00')",
    ] {
        sqlx::query(statement).execute(&pool).await.unwrap();
    }
    db::migrate(&pool).await.unwrap();
    assert_eq!(scalar(&pool, "select count(*) from logs").await, 5001);
    assert_eq!(
        scalar(&pool, "select count(*) from logs where created_at is null").await,
        0
    );
    assert_eq!(
        scalar(
            &pool,
            "select count(*) from logs where message = 'no time' \
                       and created_at = '2025-06-02 00:00:00+00'"
        )
        .await,
        1,
        "a log without a time gets the time it was indexed"
    );
    assert_eq!(
        scalar(&pool, "select sum(count)::bigint from log_count_totals").await,
        5001,
        "the seed's rows are counted once"
    );
    // The seed's indexes no query uses are gone; the GIN index goes with the default
    // setting at the first upkeep pass.
    let indexes: Vec<String> = sqlx::query_scalar(
        "select indexname::text from pg_indexes where tablename = 'logs_legacy' order by 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        !indexes
            .iter()
            .any(|i| i == "idx_log_level" || i == "idx_created_at"),
        "{indexes:?}"
    );
    let store = Store::new(pool.clone(), settings(None));
    upkeep::pass(&store, &Metrics::new().unwrap(), OffsetDateTime::now_utc())
        .await
        .unwrap();
    let gin: i64 = scalar(
        &pool,
        "select count(*) from pg_indexes where tablename = 'logs_legacy' \
                                  and indexdef like '%gin%'",
    )
    .await;
    assert_eq!(gin, 0);
}

#[tokio::test]
async fn logs_across_a_day_boundary_go_to_their_own_partitions_and_partitions_wait_ahead() {
    let pool = database().await;
    db::migrate(&pool).await.unwrap();
    let store = Store::new(pool.clone(), settings(None));
    let before_midnight = datetime!(2031-03-31 23:59:59.999999 UTC);
    let after_midnight = datetime!(2031-04-01 0:00:00.000001 UTC);
    let entries = [
        entry(before_midnight, "d", 2),
        entry(after_midnight, "d", 3),
    ];
    let outcome = store.store(&entries).await.unwrap();
    assert_eq!(outcome.inserted, 5);
    let placed: Vec<(String, i64)> =
        sqlx::query_as("select tableoid::regclass::text, count(*) from logs group by 1 order by 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        placed,
        [
            ("logs_p20310331_00".to_owned(), 2),
            ("logs_p20310401_00".to_owned(), 3)
        ]
    );
    // An upkeep pass readies the current partition, the previous one and two ahead, so
    // ingest at any hour, also right after midnight, finds its partition made.
    let now = OffsetDateTime::now_utc();
    upkeep::pass(&store, &Metrics::new().unwrap(), now)
        .await
        .unwrap();
    for offset_hours in [-24, 0, 24, 48] {
        let at = now + time::Duration::hours(offset_hours);
        let held: bool = sqlx::query_scalar(
            "select exists (select 1 from log_partitions where from_at <= $1 and $1 < to_at)",
        )
        .bind(at)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert!(held, "no partition for {at}");
    }
}

#[tokio::test]
async fn retention_drops_exactly_the_partitions_past_it_with_their_counts() {
    let pool = database().await;
    db::migrate(&pool).await.unwrap();
    let store = Store::new(pool.clone(), settings(Some("3d")));
    let now = OffsetDateTime::now_utc();
    let day = PartitionInterval::DAY;
    let today = day.bucket(now).from;
    // Logs of today and the five days before, 10 + day logs each (stored while the
    // retention did not apply yet: a store without retention).
    let keep_all = Store::new(pool.clone(), settings(None));
    for back in 0..6u8 {
        let at = today - time::Duration::days(i64::from(back)) + time::Duration::hours(12);
        keep_all
            .store(&[entry(at.min(now), "d", 10 + usize::from(back))])
            .await
            .unwrap();
    }
    upkeep::pass(&store, &Metrics::new().unwrap(), now)
        .await
        .unwrap();
    // With 3 days kept and 10 minutes of grace, a partition goes once it ended more than
    // 3 days and 10 minutes ago: those of 4 and 5 days back, and the one of 3 days back
    // only in the first 10 minutes of a day.
    let cutoff = Retention::cutoff("3d".parse().unwrap(), now) - Duration::from_secs(600);
    let remaining: Vec<(String, OffsetDateTime)> =
        sqlx::query_as("select name::text, to_at from log_partitions order by to_at")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert!(
        remaining.iter().all(|(_, to)| *to > cutoff),
        "{remaining:?}"
    );
    for back in 1..=5i64 {
        let name = format!(
            "logs_p{}",
            (today - time::Duration::days(back))
                .format(time::macros::format_description!("[year][month][day]_00"))
                .unwrap()
        );
        let exists: bool = sqlx::query_scalar("select to_regclass($1) is not null")
            .bind(&name)
            .fetch_one(&pool)
            .await
            .unwrap();
        let ended = today - time::Duration::days(back) + time::Duration::days(1);
        assert_eq!(exists, ended > cutoff, "{name}");
    }
    // The counters went with their partitions: they still equal the rows.
    assert_eq!(
        scalar(&pool, "select count(*) from logs").await,
        scalar(&pool, "select sum(count)::bigint from log_count_totals").await
    );
    // A log received past the retention is not stored.
    let outcome = store
        .store(&[entry(now - Duration::from_secs(4 * 86_400), "d", 2)])
        .await
        .unwrap();
    assert_eq!(
        (outcome.expired, outcome.inserted, outcome.stored.len()),
        (2, 0, 1)
    );
}

#[tokio::test]
async fn counts_wait_one_row_per_batch_and_fold_exactly_while_stores_go_on() {
    let pool = database().await;
    db::migrate(&pool).await.unwrap();
    let store = Store::new(pool.clone(), settings(None));
    let now = OffsetDateTime::now_utc();
    let two_days_ago = now - Duration::from_secs(2 * 86_400);
    for _ in 0..20 {
        store
            .store(&[entry(two_days_ago, "d", 5), entry(now, "e", 1)])
            .await
            .unwrap();
    }
    assert_eq!(
        scalar(&pool, "select count(*) from log_count_deltas").await,
        20
    );
    assert_eq!(scalar(&pool, "select count(*) from log_counts").await, 0);
    assert_eq!(
        scalar(&pool, "select sum(count)::bigint from log_count_totals").await,
        120
    );
    // Folds racing each other and the writers: the totals always equal the rows.
    let writers = {
        let store = store.clone();
        tokio::spawn(async move {
            for _ in 0..50 {
                store.store(&[entry(now, "f", 3)]).await.unwrap();
            }
        })
    };
    let mut folded = 0;
    while !writers.is_finished() {
        let (a, b) = tokio::join!(storage::fold_counts(&pool), storage::fold_counts(&pool));
        for outcome in [a.unwrap(), b.unwrap()] {
            if let storage::FoldOutcome::Folded(count) = outcome {
                folded += count;
            }
        }
        let (rows, counted): (i64, i64) = sqlx::query_as(
            "select (select count(*) from logs), \
                    (select sum(count)::bigint from log_count_totals)",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(rows, counted);
    }
    writers.await.unwrap();
    while storage::fold_counts(&pool).await.unwrap() != storage::FoldOutcome::Folded(0) {}
    assert!(folded >= 20, "{folded}");
    assert_eq!(
        scalar(&pool, "select count(*) from log_count_deltas").await,
        0
    );
    assert_eq!(
        scalar(&pool, "select sum(count)::bigint from log_counts").await,
        270
    );
    // One counter row per tenant, device, level and partition.
    assert_eq!(scalar(&pool, "select count(*) from log_counts").await, 3);
}

/// The previous release's store statement (migration 5): the batch inserted with
/// `on conflict do nothing`, its counts added to a striped counter in the same statement.
const RELEASE_5_INSERT: &str = "
with inserted as (
    insert into logs (id, message_id, tenant, device_id, log_level, message, log_data, created_at)
    select id, message_id, 'default', device_id, 'INFO', message, '{}'::jsonb, created_at
    from unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
        as batch (id, message_id, device_id, message, created_at)
    on conflict do nothing
    returning tenant, device_id, log_level, created_at
)
insert into log_counts (tenant, device_id, log_level, period, stripe, count, last_at)
select i.tenant, i.device_id, i.log_level, coalesce(p.from_at, '-infinity'), 7, count(*),
       max(i.created_at)
from inserted i
join log_partitions p
    on (p.from_at is null or i.created_at >= p.from_at) and i.created_at < p.to_at
group by 1, 2, 3, 4";

#[tokio::test]
async fn an_upgrade_from_the_previous_release_keeps_every_row_and_exactly_once() {
    let pool = database().await;
    db::MIGRATOR
        .run_to(db::BEFORE_PARTITIONING, &pool)
        .await
        .unwrap();
    storage::partition_legacy(&pool).await.unwrap();
    db::MIGRATOR.run_to(5, &pool).await.unwrap();
    let store = Store::new(pool.clone(), settings(None));
    let now = OffsetDateTime::now_utc();
    storage::ensure_partitions(&pool, &[now], PartitionSettings::default())
        .await
        .unwrap();
    // Entries the previous release stored, the last of them not yet acknowledged.
    let entries: Vec<Decoded> = (0..10).map(|i| entry(now, &format!("d{i}"), 5)).collect();
    for decoded in &entries {
        let count = decoded.entry.logs.len();
        let keys: Vec<i64> = (0..count)
            .map(|i| codec::log_key(&decoded.raw.id, i).unwrap())
            .collect();
        let ids = codec::log_ids(&decoded.raw.id, count);
        let devices: Vec<&str> = decoded
            .entry
            .logs
            .iter()
            .map(|l| l.device_id.as_str())
            .collect();
        let messages: Vec<&str> = decoded
            .entry
            .logs
            .iter()
            .map(|l| l.message.as_str())
            .collect();
        sqlx::query(RELEASE_5_INSERT)
            .bind(keys)
            .bind(ids)
            .bind(devices)
            .bind(messages)
            .bind(vec![decoded.entry.received_at; count])
            .execute(&pool)
            .await
            .unwrap();
    }
    let before = sqlx::query_scalar::<_, String>(ROWS)
        .fetch_one(&pool)
        .await
        .unwrap();
    db::migrate(&pool).await.unwrap();
    let after = sqlx::query_scalar::<_, String>(ROWS)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(before, after, "every row, unchanged");
    assert_eq!(
        scalar(&pool, "select sum(count)::bigint from log_count_totals").await,
        50
    );
    // The new release gets the unacknowledged entries again: nothing is stored twice.
    let outcome = store.store(&entries[7..]).await.unwrap();
    assert_eq!(
        (outcome.logs, outcome.inserted, outcome.stored.len()),
        (15, 0, 3)
    );
    let fresh = entry(now, "d0", 2);
    let outcome = store.store(&[fresh]).await.unwrap();
    assert_eq!(outcome.inserted, 2);
    assert_eq!(scalar(&pool, "select count(*) from logs").await, 52);
    assert_eq!(
        scalar(&pool, "select sum(count)::bigint from log_count_totals").await,
        52
    );
}

#[tokio::test]
async fn a_device_query_with_a_time_range_reads_only_its_partitions() {
    let pool = database().await;
    db::migrate(&pool).await.unwrap();
    let store = Store::new(pool.clone(), settings(None));
    for day in 1..=5 {
        let at = datetime!(2031-05-01 12:00 UTC) + time::Duration::days(day);
        store.store(&[entry(at, "pump-1", 3)]).await.unwrap();
    }
    // The api's device query (api/src/query.rs), with since and until on May 3.
    let plan: serde_json::Value = sqlx::query_scalar(
        "explain (format json) select id, message_id, device_id, log_level, message, \
         log_data::text as log_data, created_at from logs \
         where tenant = 'default' and device_id = 'pump-1' \
         and created_at >= '2031-05-03 00:00:00+00' and created_at < '2031-05-04 00:00:00+00' \
         order by created_at desc, id desc limit 100",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let text = plan.to_string();
    let scanned: Vec<&str> = text
        .match_indices("logs_p2031")
        .map(|(at, _)| &text[at..at + 17])
        .collect();
    assert!(!scanned.is_empty(), "{text}");
    assert!(
        scanned.iter().all(|name| *name == "logs_p20310503_00"),
        "{scanned:?} in {text}"
    );
}

#[tokio::test]
async fn dropping_a_partition_lets_writes_and_reads_go_on() {
    let pool = database().await;
    db::migrate(&pool).await.unwrap();
    let store = Store::new(pool.clone(), settings(Some("1d")));
    let now = OffsetDateTime::now_utc();
    let old = now - Duration::from_secs(3 * 86_400);
    Store::new(pool.clone(), settings(None))
        .store(&[entry(old, "d", 100)])
        .await
        .unwrap();
    // A reader that keeps a transaction open on logs, as a long query does: a detach
    // must wait for it. With a plain DETACH, which locks the whole table, every write
    // would queue behind that wait.
    let mut reader = pool.begin().await.unwrap();
    sqlx::query("select count(*) from logs")
        .execute(&mut *reader)
        .await
        .unwrap();
    let upkeep = tokio::spawn({
        let store = store.clone();
        async move { upkeep::pass(&store, &Metrics::new().unwrap(), now).await }
    });
    let started = Instant::now();
    loop {
        let pending: bool =
            sqlx::query_scalar("select exists (select 1 from pg_inherits where inhdetachpending)")
                .fetch_one(&pool)
                .await
                .unwrap();
        if pending {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the detach never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The drop waits on the reader; meanwhile writes and reads of logs go on.
    let mut latencies = Vec::new();
    for _ in 0..50 {
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            Duration::from_secs(10),
            store.store(&[entry(OffsetDateTime::now_utc(), "live", 10)]),
        )
        .await
        .expect("a write waited behind the partition drop")
        .unwrap();
        assert_eq!(outcome.inserted, 10);
        latencies.push(started.elapsed());
    }
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        sqlx::query_scalar::<_, i64>("select count(*) from logs where device_id = 'live'")
            .fetch_one(&pool),
    )
    .await
    .expect("a read waited behind the partition drop")
    .unwrap();
    assert_eq!(read, 500);
    assert!(
        !upkeep.is_finished(),
        "the drop did not wait for the reader"
    );
    reader.commit().await.unwrap();
    upkeep.await.unwrap().unwrap();
    assert_eq!(scalar(&pool, "select count(*) from logs").await, 500);
    latencies.sort();
    println!(
        "50 batches stored while a partition drop waited: p50 {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
}

/// Each partition's valid GIN indexes, as (partition, indexed column), in order.
async fn search_indexes(pool: &PgPool) -> Vec<(String, String)> {
    sqlx::query_as(
        "select p.name::text, c.attname::text from log_partitions p \
         join pg_index x on x.indrelid = to_regclass(p.name) \
         join pg_class i on i.oid = x.indexrelid \
         join pg_am a on a.oid = i.relam and a.amname = 'gin' \
         join pg_attribute c on c.attrelid = x.indrelid and c.attnum = x.indkey[0] \
         where x.indisvalid order by 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_search_indexes_follow_their_settings_on_every_partition() {
    let pool = database().await;
    db::migrate(&pool).await.unwrap();
    let with = |log_data_index, message_index| StoreSettings {
        partitions: PartitionSettings {
            log_data_index,
            message_index,
            ..PartitionSettings::default()
        },
        retention: None,
    };
    let metrics = Metrics::new().unwrap();
    let now = OffsetDateTime::now_utc();
    let partitions = |pool: PgPool| async move {
        let names: Vec<String> = sqlx::query_scalar("select name from log_partitions order by 1")
            .fetch_all(&pool)
            .await
            .unwrap();
        names
    };

    // Partitions made while the message index is on carry it from the start: those a
    // batch makes and those an upkeep pass readies ahead.
    let store = Store::new(pool.clone(), with(false, true));
    store
        .store(&[entry(datetime!(2031-03-31 12:00 UTC), "d", 3)])
        .await
        .unwrap();
    upkeep::pass(&store, &metrics, now).await.unwrap();
    let names = partitions(pool.clone()).await;
    assert!(names.len() >= 5, "{names:?}");
    let only = |column: &str| -> Vec<(String, String)> {
        names
            .iter()
            .map(|name| (name.clone(), column.to_owned()))
            .collect()
    };
    assert_eq!(search_indexes(&pool).await, only("message"));
    // A text search can use it: `ILIKE` on the message, case-insensitive, anywhere.
    let mut plan = pool.begin().await.unwrap();
    sqlx::query("set local enable_seqscan = off")
        .execute(&mut *plan)
        .await
        .unwrap();
    let explained: Vec<String> =
        sqlx::query_scalar("explain select id from logs where message ilike '%LOG 2%'")
            .fetch_all(&mut *plan)
            .await
            .unwrap();
    plan.rollback().await.unwrap();
    assert!(
        explained.iter().any(|line| line.contains("_message_trgm")),
        "{explained:#?}"
    );
    let found: i64 = sqlx::query_scalar("select count(*) from logs where message ilike '%LOG 2%'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(found, 1);

    // Turning one on and the other off builds and drops exactly those, on every
    // partition: both are GIN indexes, told apart by their column.
    let store = Store::new(pool.clone(), with(true, false));
    upkeep::pass(&store, &metrics, now).await.unwrap();
    assert_eq!(search_indexes(&pool).await, only("log_data"));

    // A concurrent build that failed leaves an invalid index; the next pass replaces it.
    let store = Store::new(pool.clone(), with(true, true));
    upkeep::pass(&store, &metrics, now).await.unwrap();
    sqlx::query(
        "update pg_index set indisvalid = false \
         where indexrelid = to_regclass($1 || '_message_trgm')",
    )
    .bind(&names[0])
    .execute(&pool)
    .await
    .unwrap();
    let mut expected: Vec<(String, String)> = only("log_data")
        .into_iter()
        .chain(only("message"))
        .collect();
    expected.sort();
    assert_ne!(search_indexes(&pool).await, expected);
    upkeep::pass(&store, &metrics, now).await.unwrap();
    assert_eq!(search_indexes(&pool).await, expected);

    let store = Store::new(pool.clone(), with(false, false));
    upkeep::pass(&store, &metrics, now).await.unwrap();
    assert_eq!(search_indexes(&pool).await, []);
}

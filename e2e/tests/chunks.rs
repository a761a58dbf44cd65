//! Chunks on a real stack: every read (device, service and trace pages, searches,
//! histograms) answers the same whether the logs are rows, chunks or both; a compaction
//! killed midway leaves every log stored once; and workers that compact while logs
//! arrive store each accepted log exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::collections::BTreeMap;
use std::time::Duration;

use logpipeline_core::codec;
use logpipeline_e2e::stack::{Stack, eventually, wait_for_schema};
use logpipeline_e2e::stored::{assert_each_once, every_log};
use logpipeline_local::auth::ApiKey;
use logpipeline_local::services::binaries_dir;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Messages with what a search must match alike in both shapes: case, accents, Greek
/// and Turkish letters, `ILIKE`'s pattern characters, a word inside a word, emoji.
const MESSAGES: [Option<&str>; 13] = [
    Some("pressure high on valve 3"),
    Some("PRESSURE dropped, valve 7 closed"),
    Some("Überdruck im Ventil 3"),
    Some("überdruck gemeldet"),
    Some("ΣΊΓΜΑ test σίγμα"),
    Some("İstanbul sensor ıi"),
    Some("temperature 50% over limit"),
    Some("motor_stop requested"),
    Some("motorXstop is not a word"),
    Some("emoji ✓ ok 🚀"),
    Some("Overvalve3 tripped"),
    Some(""),
    None,
];
const LEVELS: [&str; 5] = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"];

/// Log `n` of `tenant`, received at `at`: a row as the worker stores it.
struct Log {
    tenant: &'static str,
    device: String,
    at: OffsetDateTime,
    id: i64,
    message_id: Option<String>,
    level: &'static str,
    message: Option<&'static str>,
    data: Option<Value>,
    service: Option<&'static str>,
    trace: Option<String>,
    span: Option<String>,
}

/// Acme's 700 logs over the 90 minutes before `now` (three at a time in one entry, with
/// one time and consecutive keys), and a few of globex's with the same names and words.
fn dataset(now: OffsetDateTime) -> Vec<Log> {
    let start = now - time::Duration::minutes(90);
    let mut logs = Vec::new();
    for n in 0..700usize {
        let entry = n / 3;
        let at = start + time::Duration::milliseconds(21_000 * entry as i64);
        let ms = codec::unix_micros(at) / 1000;
        let entry_id = format!("{ms}-{}", entry % 5);
        let index = n % 3;
        let message_id = match n % 97 {
            0 => None,
            1 => Some(format!("seed-{n}")),
            _ => Some(format!("{entry_id}.{index}")),
        };
        let code = match n % 4 {
            0 => json!(42),
            1 => json!("42"),
            _ => json!(7),
        };
        let rpm = if n % 11 == 0 {
            json!("fast")
        } else {
            json!(800 + 10 * n)
        };
        let ratio = match n % 3 {
            0 => json!(1),
            1 => serde_json::from_str::<Value>("1.0").unwrap(),
            _ => json!(1.5),
        };
        let flag = match n % 3 {
            0 => json!(true),
            1 => json!(false),
            _ => Value::Null,
        };
        let data = (n % 13 != 0).then(|| {
            json!({
                "n": n,
                "firmware": if n % 3 == 0 { "2.4.1" } else { "2.5.0" },
                "motor": {"rpm": rpm},
                "code": code,
                "ratio": ratio,
                "flag": flag,
                "tags": ["a", "b"],
            })
        });
        logs.push(Log {
            tenant: "acme",
            device: if n % 17 == 0 {
                "batch".into()
            } else {
                format!("pump-{}", n % 6)
            },
            at,
            id: codec::log_key(&entry_id, index).unwrap(),
            message_id,
            level: if n % 50 == 7 { "WARN" } else { LEVELS[n % 5] },
            message: MESSAGES[n % MESSAGES.len()],
            data,
            service: [Some("checkout"), Some("billing"), None][n % 3],
            trace: (n % 4 == 0).then(|| format!("trace-{}", n / 40)),
            span: (n % 8 == 0).then(|| format!("span-{n}")),
        });
    }
    for n in 0..20usize {
        let at = start + time::Duration::minutes(n as i64 * 4);
        logs.push(Log {
            tenant: "globex",
            device: format!("pump-{}", n % 2),
            at,
            id: -(n as i64) - 1,
            message_id: Some(format!("globex-{n}")),
            level: "ERROR",
            message: Some("pressure high on valve 3"),
            data: Some(json!({"n": 10_000 + n, "firmware": "2.4.1"})),
            service: Some("checkout"),
            trace: Some("trace-1".into()),
            span: None,
        });
    }
    logs
}

/// Stores `logs` as rows, as the worker would.
async fn insert(pool: &PgPool, logs: &[Log]) {
    let times: Vec<OffsetDateTime> = logs.iter().map(|log| log.at).collect();
    logpipeline_core::storage::ensure_partitions(
        pool,
        &times,
        logpipeline_core::storage::PartitionSettings::default(),
    )
    .await
    .unwrap();
    sqlx::query(
        "insert into logs (tenant, device_id, created_at, id, message_id, log_level, message, \
                           log_data, service_name, trace_id, span_id) \
         select * from unnest($1::text[], $2::text[], $3::timestamptz[], $4::bigint[], \
                              $5::text[], $6::text[], $7::text[], $8::jsonb[], $9::text[], \
                              $10::text[], $11::text[])",
    )
    .bind(logs.iter().map(|log| log.tenant).collect::<Vec<_>>())
    .bind(
        logs.iter()
            .map(|log| log.device.clone())
            .collect::<Vec<_>>(),
    )
    .bind(times)
    .bind(logs.iter().map(|log| log.id).collect::<Vec<_>>())
    .bind(
        logs.iter()
            .map(|log| log.message_id.clone())
            .collect::<Vec<_>>(),
    )
    .bind(logs.iter().map(|log| log.level).collect::<Vec<_>>())
    .bind(logs.iter().map(|log| log.message).collect::<Vec<_>>())
    .bind(logs.iter().map(|log| log.data.clone()).collect::<Vec<_>>())
    .bind(logs.iter().map(|log| log.service).collect::<Vec<_>>())
    .bind(logs.iter().map(|log| log.trace.clone()).collect::<Vec<_>>())
    .bind(logs.iter().map(|log| log.span.clone()).collect::<Vec<_>>())
    .execute(pool)
    .await
    .unwrap();
}

/// Everything a user can read of the dataset, by request: every page of every page
/// walk, each answer whole.
async fn every_answer(
    client: &reqwest::Client,
    base: &str,
    (acme, globex): (&ApiKey, &ApiKey),
    now: OffsetDateTime,
    edge: OffsetDateTime,
) -> BTreeMap<String, Vec<Value>> {
    let range = format!(
        "since={}&until={}",
        rfc3339(now - time::Duration::hours(3)),
        rfc3339(now + time::Duration::minutes(1))
    );
    let middle = format!(
        "since={}&until={}",
        rfc3339(now - time::Duration::minutes(50)),
        rfc3339(now - time::Duration::minutes(20))
    );
    // Up to half a microsecond after pump-2's newest log: PostgreSQL gets the bound in
    // whole microseconds, so the log is not before it.
    let to_edge = format!(
        "since={}&until={}",
        rfc3339(now - time::Duration::hours(3)),
        rfc3339(edge)
    );
    let mut walks: Vec<(String, &ApiKey)> = Vec::new();
    for page in [
        "/api/logs/pump-1?limit=7".to_owned(),
        "/api/logs/pump-1?limit=7&level=ERROR,CRITICAL".into(),
        format!("/api/logs/pump-2?limit=5&{middle}"),
        format!("/api/logs/pump-2?limit=5&{to_edge}"),
        "/api/logs/batch?limit=4".into(),
        "/api/services/checkout/logs?limit=9".into(),
        "/api/services/billing/logs?limit=9&level=INFO".into(),
        "/api/traces/trace-3/logs?limit=3".into(),
    ] {
        walks.push((page, acme));
    }
    for search in [
        "",
        "q=pressure",
        "q=%22valve%203%22",
        "q=alv",
        "q=%C3%BCberdruck",
        "q=%C3%9CBERDRUCK",
        "q=%CF%83%CE%AF%CE%B3%CE%BC%CE%B1",
        "q=istanbul",
        "q=50%25",
        "q=motor_stop",
        "q=%F0%9F%9A%80",
        "q=pressure%20valve",
        "level=ERROR",
        "level=DEBUG,CRITICAL&q=valve",
        "data.firmware=2.4.1",
        "data.code=42",
        "data.motor.rpm=%3E%3D4000",
        "data.motor.rpm=%3C900",
        "data.ratio=1",
        "data.flag=true",
        "data.flag=null",
        "data.tags=a",
        "device_id=pump-3&q=valve",
        "service_name=checkout&level=INFO",
        "trace_id=trace-2",
        "order=oldest&q=pressure",
        "order=oldest&data.firmware=2.5.0&level=WARNING",
    ] {
        walks.push((format!("/api/logs?{range}&limit=9&{search}"), acme));
    }
    walks.push((format!("/api/logs?{range}&limit=9&q=pressure"), globex));
    walks.push(("/api/logs/pump-1?limit=6".into(), globex));
    let mut answers = BTreeMap::new();
    for (walk, key) in walks {
        answers.insert(
            format!("{}: {walk}", key.tenant),
            pages(client, base, key, &walk).await,
        );
    }
    for (bounds, histogram) in [
        (&range, "interval=1m"),
        (&range, "interval=1h"),
        (&range, "interval=5m&level=ERROR"),
        (&range, "interval=15m&q=valve"),
        (&range, "interval=1m&service_name=billing"),
        (&range, "interval=1m&device_id=pump-4&level=INFO,WARNING"),
        (&range, "interval=1h&data.firmware=2.4.1"),
        // A range that ends at a log's very time (to the nanosecond): chunks counted
        // whole must stop where rows do.
        (&middle, "interval=1d"),
        (&to_edge, "interval=1d&device_id=pump-2"),
    ] {
        let path = format!("/api/logs/histogram?{bounds}&{histogram}");
        answers.insert(
            format!("acme: {path}"),
            vec![get(client, base, acme, &path).await],
        );
    }
    answers
}

/// Every page of `path`, following `next`.
async fn pages(client: &reqwest::Client, base: &str, key: &ApiKey, path: &str) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut cursor = String::new();
    loop {
        let mut page = get(client, base, key, &format!("{path}{cursor}")).await;
        assert_ne!(
            page["source"], "cache",
            "{path}: a cached page tests nothing here"
        );
        page.as_object_mut().unwrap().remove("source");
        let next = page["next"].as_str().map(str::to_owned);
        pages.push(page);
        match next {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return pages,
        }
    }
}

async fn get(client: &reqwest::Client, base: &str, key: &ApiKey, path: &str) -> Value {
    let answer = client
        .get(format!("{base}{path}"))
        .header("x-api-key", &key.secret)
        .send()
        .await
        .unwrap();
    let status = answer.status();
    let body: Value = answer.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap()
}

/// Empties the api's query cache, so that the next pages come from PostgreSQL.
async fn forget_cached_pages(stack: &Stack) {
    let mut redis = stack.redis().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("cache:*")
        .query_async(&mut redis)
        .await
        .unwrap();
    for key in keys {
        let _: () = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut redis)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_answers_the_same_from_rows_from_chunks_and_from_both() {
    let acme = ApiKey::new("acme", "console", &["write", "read"]);
    let globex = ApiKey::new("globex", "console", &["write", "read"]);
    let stack = Stack::builder()
        .api()
        .workers(1)
        .api_keys(&[&acme, &globex])
        .start()
        .unwrap();
    let pool = stack.pool().await.unwrap();
    wait_for_schema(&pool).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let logs = dataset(now);
    insert(&pool, &logs).await;
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let base = stack.api_url().unwrap();
    let newest = logs
        .iter()
        .filter(|log| log.device == "pump-2")
        .map(|log| codec::unix_micros(log.at))
        .max()
        .unwrap();
    let edge = OffsetDateTime::from_unix_timestamp_nanos(i128::from(newest) * 1000 + 500).unwrap();
    let keys = (&acme, &globex);
    let as_rows = every_answer(&client, &base, keys, now, edge).await;
    assert!(as_rows.values().map(Vec::len).sum::<usize>() > 100);

    // The logs older than 20 minutes become chunks; the rest stay rows. The last log
    // of a chunk is then the one at the end of the `middle` range.
    let (ok, printed) = stack
        .worker_admin(&["compact", "--older-than", "20m"])
        .unwrap();
    assert!(ok, "{printed}");
    let (stored, in_chunks) = every_log(&pool).await.unwrap();
    assert_eq!(stored.len(), logs.len());
    assert!(
        in_chunks > 300 && in_chunks < logs.len() - 50,
        "{in_chunks} of {} in chunks: {printed}",
        logs.len()
    );
    forget_cached_pages(&stack).await;
    let as_both = every_answer(&client, &base, keys, now, edge).await;
    for (request, answer) in &as_rows {
        assert_eq!(&as_both[request], answer, "rows and chunks: {request}");
    }

    let (ok, printed) = stack
        .worker_admin(&["compact", "--older-than", "0s"])
        .unwrap();
    assert!(ok, "{printed}");
    let (stored, in_chunks) = every_log(&pool).await.unwrap();
    assert_eq!((stored.len(), in_chunks), (logs.len(), logs.len()));
    assert_each_once(&stored);
    forget_cached_pages(&stack).await;
    let as_chunks = every_answer(&client, &base, keys, now, edge).await;
    for (request, answer) in &as_rows {
        assert_eq!(&as_chunks[request], answer, "chunks: {request}");
    }
}

/// Starts `logpipeline-worker admin compact --older-than 0s` against `stack`.
fn start_compaction(stack: &Stack) -> std::process::Child {
    std::process::Command::new(binaries_dir().unwrap().join("logpipeline-worker"))
        .args(["admin", "compact", "--older-than", "0s"])
        .env("REDIS_URL", stack.redis_url())
        .env("DATABASE_URL", stack.database_url())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until `condition` (SQL, one boolean) holds, then SIGKILLs `compactor`.
async fn kill_when(pool: &PgPool, mut compactor: std::process::Child, condition: &'static str) {
    eventually(condition, Duration::from_secs(300), || {
        let pool = pool.clone();
        async move {
            Ok(sqlx::query_scalar::<_, bool>(condition)
                .fetch_one(&pool)
                .await?)
        }
    })
    .await
    .unwrap();
    kill(Pid::from_raw(compactor.id() as i32), Signal::SIGKILL).unwrap();
    compactor.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compaction_killed_midway_leaves_every_log_stored_once() {
    // No worker: the test's own compactions are the only ones.
    let stack = Stack::builder().api().start().unwrap();
    let pool = stack.pool().await.unwrap();
    wait_for_schema(&pool).await.unwrap();
    let now = OffsetDateTime::now_utc();
    logpipeline_core::storage::ensure_partitions(
        &pool,
        &[now - time::Duration::DAY, now],
        logpipeline_core::storage::PartitionSettings::default(),
    )
    .await
    .unwrap();
    // 200,000 rows of 200 devices in yesterday's period, which has ended (it moves whole,
    // in one transaction), and 200,000 in today's before now (they move a unit at a time).
    sqlx::query(
        "insert into logs (id, message_id, device_id, log_level, message, log_data, created_at) \
         select g, null, 'device-' || (g % 200), 'INFO', 'reading ' || g, \
                jsonb_build_object('seq', g), \
                case when g <= 200000 \
                     then date_trunc('day', now()) - interval '1 day' + g * interval '100 ms' \
                     else date_trunc('day', now()) \
                          + (g - 200000) * ((now() - date_trunc('day', now())) / 200001) end \
         from generate_series(1, 400000) g",
    )
    .execute(&pool)
    .await
    .unwrap();
    // Killed while it moves yesterday's period whole, before anything is committed.
    kill_when(
        &pool,
        start_compaction(&stack),
        "select (select count(*) from log_chunks) = 0 and exists (select 1 from pg_stat_activity \
         where xact_start is not null and query like 'insert into log_chunks%')",
    )
    .await;
    let (logs, in_chunks) = every_log(&pool).await.unwrap();
    assert_eq!(
        (logs.len(), in_chunks),
        (400_000, 0),
        "every log, a row still"
    );
    assert_each_once(&logs);
    // Killed while it moves today's rows, with chunks of other transactions committed.
    kill_when(
        &pool,
        start_compaction(&stack),
        "select (select count(*) from log_chunks) > 0 and exists (select 1 from pg_stat_activity \
         where xact_start is not null and query like 'delete from logs_p%')",
    )
    .await;
    let (logs, in_chunks) = every_log(&pool).await.unwrap();
    assert_eq!(logs.len(), 400_000, "every log, after the kill");
    assert!(in_chunks > 0 && in_chunks < 400_000, "{in_chunks}");
    assert_each_once(&logs);
    // A compaction run again finishes the work.
    let (ok, printed) = stack
        .worker_admin(&["compact", "--older-than", "0s"])
        .unwrap();
    assert!(ok, "{printed}");
    let (logs, in_chunks) = every_log(&pool).await.unwrap();
    assert_eq!((logs.len(), in_chunks), (400_000, 400_000));
    assert_each_once(&logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_that_compact_while_logs_arrive_store_each_accepted_log_once() {
    let stack = Stack::builder()
        .api()
        .workers(2)
        .worker_env("LOGPIPELINE_HOT_WINDOW", "1s")
        .worker_env("LOGPIPELINE_COMPACT_EVERY_SECS", 2)
        .start()
        .unwrap();
    let pool = stack.pool().await.unwrap();
    wait_for_schema(&pool).await.unwrap();
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let base = stack.api_url().unwrap();
    let mut accepted: Vec<String> = Vec::new();
    // Batches until the workers have compacted some of them while more arrive.
    let mut round = 0;
    while round < 10
        || sqlx::query_scalar::<_, i64>("select count(*) from log_chunks")
            .fetch_one(&pool)
            .await
            .unwrap()
            == 0
    {
        let logs: Vec<Value> = (0..50)
            .map(|i| {
                json!({"device_id": format!("pump-{}", i % 7), "log_level": "INFO",
                       "message": format!("round {round} log {i}")})
            })
            .collect();
        let answer = client
            .post(format!("{base}/api/logs/batch"))
            .json(&json!({ "logs": logs }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        let body: Value = answer.json().await.unwrap();
        accepted.extend(
            body["message_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|id| id.as_str().unwrap().to_owned()),
        );
        round += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stack
        .wait_until_drained(Duration::from_secs(60))
        .await
        .unwrap();
    // Everything older than the hot window is compacted in time.
    eventually("every log is in a chunk", Duration::from_secs(120), || {
        let pool = pool.clone();
        async move {
            let rows: i64 = sqlx::query_scalar("select count(*) from logs")
                .fetch_one(&pool)
                .await?;
            Ok(rows == 0)
        }
    })
    .await
    .unwrap();
    let (logs, in_chunks) = every_log(&pool).await.unwrap();
    assert_eq!(in_chunks, accepted.len());
    assert_each_once(&logs);
    let mut stored: Vec<String> = logs.into_iter().filter_map(|log| log.message_id).collect();
    stored.sort();
    accepted.sort();
    assert_eq!(stored, accepted, "the logs stored are those accepted");
}

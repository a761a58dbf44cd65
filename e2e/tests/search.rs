//! Fleet-wide search (`GET /api/logs`) and its histogram on a real stack: every answer
//! is checked against the rows in PostgreSQL, read there by queries of their own; each
//! tenant sees only its own logs; hostile searches get a 4xx and leave the api healthy,
//! and one past its time budget is stopped in PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::collections::BTreeSet;
use std::time::Duration;

use logpipeline_e2e::stack::{Stack, eventually};
use logpipeline_local::auth::ApiKey;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

/// The logs acme's pumps send: messages, levels and `log_data` fields to search by.
fn acme_logs() -> Vec<Value> {
    let messages = [
        "pressure high on valve 3",
        "PRESSURE dropped, valve 7 closed",
        "valve 3 opened; pressure normal",
        "temperature 50% over limit",
        "temperature 500 readings buffered",
        "motor_stop requested",
        "motorXstop is not a word",
        "(a+)+$ is only text here",
    ];
    let levels = ["INFO", "ERROR", "WARNING", "CRITICAL"];
    (0..120)
        .map(|n| {
            let rpm = if n % 11 == 0 {
                json!("fast")
            } else {
                json!(800 + 10 * n)
            };
            let code = if n % 2 == 0 { json!(42) } else { json!("42") };
            json!({
                "device_id": format!("pump-{}", n % 10),
                "log_level": levels[n % levels.len()],
                "message": messages[n % messages.len()],
                "log_data": {
                    "n": n,
                    "firmware": if n % 3 == 0 { "2.4.1" } else { "2.5.0" },
                    "motor": {"rpm": rpm},
                    "code": if n % 5 == 0 { code } else { json!(7) },
                },
            })
        })
        .collect()
}

/// The `n` of acme's rows `condition` (SQL on `logs`, one of the test's own) selects,
/// read by PostgreSQL itself.
async fn expected(pool: &PgPool, condition: &'static str) -> BTreeSet<i64> {
    sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!(
        "select (log_data->>'n')::bigint from logs where tenant = 'acme' and ({condition})"
    )))
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

/// How many of acme's rows `condition` selects, per level, read by PostgreSQL itself.
async fn levels_of(
    pool: &PgPool,
    condition: &'static str,
) -> std::collections::BTreeMap<String, i64> {
    sqlx::query_as::<_, (String, i64)>(sqlx::AssertSqlSafe(format!(
        "select log_level::text, count(*) from logs where tenant = 'acme' and ({condition}) \
         group by 1"
    )))
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect()
}

struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    async fn get(&self, key: &ApiKey, path_and_query: &str) -> (StatusCode, Value) {
        let answer = self
            .client
            .get(format!("{}{path_and_query}", self.base))
            .header("x-api-key", &key.secret)
            .send()
            .await
            .unwrap();
        let status = answer.status();
        (status, answer.json().await.unwrap_or(Value::Null))
    }

    /// Every log a search finds, page after page of `limit`; their `n`, in the order
    /// the pages gave them.
    async fn all_pages(&self, key: &ApiKey, query: &str, limit: u32) -> Vec<i64> {
        let mut found = Vec::new();
        let mut cursor = String::new();
        loop {
            let (status, page) = self
                .get(key, &format!("/api/logs?{query}&limit={limit}{cursor}"))
                .await;
            assert_eq!(status, StatusCode::OK, "{query}: {page}");
            for log in page["data"].as_array().unwrap() {
                found.push(log["log_data"]["n"].as_i64().unwrap());
            }
            match page["next"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => return found,
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn searches_find_exactly_the_rows_postgresql_holds_for_the_tenant() {
    let acme = ApiKey::new("acme", "console", &["write", "read"]);
    let globex = ApiKey::new("globex", "console", &["write", "read"]);
    let stack = Stack::builder()
        .api()
        .workers(1)
        .api_keys(&[&acme, &globex])
        .start()
        .unwrap();
    let api = Api {
        client: logpipeline_e2e::http_client(|builder| builder).unwrap(),
        base: stack.api_url().unwrap(),
    };
    let logs = acme_logs();
    for batch in logs.chunks(40) {
        let answer = api
            .client
            .post(format!("{}/api/logs/batch", api.base))
            .header("x-api-key", &acme.secret)
            .json(&json!({ "logs": batch }))
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
    }
    // Globex's pumps have the same names and words: none of it may reach acme.
    let answer = api
        .client
        .post(format!("{}/api/logs/batch", api.base))
        .header("x-api-key", &globex.secret)
        .json(&json!({"logs": [
            {"device_id": "pump-1", "log_level": "ERROR", "message": "pressure high on valve 3",
             "log_data": {"n": 1000, "firmware": "2.4.1"}},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let pool = stack.pool().await.unwrap();
    let pool = &pool;
    eventually(
        "every log is stored",
        Duration::from_secs(60),
        || async move {
            let count: i64 = sqlx::query_scalar("select count(*) from logs")
                .fetch_one(pool)
                .await?;
            Ok(count == 121)
        },
    )
    .await
    .unwrap();

    let cases = [
        ("q=pressure", "message ilike '%pressure%'"),
        ("q=%22valve%203%22", "position('valve 3' in message) > 0"),
        (
            "q=valve%203",
            "message ilike '%valve%' and message like '%3%'",
        ),
        ("q=50%25", "position('50%' in message) > 0"),
        ("q=motor_stop", "position('motor_stop' in message) > 0"),
        ("q=(a%2B)%2B%24", "position('(a+)+$' in message) > 0"),
        ("data.firmware=2.4.1", "log_data->>'firmware' = '2.4.1'"),
        (
            "data.code=42",
            "log_data->'code' in ('42'::jsonb, '\"42\"'::jsonb)",
        ),
        (
            "data.motor.rpm=%3E%3D1200",
            "jsonb_typeof(log_data->'motor'->'rpm') = 'number' \
             and (log_data->'motor'->>'rpm')::numeric >= 1200",
        ),
        (
            "data.motor.rpm=%3C900&level=ERROR,CRITICAL",
            "jsonb_typeof(log_data->'motor'->'rpm') = 'number' \
             and (log_data->'motor'->>'rpm')::numeric < 900 \
             and log_level in ('ERROR', 'CRITICAL')",
        ),
        (
            "q=pressure&level=ERROR&device_id=pump-1",
            "message ilike '%pressure%' and log_level = 'ERROR' and device_id = 'pump-1'",
        ),
        ("data.firmware=9.9.9", "false"),
    ];
    for (query, condition) in cases {
        let want = expected(pool, condition).await;
        for order in ["newest", "oldest"] {
            let found = api
                .all_pages(&acme, &format!("{query}&order={order}"), 7)
                .await;
            let distinct: BTreeSet<i64> = found.iter().copied().collect();
            assert_eq!(
                distinct.len(),
                found.len(),
                "{query}: a log twice: {found:?}"
            );
            assert_eq!(distinct, want, "{query} ({order})");
            // Within one batch the logs share a received time and go by id: `n` rises
            // with both.
            let mut sorted = found.clone();
            sorted.sort_unstable();
            if order == "newest" {
                sorted.reverse();
            }
            assert_eq!(found, sorted, "{query} ({order}) is in order");
        }
        let (status, histogram) = api
            .get(&acme, &format!("/api/logs/histogram?{query}&interval=1m"))
            .await;
        assert_eq!(status, StatusCode::OK, "{histogram}");
        assert_eq!(histogram["total"], want.len(), "{query}: {histogram}");
        let counted: i64 = histogram["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|bucket| bucket["count"].as_i64().unwrap())
            .sum();
        assert_eq!(counted, want.len() as i64, "{query}: {histogram}");
        // Per level, as PostgreSQL counts the same rows.
        let mut by_level: std::collections::BTreeMap<String, i64> = Default::default();
        for bucket in histogram["buckets"].as_array().unwrap() {
            let levels = bucket["levels"].as_object().unwrap();
            assert_eq!(
                levels.values().map(|n| n.as_i64().unwrap()).sum::<i64>(),
                bucket["count"].as_i64().unwrap(),
                "{bucket}"
            );
            for (level, count) in levels {
                *by_level.entry(level.clone()).or_default() += count.as_i64().unwrap();
            }
        }
        assert_eq!(by_level, levels_of(pool, condition).await, "{query}");
        println!("{query}: {} logs", want.len());
    }

    // Globex sees its one log, never acme's.
    let (_, page) = api.get(&globex, "/api/logs?q=pressure").await;
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["data"][0]["log_data"]["n"], 1000);
    let (_, histogram) = api.get(&globex, "/api/logs/histogram").await;
    assert_eq!(histogram["total"], 1, "{histogram}");

    // Hostile searches are refused with a 4xx that says why; the api stays healthy.
    for (query, code, detail) in [
        (
            "/api/logs?limit=1000000000",
            "invalid_query",
            "limit must be",
        ),
        (
            "/api/logs?q=x&since=2016-01-01T00:00:00Z&until=2026-01-01T00:00:00Z",
            "invalid_query",
            "spans at most 31 days",
        ),
        (
            "/api/logs?data.motor.rpm=%3Efast",
            "invalid_query",
            "compares with a number",
        ),
        (
            "/api/logs?regex=(a%2B)%2B%24",
            "invalid_query",
            "unknown parameter",
        ),
        (
            "/api/logs/histogram?interval=1m&since=2026-01-01T00:00:00Z&until=2026-01-30T00:00:00Z",
            "invalid_query",
            "more than 2000",
        ),
    ] {
        let (status, body) = api.get(&acme, query).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert_eq!(body["error"], code, "{query}: {body}");
        assert!(
            body["detail"].as_str().unwrap().contains(detail),
            "{query}: {body}"
        );
    }
    let (status, _) = api.get(&acme, "/api/stats").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_search_past_its_time_budget_is_stopped_in_postgresql_and_answered_422() {
    let stack = Stack::builder()
        .api()
        .workers(1)
        .api_env("LOGPIPELINE_SEARCH_TIMEOUT_MS", 1)
        .start()
        .unwrap();
    let client = logpipeline_e2e::http_client(|builder| builder).unwrap();
    let base = stack.api_url().unwrap();
    let pool = stack.pool().await.unwrap();
    // One log through the pipeline, so that the worker has made today's partition.
    let answer = client
        .post(format!("{base}/api/log"))
        .json(&json!({"device_id": "pump-1", "log_level": "INFO", "message": "first"}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    logpipeline_e2e::stack::wait_for_count(
        &pool,
        "select count(*) from logs",
        1,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    // 300,000 rows of this moment to read: no search of them ends within a millisecond.
    sqlx::query(
        "insert into logs (id, device_id, log_level, message, log_data, created_at, tenant) \
         select -n, 'pump-' || (n % 100), 'INFO', 'reading ' || n, jsonb_build_object('n', n), \
                now(), 'default' \
         from generate_series(1, 300000) n",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("analyze logs").execute(&pool).await.unwrap();
    let answer = client
        .get(format!("{base}/api/logs?q=nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["error"], "search_too_broad", "{body}");
    // The api is healthy, and its connections are too: a device's page still answers.
    let answer = client
        .get(format!("{base}/api/logs/pump-1?limit=1"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
}

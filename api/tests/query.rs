//! The read path against real Redis and PostgreSQL: filters, pagination, the cache and
//! health.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::{Options, TestApi};
use http_body_util::BodyExt;
use logpipeline_core::codec;
use logpipeline_core::stream::Shards;
use logpipeline_core::tenant::Tenant;
use logpipeline_e2e::rows::{self, Row};
use logpipeline_e2e::stack::eventually;
use redis::AsyncCommands;
use serde_json::{Value, json};
use sqlx::PgPool;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tower::ServiceExt;

const LEVELS: [&str; 5] = ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"];

/// Stores log `seq` of `device` as the worker would, received at `base + seq` seconds
/// (several logs share a second when `per_second` > 1).
async fn store(db: &PgPool, device: &str, seq: i64, per_second: i64) -> OffsetDateTime {
    let at = OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1_795_000_000 + seq / per_second);
    rows::insert(
        db,
        Row {
            tenant: "default",
            message_id: format!("{device}-{seq}"),
            device_id: device,
            log_level: LEVELS[seq as usize % LEVELS.len()],
            message: format!("log {seq}"),
            log_data: Some(format!("{{\"seq\": {seq}}}")),
            created_at: at,
        },
    )
    .await
    .unwrap();
    at
}

fn seqs(page: &Value) -> Vec<i64> {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|log| log["log_data"]["seq"].as_i64().unwrap())
        .collect()
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap()
}

#[tokio::test]
async fn logs_come_newest_first_in_the_seed_shape() {
    let api = TestApi::start().await;
    for seq in 0..5 {
        store(&api.db, "pump-7", seq, 1).await;
    }
    store(&api.db, "other", 0, 1).await;
    let page = api.get("/api/logs/pump-7?limit=3").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert_eq!(page.body["total"], 3);
    assert_eq!(page.body["source"], "database");
    assert_eq!(seqs(&page.body), [4, 3, 2]);
    let log = &page.body["data"][0];
    for field in [
        "id",
        "message_id",
        "device_id",
        "log_level",
        "message",
        "log_data",
        "created_at",
    ] {
        assert!(!log[field].is_null(), "{field} missing in {log}");
    }
    assert_eq!(log["device_id"], "pump-7");
    assert_eq!(log["message_id"], "pump-7-4");
    assert_eq!(log["log_level"], "CRITICAL");
    let all = api.get("/api/logs/pump-7").await;
    assert_eq!(all.body["total"], 5, "the default limit is 100");
    assert!(all.body["next"].is_null());
    let none = api.get("/api/logs/nobody").await;
    assert_eq!(
        (none.status, none.body["total"].as_i64()),
        (StatusCode::OK, Some(0))
    );
}

/// `/api/logs/batch` is also the batch ingest's path: a GET there reads the device
/// named `batch`, with the same parameters as any other device.
#[tokio::test]
async fn a_device_named_batch_is_read_like_any_other() {
    let api = TestApi::start().await;
    for seq in 0..3 {
        store(&api.db, "batch", seq, 1).await;
    }
    store(&api.db, "pump-7", 0, 1).await;
    let page = api.get("/api/logs/batch?limit=2").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert_eq!(seqs(&page.body), [2, 1]);
    assert_eq!(page.body["data"][0]["device_id"], "batch");
    let errors = api.get("/api/logs/batch?level=LOUD").await;
    assert_eq!(
        errors.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        errors.text
    );
}

#[tokio::test]
async fn levels_and_a_time_range_filter() {
    let api = TestApi::start().await;
    let mut times = Vec::new();
    for seq in 0..20 {
        times.push(store(&api.db, "pump-7", seq, 1).await);
    }
    let errors = api.get("/api/logs/pump-7?level=ERROR&level=CRITICAL").await;
    assert_eq!(seqs(&errors.body), [19, 18, 14, 13, 9, 8, 4, 3]);
    let commas = api.get("/api/logs/pump-7?level=CRITICAL,ERROR").await;
    assert_eq!(seqs(&commas.body), seqs(&errors.body));
    let window = format!(
        "/api/logs/pump-7?since={}&until={}",
        rfc3339(times[5]).replace('+', "%2B"),
        rfc3339(times[9])
    );
    let ranged = api.get(&window).await;
    assert_eq!(
        seqs(&ranged.body),
        [8, 7, 6, 5],
        "since is inclusive, until exclusive"
    );
    let both = api.get(&format!("{window}&level=WARNING")).await;
    assert_eq!(seqs(&both.body), [7]);
}

#[tokio::test]
async fn the_cursor_walks_back_through_history_without_gaps_or_repeats() {
    let api = TestApi::start().await;
    // Three logs per second: pages must break ties by id.
    for seq in 0..250 {
        store(&api.db, "pump-7", seq, 3).await;
    }
    let mut seen = Vec::new();
    let mut uri = "/api/logs/pump-7?limit=100&level=DEBUG,INFO,WARNING,ERROR,CRITICAL".to_owned();
    let mut pages = 0;
    loop {
        let page = api.get(&uri).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text);
        seen.extend(seqs(&page.body));
        pages += 1;
        match page.body["next"].as_str() {
            Some(next) => {
                uri = format!(
                    "/api/logs/pump-7?limit=100&level=DEBUG,INFO,WARNING,ERROR,CRITICAL&cursor={next}"
                )
            }
            None => break,
        }
    }
    assert_eq!(pages, 3);
    let expected: Vec<i64> = (0..250).rev().collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn repeated_queries_are_served_from_the_cache_until_a_commit_retires_them() {
    let api = TestApi::start().await;
    for seq in 0..3 {
        store(&api.db, "pump-7", seq, 1).await;
    }
    let first = api.get("/api/logs/pump-7").await;
    let second = api.get("/api/logs/pump-7").await;
    assert_eq!(first.body["source"], "database");
    assert_eq!(second.body["source"], "cache");
    assert_eq!(first.body["data"], second.body["data"]);
    assert_eq!(
        api.get("/api/logs/pump-7?limit=2").await.body["source"],
        "database",
        "another query, another entry"
    );

    // A log stored without the worker's generation bump stays invisible to the cache,
    // which is why the worker bumps before acknowledging…
    store(&api.db, "pump-7", 3, 1).await;
    assert_eq!(seqs(&api.get("/api/logs/pump-7").await.body), [2, 1, 0]);
    // …and once it has, the next query goes to PostgreSQL and sees the new log.
    let mut redis = api.con.clone();
    let _: i64 = redis
        .hincr("cache:generations", "default/pump-7", 1)
        .await
        .unwrap();
    let fresh = api.get("/api/logs/pump-7").await;
    assert_eq!(fresh.body["source"], "database");
    assert_eq!(seqs(&fresh.body), [3, 2, 1, 0]);
    assert_eq!(api.get("/api/logs/pump-7").await.body["source"], "cache");

    let metrics = api.get("/metrics").await.text;
    assert!(
        metrics.contains("logpipeline_api_cache_lookups_total{result=\"hit\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("logpipeline_api_cache_lookups_total{result=\"miss\"} 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn queries_work_without_the_cache() {
    let mut api = TestApi::start().await;
    store(&api.db, "pump-7", 0, 1).await;
    api.redis.stop().unwrap();
    let page = api.get("/api/logs/pump-7").await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert_eq!(
        (page.body["source"].as_str(), seqs(&page.body)),
        (Some("database"), vec![0])
    );
}

#[tokio::test]
async fn invalid_parameters_answer_422_naming_them() {
    let api = TestApi::start().await;
    for (uri, detail) in [
        ("/api/logs/pump-7?limit=0", "limit must be"),
        ("/api/logs/pump-7?limit=1001", "limit must be"),
        ("/api/logs/pump-7?level=LOUD", "unknown log level `LOUD`"),
        (
            "/api/logs/pump-7?since=yesterday",
            "since must be an RFC 3339 time",
        ),
        ("/api/logs/pump-7?cursor=abc", "cursor"),
        // PostgreSQL refuses a NUL in a pattern: it is the client's error, not an outage.
        ("/api/logs?q=valve%00", "q must not contain NUL"),
        ("/api/logs/histogram?q=%00", "q must not contain NUL"),
        ("/api/logs/tail?q=%22a%00b%22", "q must not contain NUL"),
    ] {
        let answer = api.get(uri).await;
        assert_eq!(answer.status, StatusCode::UNPROCESSABLE_ENTITY, "{uri}");
        assert_eq!(answer.body["error"], "invalid_query", "{uri}");
        assert!(
            answer.body["detail"].as_str().unwrap().contains(detail),
            "{uri}: {}",
            answer.body
        );
    }
    let long = api.get(&format!("/api/logs/{}", "d".repeat(51))).await;
    assert_eq!(long.status, StatusCode::UNPROCESSABLE_ENTITY);
}

/// A query string that does not percent-decode to UTF-8 is refused 400, as such a path
/// is, on every read: the parameters' parser would otherwise replace the bytes and
/// answer 200 for a search nobody sent.
#[tokio::test]
async fn a_query_string_that_is_not_utf8_answers_400() {
    let api = TestApi::start().await;
    for uri in [
        "/api/logs?q=valve%FF",
        "/api/logs?q=%C3",
        "/api/logs/histogram?q=ok&device_id=%C3%28",
        "/api/logs/tail?q=%FE",
        "/api/logs/pump-7?level=ERROR&%80=1",
        "/api/stats?x=%ED%A0%80",
    ] {
        let answer = api.get(uri).await;
        assert_eq!(
            answer.status,
            StatusCode::BAD_REQUEST,
            "{uri}: {}",
            answer.text
        );
        assert_eq!(answer.body["error"], "malformed_query", "{uri}");
    }
    // UTF-8, whole or percent-encoded, is searched as sent.
    for uri in ["/api/logs?q=caf%C3%A9", "/api/logs?q=%E2%9C%93+ok"] {
        let answer = api.get(uri).await;
        assert_eq!(answer.status, StatusCode::OK, "{uri}: {}", answer.text);
    }
}

#[tokio::test]
async fn health_reports_each_dependency_and_probes_tell_liveness_from_readiness() {
    let mut api = TestApi::start_with(Options {
        own_postgres: true,
        ..Options::default()
    })
    .await;
    let healthy = api.get("/health").await;
    assert_eq!(healthy.status, StatusCode::OK, "{}", healthy.text);
    assert_eq!(healthy.body["status"], "healthy");
    assert_eq!(
        (
            healthy.body["redis"].as_str(),
            healthy.body["postgres"].as_str()
        ),
        (Some("healthy"), Some("healthy"))
    );

    api.redis.stop().unwrap();
    let answer = api.get("/health").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        (
            answer.body["redis"].as_str(),
            answer.body["postgres"].as_str()
        ),
        (Some("unhealthy"), Some("healthy"))
    );
    assert_eq!(api.get("/livez").await.status, StatusCode::OK);
    assert_eq!(
        api.get("/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "no Redis, no ingest"
    );
    api.redis.start_again().unwrap();

    api.postgres.as_mut().unwrap().stop().unwrap();
    let answer = api.get("/health").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.body["status"], "unhealthy");
    assert_eq!(answer.body["postgres"], "unhealthy");
    assert_eq!(api.get("/livez").await.status, StatusCode::OK);
    let fixture = &api;
    eventually(
        "ready while PostgreSQL is down: it does not stop ingest",
        Duration::from_secs(10),
        || async move { Ok(fixture.get("/readyz").await.status == StatusCode::OK) },
    )
    .await
    .unwrap();
    let query = api.get("/api/logs/pump-7").await;
    assert_eq!(query.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(query.body["error"], "database_unavailable");
    let stats = api.get("/api/stats").await;
    assert_eq!(stats.body["error"], "database_unavailable");
}

/// With PostgreSQL down, reads fail at once, from the api's own check of it, rather
/// than after the pool has waited out its acquire timeout for a connection that cannot
/// be opened.
#[tokio::test]
async fn reads_fail_at_once_while_postgresql_does_not_answer() {
    let mut api = TestApi::start_with(Options {
        own_postgres: true,
        ..Options::default()
    })
    .await;
    let ok = api.get("/api/logs?q=valve").await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    api.postgres.as_mut().unwrap().stop().unwrap();
    let fixture = &api;
    eventually(
        "searches and pages are refused as the check says, not as the pool times out",
        Duration::from_secs(30),
        || async move {
            let mut refused_at_once = true;
            for uri in [
                "/api/logs?q=valve",
                "/api/logs/pump-7",
                "/api/logs/histogram",
            ] {
                let answer = fixture.get(uri).await;
                assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
                assert_eq!(answer.body["error"], "database_unavailable", "{uri}");
                refused_at_once &=
                    answer.body["detail"] == "the log database does not answer; retry later";
            }
            Ok(refused_at_once)
        },
    )
    .await
    .unwrap();
    api.postgres.as_mut().unwrap().start_again().unwrap();
    let fixture = &api;
    eventually(
        "reads answer again",
        Duration::from_secs(30),
        || async move { Ok(fixture.get("/api/logs?q=valve").await.status == StatusCode::OK) },
    )
    .await
    .unwrap();
}

/// A read that finds every connection of its pool in use is told the database is busy,
/// not unavailable: PostgreSQL answers all along.
#[tokio::test]
async fn a_pool_with_no_connection_free_is_busy_not_unavailable() {
    let api = TestApi::start().await;
    let mut held = Vec::new();
    while let Ok(Ok(connection)) =
        tokio::time::timeout(Duration::from_millis(500), api.db.acquire()).await
    {
        held.push(connection);
    }
    let page = api.get("/api/logs/pump-7").await;
    assert_eq!(
        page.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        page.text
    );
    assert_eq!(page.body["error"], "database_busy", "{}", page.text);
    assert!(page.headers.contains_key(axum::http::header::RETRY_AFTER));
    // Searches have connections of their own, which the device pages' pool cannot take.
    let search = api.get("/api/logs?q=valve").await;
    assert_eq!(search.status, StatusCode::OK, "{}", search.text);
    drop(held);
    assert_eq!(api.get("/api/logs/pump-7").await.status, StatusCode::OK);
}

/// A search held in PostgreSQL past its budget is stopped at the budget, while still
/// held, and the answer names the budget (not the longer backstop of each statement).
#[tokio::test]
async fn a_search_is_stopped_at_its_budget() {
    let api = TestApi::start_with(Options {
        search_timeout: Duration::from_secs(1),
        ..Options::default()
    })
    .await;
    let mut lock = api.db.begin().await.unwrap();
    sqlx::query("lock table logs in access exclusive mode")
        .execute(&mut *lock)
        .await
        .unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(60), api.get("/api/logs?q=valve"))
        .await
        .expect("the search was not stopped while the lock was held");
    lock.rollback().await.unwrap();
    assert_eq!(
        answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        answer.text
    );
    assert_eq!(answer.body["error"], "search_too_broad");
    assert!(
        answer.body["detail"]
            .as_str()
            .unwrap()
            .contains("within 1s"),
        "{}",
        answer.text
    );
}

#[tokio::test]
async fn stats_sum_the_counters_and_are_cached() {
    let api = TestApi::start().await;
    let counts = [
        ("a", "INFO", 0, 5),
        ("a", "INFO", 3, 2),
        ("a", "ERROR", 1, 1),
        ("b", "INFO", 0, 9),
        ("c", "DEBUG", 0, 1),
    ];
    for (device, level, stripe, count) in counts {
        sqlx::query("insert into log_counts (device_id, log_level, stripe, count, last_at) values ($1, $2, $3, $4, now())")
            .bind(device)
            .bind(level)
            .bind(stripe as i16)
            .bind(count as i64)
            .execute(&api.db)
            .await
            .unwrap();
    }
    let stats = api.get("/api/stats").await;
    assert_eq!(stats.status, StatusCode::OK, "{}", stats.text);
    assert_eq!(stats.body["total_logs"], 18);
    assert_eq!(
        stats.body["logs_by_level"],
        json!({"DEBUG": 1, "ERROR": 1, "INFO": 16})
    );
    assert_eq!(stats.body["recent_devices"], json!(["b", "a", "c"]));
    assert_eq!(stats.body["most_active_devices"][1]["count"], 8);
    sqlx::query("update log_counts set count = count + 100")
        .execute(&api.db)
        .await
        .unwrap();
    let cached = api.get("/api/stats").await;
    assert_eq!(cached.body["total_logs"], 18, "served from the cache");
    let ids: HashSet<&str> = ["a", "b", "c"].into();
    assert_eq!(
        ids.len(),
        cached.body["recent_devices"].as_array().unwrap().len()
    );
}

/// Reads the `log` events of a tail's body until it has `count` of them, for at most
/// 30 s; their ids.
async fn tail_ids(body: &mut Body, count: usize) -> Vec<String> {
    let mut text = String::new();
    let mut ids = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        while ids.len() < count {
            let frame = body.frame().await.expect("the tail ended").unwrap();
            let Ok(data) = frame.into_data() else {
                continue;
            };
            text.push_str(std::str::from_utf8(&data).unwrap());
            while let Some(end) = text.find("\n\n") {
                let event: String = text.drain(..end + 2).collect();
                if event.lines().any(|line| line == "event: log") {
                    let data = event
                        .lines()
                        .find_map(|line| line.strip_prefix("data: "))
                        .unwrap();
                    let log: Value = serde_json::from_str(data).unwrap();
                    ids.push(log["message_id"].as_str().unwrap().to_owned());
                }
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the tail delivered {} of {count} logs in 30 s: {ids:?}",
        ids.len()
    );
    ids
}

#[tokio::test]
async fn a_tail_delivers_every_log_accepted_once_its_answer_began() {
    // Three shards, each with a reader that is idle until someone subscribes.
    let api = TestApi::start_with(Options {
        shards: 3,
        ..Options::default()
    })
    .await;
    // Another api process's writes, made with a blocking connection: nothing else on this
    // test's runtime (the readers among it) runs between the answer and the entries.
    let mut writer = redis::Client::open(api.redis.url())
        .unwrap()
        .get_connection()
        .unwrap();
    let response = api
        .app
        .clone()
        .oneshot(Request::get("/api/logs/tail").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let tenant = Tenant::default();
    let mut sent = Vec::new();
    for key in Shards::new(common::STREAM, 3).keys() {
        let logs = serde_json::to_vec(&[json!({
            "device_id": "pump-7",
            "log_level": "INFO",
            "message": "right after the subscription",
        })])
        .unwrap();
        let fields: Vec<(&str, Vec<u8>)> = codec::encode(OffsetDateTime::now_utc(), &tenant, &logs)
            .iter()
            .map(|(name, value)| (*name, value.as_bytes().to_vec()))
            .collect();
        let entry: String = redis::Commands::xadd(&mut writer, key, "*", &fields).unwrap();
        sent.extend(codec::log_ids(&entry, 1));
    }
    // A reader that began at the stream's end (`$`) only once it got round to reading
    // would have missed them.
    let mut delivered = tail_ids(&mut response.into_body(), sent.len()).await;
    delivered.sort();
    sent.sort();
    assert_eq!(delivered, sent);
}

#[tokio::test]
async fn a_tail_begun_while_redis_is_away_answers_and_delivers_once_it_is_back() {
    let mut api = TestApi::start().await;
    api.redis.stop().unwrap();
    let subscribe = api
        .app
        .clone()
        .oneshot(Request::get("/api/logs/tail").body(Body::empty()).unwrap());
    let response = tokio::time::timeout(Duration::from_secs(60), subscribe)
        .await
        .expect("the subscription waited for Redis without end")
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // Redis comes back: the reader connects again on its own, and a device that goes on
    // sending is heard.
    api.redis.start_again().unwrap();
    let app = api.app.clone();
    let device = tokio::spawn(async move {
        loop {
            let log = json!({"device_id": "pump-7", "log_level": "INFO", "message": "back"});
            let request = Request::post("/api/log")
                .header("content-type", "application/json")
                .body(Body::from(log.to_string()))
                .unwrap();
            app.clone().oneshot(request).await.unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let delivered = tail_ids(&mut response.into_body(), 1).await;
    device.abort();
    assert_eq!(delivered.len(), 1);
}

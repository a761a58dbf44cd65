//! API keys, tenants, rate limits and hostile input, in-process on a real Redis and
//! PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

mod common;

use std::io::Write;
use std::num::NonZeroU32;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use common::{Answer, Options, TestApi};
use logpipeline_api::{Auth, Keys, RateLimit, RateLimits};
use logpipeline_e2e::rows::{self, Row};
use logpipeline_e2e::stack::eventually;
use logpipeline_local::auth::{ApiKey, keys_file};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use sqlx::PgPool;

fn a_log(device: &str) -> Value {
    json!({"device_id": device, "log_level": "INFO", "message": "m"})
}

struct Tenants {
    acme_writer: ApiKey,
    acme_reader: ApiKey,
    globex: ApiKey,
}

impl Tenants {
    fn new() -> Self {
        Self {
            acme_writer: ApiKey::new("acme", "writer", &["write"]),
            acme_reader: ApiKey::new("acme", "reader", &["read"]),
            globex: ApiKey::new("globex", "both", &["write", "read"]),
        }
    }

    /// An api that knows these tenants' keys.
    async fn api(&self) -> TestApi {
        TestApi::start_with(Options {
            auth: self.auth(),
            ..Options::default()
        })
        .await
    }

    fn auth(&self) -> Auth {
        let file = keys_file(&[&self.acme_writer, &self.acme_reader, &self.globex]);
        Auth::with_keys(Keys::parse(&file).unwrap())
    }
}

impl TestApi {
    async fn with_key(
        &self,
        method: Method,
        uri: &str,
        key: Option<&ApiKey>,
        body: Option<&Value>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(key) = key {
            request = request.header(header::AUTHORIZATION, key.bearer());
        }
        let body = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        self.send(request.body(body).unwrap()).await
    }

    async fn stream_tenants(&self) -> Vec<String> {
        self.entries()
            .await
            .into_iter()
            .map(|(_, entry)| entry.tenant.to_string())
            .collect()
    }
}

async fn store(db: &PgPool, tenant: &str, device: &str, message: &str) {
    rows::insert(
        db,
        Row {
            tenant,
            message_id: format!("{tenant}-{device}-{message}"),
            device_id: device,
            log_level: "INFO",
            message: message.to_owned(),
            log_data: None,
            created_at: time::OffsetDateTime::now_utc(),
        },
    )
    .await
    .unwrap();
    sqlx::query(
        "insert into log_counts (tenant, device_id, log_level, stripe, count, last_at) \
         values ($1, $2, 'INFO', 0, 1, now()) on conflict (tenant, device_id, log_level, period, stripe) \
         do update set count = log_counts.count + 1",
    )
    .bind(tenant)
    .bind(device)
    .execute(db)
    .await
    .unwrap();
}

#[tokio::test]
async fn ingest_and_queries_need_a_key_with_the_scope() {
    let tenants = Tenants::new();
    let api = tenants.api().await;
    let log = a_log("pump-1");
    let missing = api
        .with_key(Method::POST, "/api/log", None, Some(&log))
        .await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED, "{}", missing.text);
    assert_eq!(missing.body["error"], "unauthorized");
    assert_eq!(
        missing.headers[header::WWW_AUTHENTICATE],
        "Bearer realm=\"logpipeline\""
    );
    let stranger = ApiKey::new("acme", "writer", &["write"]);
    for (method, uri, body) in [
        (Method::POST, "/api/log", Some(&log)),
        (
            Method::POST,
            "/api/logs/batch",
            Some(&json!({"logs": [log]})),
        ),
        (Method::GET, "/api/logs/pump-1", None),
        (Method::GET, "/api/stats", None),
    ] {
        let answer = api
            .with_key(method.clone(), uri, Some(&stranger), body)
            .await;
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "{method} {uri}: {}",
            answer.text
        );
    }
    for (method, uri, key, body) in [
        (Method::GET, "/api/logs/pump-1", &tenants.acme_writer, None),
        (Method::POST, "/api/log", &tenants.acme_reader, Some(&log)),
    ] {
        let forbidden = api.with_key(method, uri, Some(key), body).await;
        assert_eq!(
            forbidden.status,
            StatusCode::FORBIDDEN,
            "{uri}: {}",
            forbidden.text
        );
        assert_eq!(forbidden.body["error"], "forbidden");
    }
    assert!(
        api.stream_tenants().await.is_empty(),
        "nothing refused reached the stream"
    );

    let written = api
        .with_key(
            Method::POST,
            "/api/log",
            Some(&tenants.acme_writer),
            Some(&log),
        )
        .await;
    assert_eq!(written.status, StatusCode::OK, "{}", written.text);
    let request = Request::post("/api/log")
        .header("x-api-key", &tenants.globex.secret)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(log.to_string()))
        .unwrap();
    assert_eq!(api.send(request).await.status, StatusCode::OK);
    assert_eq!(api.stream_tenants().await, ["acme", "globex"]);

    for open in ["/livez", "/readyz", "/metrics", "/openapi.json"] {
        let answer = api.get(open).await;
        assert_ne!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "{open} needs no key"
        );
    }
}

#[tokio::test]
async fn a_tenant_reads_only_its_own_logs_and_statistics() {
    let tenants = Tenants::new();
    let api = tenants.api().await;
    store(&api.db, "acme", "pump-1", "acme's").await;
    store(&api.db, "acme", "pump-2", "acme's other").await;
    store(&api.db, "globex", "pump-1", "globex's").await;
    store(&api.db, "default", "pump-9", "from before tenants").await;
    // Twice each: the second answer comes from the cache, which must not mix them either.
    for _ in 0..2 {
        let acme = api
            .with_key(
                Method::GET,
                "/api/logs/pump-1",
                Some(&tenants.acme_reader),
                None,
            )
            .await;
        assert_eq!(acme.status, StatusCode::OK, "{}", acme.text);
        assert_eq!(acme.body["data"][0]["message"], "acme's");
        assert_eq!(acme.body["total"], 1);
        let globex = api
            .with_key(Method::GET, "/api/logs/pump-1", Some(&tenants.globex), None)
            .await;
        assert_eq!(globex.body["data"][0]["message"], "globex's");
        assert_eq!(globex.body["total"], 1);
        let other = api
            .with_key(Method::GET, "/api/logs/pump-2", Some(&tenants.globex), None)
            .await;
        assert_eq!(other.body["total"], 0, "globex cannot see acme's device");

        let stats = api
            .with_key(Method::GET, "/api/stats", Some(&tenants.acme_reader), None)
            .await;
        assert_eq!(stats.body["total_logs"], 2, "{}", stats.text);
        assert_eq!(stats.body["recent_devices"], json!(["pump-1", "pump-2"]));
        let stats = api
            .with_key(Method::GET, "/api/stats", Some(&tenants.globex), None)
            .await;
        assert_eq!(stats.body["total_logs"], 1, "{}", stats.text);
        assert_eq!(stats.body["recent_devices"], json!(["pump-1"]));
    }
}

#[tokio::test]
async fn a_key_over_its_rate_gets_429_with_retry_after_and_adds_nothing() {
    let tenants = Tenants::new();
    let limit = RateLimit {
        per_second: NonZeroU32::new(1).unwrap(),
        burst: NonZeroU32::new(3).unwrap(),
    };
    let api = TestApi::start_with(Options {
        auth: tenants.auth(),
        rate_limits: RateLimits::new(Some(limit), None, vec![]),
        ..Options::default()
    })
    .await;
    let log = a_log("pump-1");
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let answer = api
            .with_key(
                Method::POST,
                "/api/log",
                Some(&tenants.acme_writer),
                Some(&log),
            )
            .await;
        if answer.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(answer.body["error"], "rate_limited");
            let retry_after: u64 = answer.headers[header::RETRY_AFTER]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=2).contains(&retry_after), "{retry_after}");
        }
        statuses.push(answer.status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429]);
    assert_eq!(
        api.stream_tenants().await.len(),
        3,
        "only the accepted logs are on the stream"
    );
    let other = api
        .with_key(Method::POST, "/api/log", Some(&tenants.globex), Some(&log))
        .await;
    assert_eq!(other.status, StatusCode::OK, "each key has its own bucket");
    // The bucket refills at one a second: a later try gets through.
    eventually("the bucket refills", Duration::from_secs(10), || async {
        let again = api
            .with_key(
                Method::POST,
                "/api/log",
                Some(&tenants.acme_writer),
                Some(&log),
            )
            .await;
        Ok(again.status == StatusCode::OK)
    })
    .await
    .unwrap();
}

/// Searches run at most so many at once in the process and of one tenant: one more is
/// refused at once with 429 `search_busy` and `Retry-After`, naming the bound, and the
/// places come back as searches end.
#[tokio::test]
async fn searches_past_their_limits_are_refused_at_once() {
    let acme = ApiKey::new("acme", "reader", &["read"]);
    let globex = ApiKey::new("globex", "reader", &["read"]);
    let initech = ApiKey::new("initech", "reader", &["read"]);
    let file = keys_file(&[&acme, &globex, &initech]);
    let api = TestApi::start_with(Options {
        auth: Auth::with_keys(Keys::parse(&file).unwrap()),
        search_concurrency: 2,
        search_concurrency_per_tenant: 1,
        search_timeout: Duration::from_secs(600),
        ..Options::default()
    })
    .await;
    // Every search waits behind a lock on `logs` for as long as the test holds it.
    let mut lock = api.db.begin().await.unwrap();
    sqlx::query("lock table logs in access exclusive mode")
        .execute(&mut *lock)
        .await
        .unwrap();
    let search = |key| api.with_key(Method::GET, "/api/logs?q=valve", Some(key), None);
    let histogram = api.with_key(
        Method::GET,
        "/api/logs/histogram?q=valve",
        Some(&globex),
        None,
    );
    let checks = async {
        let waiting = || async {
            let count: i64 = sqlx::query_scalar(
                "select count(*) from pg_stat_activity \
                 where wait_event_type = 'Lock' and datname = current_database()",
            )
            .fetch_one(&api.db)
            .await?;
            Ok(count == 2)
        };
        eventually(
            "two searches wait on the lock",
            Duration::from_secs(60),
            waiting,
        )
        .await
        .unwrap();
        // Refused at once: without a bound they would wait on the lock with the others.
        let refused = |key| async move {
            tokio::time::timeout(Duration::from_secs(60), search(key))
                .await
                .expect("a search past the limits was not refused at once")
        };
        let of_tenant = refused(&acme).await;
        let of_process = refused(&initech).await;
        lock.rollback().await.unwrap();
        (of_tenant, of_process)
    };
    let (held, held_histogram, (of_tenant, of_process)) =
        tokio::join!(search(&acme), histogram, checks);
    for (refused, bound) in [(&of_tenant, "tenant"), (&of_process, "api process")] {
        assert_eq!(
            refused.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{}",
            refused.text
        );
        assert_eq!(refused.body["error"], "search_busy");
        assert!(
            refused.body["detail"]
                .as_str()
                .unwrap()
                .contains(&format!("for this {bound}")),
            "{}",
            refused.text
        );
        assert_eq!(refused.headers[header::RETRY_AFTER], "1");
    }
    assert_eq!(held.status, StatusCode::OK, "{}", held.text);
    assert_eq!(
        held_histogram.status,
        StatusCode::OK,
        "{}",
        held_histogram.text
    );
    // The places are back.
    for key in [&acme, &initech] {
        let answer = search(key).await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    }
}

#[tokio::test]
async fn an_unconfirmed_entry_is_an_unknown_outcome_not_a_refusal() {
    let api = TestApi::start().await;
    // One accepted log first: Redis then knows the admission script, so the frozen call
    // below is the script itself and not a lookup the client would follow up.
    assert_eq!(
        api.post_json("/api/log", &a_log("pump-1")).await.status,
        StatusCode::OK
    );
    let keyed = || {
        Request::post("/api/log")
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", "unconfirmed-1")
            .body(Body::from(a_log("pump-2").to_string()))
            .unwrap()
    };
    api.redis.signal(Signal::SIGSTOP).unwrap();
    let answer = api.post_json("/api/log", &a_log("pump-1")).await;
    let keyed_answer = api.send(keyed()).await;
    api.redis.signal(Signal::SIGCONT).unwrap();
    for answer in [&answer, &keyed_answer] {
        assert_eq!(
            answer.status,
            StatusCode::GATEWAY_TIMEOUT,
            "{}",
            answer.text
        );
        assert_eq!(answer.body["error"], "outcome_unknown");
        assert!(answer.headers.contains_key(header::RETRY_AFTER));
    }
    // Each is told whether a retry is safe: only under its Idempotency-Key.
    let detail = |answer: &Answer| answer.body["detail"].as_str().unwrap().to_owned();
    assert!(
        detail(&answer).contains("a retry may store them twice"),
        "{}",
        answer.text
    );
    assert!(
        detail(&keyed_answer).contains("a retry with the same Idempotency-Key is safe")
            && !detail(&keyed_answer).contains("twice"),
        "{}",
        keyed_answer.text
    );
    // What the answers warned of: Redis ran the commands once it could.
    let api = &api;
    eventually(
        "the unconfirmed entries land",
        Duration::from_secs(10),
        || async move { Ok(api.stream_tenants().await.len() == 3) },
    )
    .await
    .unwrap();
    // And what the keyed one promised: its retry adds nothing.
    let retried = api.send(keyed()).await;
    assert_eq!(retried.body["status"], "duplicate", "{}", retried.text);
    assert_eq!(api.stream_tenants().await.len(), 3);
}

#[tokio::test]
async fn hostile_requests_get_clear_errors_and_bounded_metrics() {
    let api = TestApi::start().await;
    // A request id longer than 128 bytes is replaced, a short one kept.
    let long = "x".repeat(100_000);
    let answer = api
        .send(
            Request::get("/livez")
                .header("x-request-id", &long)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    let id = answer.headers["x-request-id"].to_str().unwrap();
    assert!(id.len() <= 128 && id != long, "{}", id.len());
    let answer = api
        .send(
            Request::get("/livez")
                .header("x-request-id", "req-42")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(answer.headers["x-request-id"], "req-42");

    // gzip is decoded; other encodings and charsets are refused with 415.
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(a_log("pump-1").to_string().as_bytes())
        .unwrap();
    let compressed = gzip.finish().unwrap();
    let answer = api
        .send(
            Request::post("/api/log")
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_ENCODING, "GZIP")
                .body(Body::from(compressed))
                .unwrap(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
    let answer = api
        .send(
            Request::post("/api/log")
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_ENCODING, "br")
                .body(Body::from(a_log("pump-1").to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(
        (answer.status, answer.body["error"].as_str()),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("unsupported_encoding")
        ),
        "{}",
        answer.text
    );
    let answer = api
        .send(
            Request::post("/api/log")
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::CONTENT_ENCODING, "gzip")
                .body(Body::from("not gzip at all"))
                .unwrap(),
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{}", answer.text);
    let answer = api
        .post(
            "/api/log",
            Some("application/json; charset=iso-8859-1"),
            a_log("pump-1").to_string(),
        )
        .await;
    assert_eq!(
        (answer.status, answer.body["error"].as_str()),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("unsupported_media_type")
        )
    );
    assert_eq!(
        api.stream_tenants().await.len(),
        1,
        "only the gzip log was accepted"
    );

    // A path that is not UTF-8 gets the JSON error shape.
    let answer = api.get("/api/logs/%FF").await;
    assert_eq!(
        (answer.status, answer.body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_path")),
        "{}",
        answer.text
    );
    for device in ["%20%20%20", "a%09b", "a%7Fb"] {
        let answer = api.get(&format!("/api/logs/{device}")).await;
        assert_eq!(
            answer.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{device}: {}",
            answer.text
        );
    }

    // Invented methods share one label value: /metrics does not grow with them.
    let before = api.get("/metrics").await.text.len();
    for index in 0..200 {
        let method = Method::from_bytes(format!("INVENTED{index}").as_bytes()).unwrap();
        api.send(
            Request::builder()
                .method(method)
                .uri("/api/log")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    }
    let after = api.get("/metrics").await.text;
    assert!(
        !after.contains("INVENTED"),
        "a client-chosen method became a label"
    );
    assert!(after.len() < before + 10_000, "{before} -> {}", after.len());
}

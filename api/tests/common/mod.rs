//! The api in-process (driven with `oneshot`, no socket) on a real Redis and a real,
//! migrated PostgreSQL database.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)] // Shared by test files that each use a part.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use logpipeline_api::{
    AppState, Auth, BodyLimits, Cache, FrontInfo, Metrics, Queue, QueueSettings, RateLimits,
    SearchGate, Shared, Shelf, Tail, app,
};
use logpipeline_core::codec;
use logpipeline_core::config::{DatabaseArgs, RedisArgs};
use logpipeline_core::connection::{Redis, RedisTarget};
use logpipeline_core::db::Reachability;
use logpipeline_core::generations::GenerationKeys;
use logpipeline_core::stream::Shards;
use logpipeline_local::postgres::{self, PostgresServer};
use logpipeline_local::redis::RedisServer;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// A stream entry's field/value pairs.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

pub const STREAM: &str = "logs:stream";

/// An answer: status, JSON body (Null when not JSON), headers.
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    pub headers: axum::http::HeaderMap,
    pub text: String,
}

pub struct TestApi {
    pub redis: RedisServer,
    pub postgres: Option<PostgresServer>,
    pub app: Router,
    pub con: ConnectionManager,
    pub db: PgPool,
}

pub struct Options {
    pub capacity: u64,
    pub shards: u32,
    pub own_postgres: bool,
    pub auth: Auth,
    pub rate_limits: RateLimits,
    /// Searches at once: in all, and of one tenant.
    pub search_concurrency: usize,
    pub search_concurrency_per_tenant: usize,
    pub search_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            capacity: 1000,
            shards: 1,
            own_postgres: false,
            auth: Auth::Off,
            rate_limits: RateLimits::default(),
            search_concurrency: 4,
            search_concurrency_per_tenant: 4,
            search_timeout: Duration::from_secs(5),
        }
    }
}

impl TestApi {
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Self {
        let redis = RedisServer::start().unwrap();
        let (postgres, url) = if options.own_postgres {
            let server = PostgresServer::start().unwrap();
            let url = server.create_database().unwrap();
            (Some(server), url)
        } else {
            (None, postgres::fresh_database().unwrap())
        };
        let db = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(2))
            .connect(&url)
            .await
            .unwrap();
        logpipeline_core::db::migrate(&db).await.unwrap();
        let search_db = PgPoolOptions::new()
            .max_connections(options.search_concurrency as u32)
            .acquire_timeout(Duration::from_secs(2))
            .connect(&url)
            .await
            .unwrap();
        let reachability = Reachability::watch(
            &DatabaseArgs::of_url(url.clone(), 1),
            CancellationToken::new(),
        )
        .unwrap();
        let shelf = Shelf::new(db.clone(), 1024 * 1024, reachability);
        let client = redis::Client::open(redis.url()).unwrap();
        let config = ConnectionManagerConfig::new()
            .set_number_of_retries(1)
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)));
        let con = ConnectionManager::new_with_config(client, config)
            .await
            .unwrap();
        let metrics = Metrics::new().unwrap();
        let state = AppState::new(Shared {
            queue: Queue::new(
                Redis::Single(con.clone()),
                vec![Redis::Single(con.clone()); 2],
                QueueSettings {
                    shards: &Shards::new(STREAM, options.shards),
                    capacity: options.capacity,
                    idempotency_window: Duration::from_secs(600),
                    replication: None,
                },
                metrics.clone(),
            ),
            cache: Cache::new(
                Redis::Single(con.clone()),
                "cache",
                GenerationKeys::new("cache"),
                metrics.clone(),
            ),
            search_shelf: shelf.through(search_db),
            search_gate: SearchGate::new(
                options.search_concurrency,
                options.search_concurrency_per_tenant,
            ),
            shelf,
            db: db.clone(),
            metrics,
            auth: options.auth,
            rate_limits: options.rate_limits,
            max_body_bytes: 1024 * 1024,
            body: BodyLimits::new(
                1024 * 1024,
                Duration::from_secs(10),
                16 * 1024,
                200,
                64 * 1024 * 1024,
            ),
            query_cache_ttl: Duration::from_secs(300),
            search_timeout: options.search_timeout,
            tail: Tail::start(
                &RedisTarget::from_args(&RedisArgs::of_url(redis.url(), false)).unwrap(),
                &Shards::new(STREAM, options.shards),
                1000,
                tokio_util::sync::CancellationToken::new(),
            ),
            stats_cache_ttl: Duration::from_secs(60),
            front: FrontInfo {
                grpc_listen: "127.0.0.1:50051".parse().unwrap(),
                grpc_serving: Arc::default(),
                concurrent_test: None,
            },
        });
        Self {
            redis,
            postgres,
            app: app(state),
            con,
            db,
        }
    }

    pub async fn send(&self, request: Request<Body>) -> Answer {
        let response = self.app.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            body,
            headers,
            text,
        }
    }

    pub async fn get(&self, uri: &str) -> Answer {
        self.send(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    pub async fn post(
        &self,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Body>,
    ) -> Answer {
        let mut request = Request::post(path);
        if let Some(content_type) = content_type {
            request = request.header(header::CONTENT_TYPE, content_type);
        }
        self.send(request.body(body.into()).unwrap()).await
    }

    /// The stream's entries as (id, decoded entry).
    pub async fn entries(&self) -> Vec<(String, codec::Entry)> {
        self.entries_of(STREAM).await
    }

    /// The entries of stream (shard) `key`.
    pub async fn entries_of(&self, key: &str) -> Vec<(String, codec::Entry)> {
        let reply: Vec<(String, Fields)> = redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .query_async(&mut self.con.clone())
            .await
            .unwrap();
        reply
            .into_iter()
            .map(|(id, fields)| (id, codec::decode(&fields).unwrap()))
            .collect()
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Answer {
        self.post(path, Some("application/json"), body.to_string())
            .await
    }
}

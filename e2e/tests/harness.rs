//! The harness itself: servers start, answer, stop and restart.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use logpipeline_local::postgres::{self, PostgresServer};
use logpipeline_local::redis::RedisServer;

#[test]
fn redis_starts_stops_and_restarts() {
    let mut redis = RedisServer::start().unwrap();
    assert!(redis.url().starts_with("redis://127.0.0.1:"));
    redis.stop().unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", redis.port())).is_err());
    redis.start_again().unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", redis.port())).is_ok());
}

#[test]
fn postgres_runs_sql_and_restarts_with_its_data() {
    let mut server = PostgresServer::start().unwrap();
    server
        .psql(
            "postgres",
            "create table t (x int); insert into t values (42)",
        )
        .unwrap();
    server.stop().unwrap();
    assert!(server.psql("postgres", "select 1").is_err());
    server.start_again().unwrap();
    assert_eq!(server.psql("postgres", "select x from t").unwrap(), "42");
}

#[test]
fn fresh_databases_are_distinct() {
    let a = postgres::fresh_database().unwrap();
    let b = postgres::fresh_database().unwrap();
    assert_ne!(a, b);
    let name = b.rsplit('/').next().unwrap();
    let server = postgres::shared().unwrap();
    assert_eq!(
        server
            .psql(name, "select count(*) from pg_tables where tablename = 't'")
            .unwrap(),
        "0"
    );
}

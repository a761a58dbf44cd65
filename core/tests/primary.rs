//! A pool given a primary and its standby on a real PostgreSQL: it uses only the server
//! that takes writes, whatever the hosts' order, and moves to the standby once that is
//! promoted.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::time::{Duration, Instant};

use logpipeline_core::config::DatabaseArgs;
use logpipeline_core::db;
use logpipeline_local::postgres::{self, PostgresServer};
use sqlx::PgPool;

/// The port of the server that answers a query through `pool`, once one does (a pool
/// whose server went away answers errors until it moves).
async fn answering_port(pool: &PgPool) -> u16 {
    let started = Instant::now();
    loop {
        match sqlx::query_scalar::<_, i32>("select inet_server_port()")
            .fetch_one(pool)
            .await
        {
            Ok(port) => return u16::try_from(port).unwrap(),
            Err(error) => assert!(
                started.elapsed() < Duration::from_secs(60),
                "no server answered: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_uses_only_the_primary_and_follows_a_promoted_standby() {
    let mut primary = PostgresServer::start().unwrap();
    let url = primary.create_database().unwrap();
    let database = url.rsplit('/').next().unwrap();
    let standby = PostgresServer::start_standby_of(&primary).unwrap();
    // The standby first: a pool taking the first host that answers would read from it.
    let args = DatabaseArgs::of_url(postgres::multi_host_url(&[&standby, &primary], database), 2);
    let pool = db::lazy_pool(&args).unwrap();
    for _ in 0..20 {
        assert_eq!(answering_port(&pool).await, primary.port());
    }

    primary.stop().unwrap();
    standby.promote().unwrap();
    assert_eq!(answering_port(&pool).await, standby.port());
    sqlx::query("create table written_after_the_switch (id int)")
        .execute(&pool)
        .await
        .unwrap();
}

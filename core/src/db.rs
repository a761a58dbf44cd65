//! The PostgreSQL schema and connection pool.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::PgPoolOptions;

use crate::config::DatabaseArgs;

/// The schema, from `migrations/`: applied at start-up, idempotent, never edited once
/// released (a change is a new migration).
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// A pool that connects on first use, so a process starts while PostgreSQL is down.
pub fn lazy_pool(args: &DatabaseArgs) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(args.db_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(&args.database_url)
}

/// Applies the migrations not applied yet.
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    MIGRATOR.run(pool).await
}

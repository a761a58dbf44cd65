//! The PostgreSQL schema and connection pool.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::PgPoolOptions;

use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, DatabaseArgs};
use crate::retry::until_done;
use crate::{indexes, storage};

/// The schema, from `migrations/`: applied at start-up, idempotent, never edited once
/// released (a change is a new migration).
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// A pool that connects on first use, so a process starts while PostgreSQL is down.
pub fn lazy_pool(args: &DatabaseArgs) -> Result<PgPool, ConfigError> {
    Ok(PgPoolOptions::new()
        .max_connections(args.db_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(args.connect_options()?))
}

/// The last migration that runs before `logs` is partitioned; later ones find it
/// partitioned.
pub const BEFORE_PARTITIONING: i64 = 4;

/// Applies the migrations not applied yet: those up to [`BEFORE_PARTITIONING`], then the
/// partitioning of `logs` ([`storage::partition_legacy`], a no-op once done), then the
/// rest, then builds the query indexes still missing ([`indexes::ensure_query_indexes`]).
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    MIGRATOR.run_to(BEFORE_PARTITIONING, pool).await?;
    storage::partition_legacy(pool)
        .await
        .map_err(MigrateError::Execute)?;
    MIGRATOR.run(pool).await?;
    indexes::ensure_query_indexes(pool)
        .await
        .map_err(MigrateError::Execute)
}

/// Whether [`migrate`] has finished on this database: every migration applied and every
/// query index valid. An error when PostgreSQL cannot say (or nothing was applied yet).
pub async fn is_migrated(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let applied: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations where success")
        .fetch_one(pool)
        .await?;
    if applied < MIGRATOR.iter().count() as i64 {
        return Ok(false);
    }
    indexes::all_valid(&mut *pool.acquire().await?).await
}

/// Applies the migrations, retrying with backoff while PostgreSQL cannot be reached.
/// Ok(false) when `shutdown` came first; an error when a migration itself fails, which
/// retrying would not fix.
pub async fn migrate_when_reachable(
    pool: &PgPool,
    shutdown: &CancellationToken,
) -> Result<bool, MigrateError> {
    let attempt = || async {
        match migrate(pool).await {
            Ok(()) => Ok(Ok(())),
            Err(error) if may_succeed_later(&error) => Err(error),
            Err(error) => Ok(Err(error)),
        }
    };
    match until_done("apply the schema", shutdown, attempt).await {
        None => Ok(false),
        Some(result) => result.map(|()| true),
    }
}

/// Whether a failed migration failed for want of a connection rather than for what it
/// runs.
fn may_succeed_later(error: &MigrateError) -> bool {
    match error {
        MigrateError::Execute(error) | MigrateError::ExecuteMigration(error, _) => {
            !matches!(error, sqlx::Error::Database(_))
        }
        _ => false,
    }
}

//! Rows put straight into the `logs` table, as the worker would store them, for tests and
//! benchmarks of the read path: with a key of their own and the partition they need.

use std::sync::atomic::{AtomicI64, Ordering};

use anyhow::Result;
use logpipeline_core::storage::{self, PartitionSettings};
use sqlx::PgPool;
use time::OffsetDateTime;

/// A log to store.
#[derive(Debug, Clone)]
pub struct Row<'a> {
    /// Its tenant.
    pub tenant: &'a str,
    /// Its message id, as the api answered.
    pub message_id: String,
    /// Its device.
    pub device_id: &'a str,
    /// Its level, by name.
    pub log_level: &'a str,
    /// Its message.
    pub message: String,
    /// Its `log_data`, as JSON text.
    pub log_data: Option<String>,
    /// When it was received.
    pub created_at: OffsetDateTime,
}

/// Keys unique within the test process.
static NEXT_KEY: AtomicI64 = AtomicI64::new(1);

/// Stores `row` under a new key, making its partition first when needed.
pub async fn insert(pool: &PgPool, row: Row<'_>) -> Result<()> {
    storage::ensure_partitions(pool, &[row.created_at], PartitionSettings::default()).await?;
    sqlx::query(
        "insert into logs (id, tenant, message_id, device_id, log_level, message, log_data, created_at) \
         values ($1, $2, $3, $4, $5, $6, $7::jsonb, $8)",
    )
    .bind(NEXT_KEY.fetch_add(1, Ordering::Relaxed))
    .bind(row.tenant)
    .bind(row.message_id)
    .bind(row.device_id)
    .bind(row.log_level)
    .bind(row.message)
    .bind(row.log_data)
    .bind(row.created_at)
    .execute(pool)
    .await?;
    Ok(())
}

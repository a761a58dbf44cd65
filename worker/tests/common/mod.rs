//! What the worker's tests on a real PostgreSQL share: a fresh database, entries as the
//! api would have put them on the stream, and the store's settings.

#![allow(dead_code)] // Each test file uses its part.

use std::sync::atomic::{AtomicU64, Ordering};

use logpipeline_core::codec;
use logpipeline_core::storage::PartitionSettings;
use logpipeline_core::tenant::Tenant;
use logpipeline_local::postgres;
use logpipeline_worker::store::{Decoded, StoreSettings};
use logpipeline_worker::stream::StreamEntry;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use time::OffsetDateTime;

/// A new database on the tests' PostgreSQL.
pub async fn database() -> PgPool {
    let url = postgres::fresh_database().unwrap();
    PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await
        .unwrap()
}

/// Sequence numbers of made-up entry ids, unique in the process.
pub static SEQ: AtomicU64 = AtomicU64::new(0);

/// An entry as the api would have put it on the stream at `at`: `count` logs of
/// `device`, with an entry id of that millisecond.
pub fn entry(at: OffsetDateTime, device: &str, count: usize) -> Decoded {
    let logs: Vec<serde_json::Value> = (0..count)
        .map(|i| serde_json::json!({"device_id": device, "log_level": "INFO", "message": format!("log {i}")}))
        .collect();
    let logs = serde_json::to_vec(&logs).unwrap();
    let tenant = Tenant::default();
    let fields: Vec<(Vec<u8>, Vec<u8>)> = codec::encode(at, &tenant, &logs)
        .iter()
        .map(|(name, value)| (name.as_bytes().to_vec(), value.as_bytes().to_vec()))
        .collect();
    let ms = at.unix_timestamp_nanos() / 1_000_000;
    let id = format!("{ms}-{}", SEQ.fetch_add(1, Ordering::Relaxed) % 4096);
    let decoded = codec::decode(&fields).unwrap();
    Decoded::new(StreamEntry { id, fields }, decoded).unwrap()
}

/// The store's settings with `retention`.
pub fn settings(retention: Option<&str>) -> StoreSettings {
    StoreSettings {
        partitions: PartitionSettings::default(),
        retention: retention.map(|r| r.parse().unwrap()),
    }
}

/// The one number `sql` selects.
pub async fn scalar(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

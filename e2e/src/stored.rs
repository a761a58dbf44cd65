//! Every stored log, whether a row of `logs` or in a chunk of `log_chunks` (decoded here
//! with the format's own code), for tests that check what is stored and how often.

use anyhow::Result;
use logpipeline_core::chunk::block::Block;
use logpipeline_core::codec::unix_micros;
use sqlx::PgPool;
use time::OffsetDateTime;

/// A stored log.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StoredLog {
    /// Its tenant.
    pub tenant: String,
    /// Its device.
    pub device_id: String,
    /// When it was received, in µs since the epoch.
    pub created_at: i64,
    /// Its key with `created_at`.
    pub id: i64,
    /// The id the api answered.
    pub message_id: Option<String>,
    /// Its level.
    pub log_level: String,
    /// Its message.
    pub message: Option<String>,
    /// `log_data` as PostgreSQL prints the `jsonb`.
    pub log_data: Option<String>,
    /// Its service, trace and span.
    pub service_name: Option<String>,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
}

/// A row of `logs`.
#[derive(sqlx::FromRow)]
struct Row {
    tenant: String,
    device_id: String,
    created_at: OffsetDateTime,
    id: i64,
    message_id: Option<String>,
    log_level: String,
    message: Option<String>,
    log_data: Option<String>,
    service_name: Option<String>,
    trace_id: Option<String>,
    span_id: Option<String>,
}

/// Every log stored, rows and chunks, in `(tenant, device, created_at, id)` order, and how
/// many of them are in chunks.
pub async fn every_log(pool: &PgPool) -> Result<(Vec<StoredLog>, usize)> {
    let rows: Vec<Row> = sqlx::query_as(
        "select tenant, device_id::text as device_id, created_at, id, message_id, \
         log_level::text as log_level, message, log_data::text as log_data, \
         service_name::text as service_name, trace_id, span_id from logs",
    )
    .fetch_all(pool)
    .await?;
    let mut logs: Vec<StoredLog> = rows
        .into_iter()
        .map(|row| StoredLog {
            tenant: row.tenant,
            device_id: row.device_id,
            created_at: unix_micros(row.created_at),
            id: row.id,
            message_id: row.message_id,
            log_level: row.log_level,
            message: row.message,
            log_data: row.log_data,
            service_name: row.service_name,
            trace_id: row.trace_id,
            span_id: row.span_id,
        })
        .collect();
    let chunks: Vec<(String, String, Vec<u8>)> =
        sqlx::query_as("select tenant, device_id::text, block from log_chunks")
            .fetch_all(pool)
            .await?;
    let mut in_chunks = 0;
    for (tenant, device_id, block) in chunks {
        for row in Block::parse(&block)?.rows_all()? {
            in_chunks += 1;
            logs.push(StoredLog {
                tenant: tenant.clone(),
                device_id: device_id.clone(),
                created_at: row.created_at,
                id: row.id,
                message_id: row.message_id,
                log_level: row.log_level,
                message: row.message,
                log_data: row.log_data,
                service_name: row.service_name,
                trace_id: row.trace_id,
                span_id: row.span_id,
            });
        }
    }
    logs.sort();
    Ok((logs, in_chunks))
}

/// Panics unless no two of `logs` share a key `(created_at, id)`.
pub fn assert_each_once(logs: &[StoredLog]) {
    let mut keys: Vec<(i64, i64)> = logs.iter().map(|log| (log.created_at, log.id)).collect();
    keys.sort_unstable();
    let total = keys.len();
    keys.dedup();
    assert_eq!(keys.len(), total, "a log is stored twice");
}

/// The `message_id` and message of every stored log of run `run` (`log_data.run`), rows
/// and chunks.
pub async fn of_run(pool: &PgPool, run: &str) -> Result<Vec<(String, String)>> {
    let mut logs: Vec<(String, String)> = sqlx::query_as(
        "select message_id, message from logs where log_data @> jsonb_build_object('run', $1::text)",
    )
    .bind(run)
    .fetch_all(pool)
    .await?;
    let blocks: Vec<Vec<u8>> = sqlx::query_scalar("select block from log_chunks")
        .fetch_all(pool)
        .await?;
    for block in blocks {
        for row in Block::parse(&block)?.rows_all()? {
            let of_run = row
                .log_data
                .as_deref()
                .and_then(|data| serde_json::from_str::<serde_json::Value>(data).ok())
                .is_some_and(|data| data["run"] == run);
            if let (true, Some(id), Some(message)) = (of_run, row.message_id, row.message) {
                logs.push((id, message));
            }
        }
    }
    Ok(logs)
}

//! What every ingest path does with logs it has validated: put them on the stream as one
//! entry of the caller's tenant (once per idempotency key), count them, and say what
//! became of them. HTTP JSON, the `/api/v1` front and gRPC all end here, so they share
//! the stream's capacity, its durability, the idempotency window and the metrics.

use logpipeline_core::codec;
use logpipeline_core::record::{LogLevel, LogRecord};
use time::OffsetDateTime;

use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::idempotency::IdempotencyKey;
use crate::metrics::Endpoint;
use crate::state::AppState;

/// Logs on the stream.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The entry holding them.
    pub entry_id: String,
    /// When the api received them (the first time, for a repeated request).
    pub received_at: OffsetDateTime,
    /// How many.
    pub count: usize,
    /// Whether they were accepted before, under the same idempotency key.
    pub duplicate: bool,
}

impl Accepted {
    /// The logs' stable ids, in order.
    pub fn log_ids(&self) -> Vec<String> {
        codec::log_ids(&self.entry_id, self.count)
    }
}

/// The logs of a request, checked: their levels, and the device of the first, which
/// chooses the stream shard (one device's logs stay in order on one shard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// The level of each log, in order.
    pub levels: Vec<LogLevel>,
    /// The first log's device.
    pub device: String,
}

/// Puts `logs_json`, the JSON array of valid logs of `principal`'s tenant as `checked`
/// describes them, on the stream; answers once Redis holds them.
pub async fn accept(
    state: &AppState,
    principal: &Principal,
    received_at: OffsetDateTime,
    logs_json: &[u8],
    checked: &Checked,
    endpoint: Endpoint,
    key: Option<&IdempotencyKey>,
) -> Result<Accepted> {
    let admission = state
        .queue
        .publish(
            received_at,
            &principal.tenant,
            &checked.device,
            logs_json,
            key,
        )
        .await?;
    if !admission.duplicate {
        for level in &checked.levels {
            state.metrics.log_accepted(*level, endpoint);
        }
    }
    Ok(Accepted {
        entry_id: admission.entry_id,
        received_at: admission.received_at,
        count: checked.levels.len(),
        duplicate: admission.duplicate,
    })
}

/// [`accept`] for records built by the api (rather than sent as JSON): serialises them
/// once, as the stream carries them.
pub async fn accept_records(
    state: &AppState,
    principal: &Principal,
    received_at: OffsetDateTime,
    logs: &[LogRecord],
    endpoint: Endpoint,
    key: Option<&IdempotencyKey>,
) -> Result<Accepted> {
    let json = serde_json::to_vec(logs).map_err(|error| Error::Internal(error.to_string()))?;
    accept(
        state,
        principal,
        received_at,
        &json,
        &Checked::of(logs),
        endpoint,
        key,
    )
    .await
}

impl Checked {
    /// What `logs` are.
    pub fn of(logs: &[LogRecord]) -> Self {
        Self {
            levels: logs.iter().map(|log| log.log_level).collect(),
            device: logs
                .first()
                .map(|log| log.device_id.as_str().to_owned())
                .unwrap_or_default(),
        }
    }
}

/// The current time at the precision the pipeline keeps (microseconds).
pub fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1000 * 1000)
        .unwrap_or(now)
}

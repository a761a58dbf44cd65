//! Storing logs in PostgreSQL: one statement per batch, idempotent on each log's id,
//! and isolating the entries PostgreSQL rejects so they do not hold back the rest.

use std::ops::Range;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};

use logpipeline_core::codec::{self, Entry};
use logpipeline_core::partitions::{Partition, Retention};
use logpipeline_core::record::LogRecord;
use logpipeline_core::storage::{self, PartitionSettings};
use logpipeline_core::tenant::DEFAULT_TENANT;
use sqlx::PgPool;
use time::OffsetDateTime;
use tracing::debug;

use crate::stream::StreamEntry;

/// Stores a batch of logs given as one array per column (`$1`–`$8`, `$10`–`$12`), and
/// counts the logs inserted per tenant, device, level and partition in stripe `$9` of
/// `log_counts`, in one statement (one transaction). A log whose key `(created_at, id)` is
/// stored already (its entry was delivered again after a crash) is skipped and not
/// counted, so each log is stored and counted exactly once however often its entry is
/// delivered. In the legacy
/// partition, which holds the logs of before partitioning, the unique `message_id` does
/// the same for entries stored before the upgrade: `on conflict do nothing` honours every
/// unique index of the partition a row goes to. Returns the number inserted.
const INSERT: &str = "
with inserted as (
    insert into logs (id, message_id, tenant, device_id, log_level, message, log_data, created_at,
                      service_name, trace_id, span_id)
    select id, message_id, tenant, device_id, log_level, message, log_data::jsonb, created_at,
           service_name, trace_id, span_id
    from unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::timestamptz[], $10::text[], $11::text[], $12::text[])
        as batch (id, message_id, tenant, device_id, log_level, message, log_data, created_at,
                  service_name, trace_id, span_id)
    on conflict do nothing
    returning tenant, device_id, log_level, created_at
), counted as (
    insert into log_counts (tenant, device_id, log_level, period, stripe, count, last_at)
    select i.tenant, i.device_id, i.log_level, coalesce(p.from_at, '-infinity'), $9,
           count(*), max(i.created_at)
    from inserted i
    join log_partitions p
        on (p.from_at is null or i.created_at >= p.from_at) and i.created_at < p.to_at
    group by 1, 2, 3, 4
    order by 1, 2, 3, 4
    on conflict (tenant, device_id, log_level, period, stripe) do update
        set count = log_counts.count + excluded.count,
            last_at = greatest(log_counts.last_at, excluded.last_at)
)
select count(*) from inserted
";

/// How many stripes each counter of `log_counts` is split over.
const COUNT_STRIPES: u32 = 16;

/// The device of the synthetic log [`Store::accepts_writes`] inserts and rolls back.
const PROBE_DEVICE: &str = "logpipeline-probe";

/// An entry read from the stream and decoded.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// The entry as read, kept for acknowledging and dead-lettering.
    pub raw: StreamEntry,
    /// Its logs.
    pub entry: Entry,
}

impl Decoded {
    /// `entry`, read as `raw`, when each of its logs has a key ([`codec::log_key`]): the
    /// entry id is `<ms>-<seq>`, as Redis makes them, and it holds at most 1024 logs.
    pub fn new(raw: StreamEntry, entry: Entry) -> Result<Self, (StreamEntry, String)> {
        if codec::log_key(&raw.id, entry.logs.len().saturating_sub(1)).is_none() {
            let reason = format!(
                "the entry's {} logs cannot be keyed by its id {:?}",
                entry.logs.len(),
                raw.id
            );
            return Err((raw, reason));
        }
        Ok(Self { raw, entry })
    }

    /// The `id` column of its log `index`, which [`Decoded::new`] checked.
    fn key(&self, index: usize) -> i64 {
        codec::log_key(&self.raw.id, index).unwrap_or_default()
    }
}

/// What became of a batch.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Indices of the entries done with: stored (inserted now or before), or expired.
    pub stored: Vec<usize>,
    /// Logs of the stored entries.
    pub logs: u64,
    /// Of those logs, how many were inserted now; the rest were stored already.
    pub inserted: u64,
    /// Logs not stored because they were received longer ago than the retention.
    pub expired: u64,
    /// Entries with logs PostgreSQL rejects: their indices, and which logs and why.
    pub rejected: Vec<(usize, Rejection)>,
}

/// The logs of an entry that PostgreSQL refused, while it stored the others.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// PostgreSQL's reason, for the last log refused.
    pub reason: String,
    /// Indices of the refused logs in the entry, in order.
    pub logs: Vec<usize>,
    /// How many of the entry's other logs were inserted now (not counted in
    /// [`Outcome::inserted`]).
    pub inserted: u64,
}

impl Rejection {
    /// What goes to the dead-letter stream for `decoded`: the entry as read when all its
    /// logs were refused, else the entry with only the refused logs, which a replay can
    /// then add to the stream without storing the others twice, and their indices in
    /// the entry (field `log_indexes`, comma-separated).
    pub fn held_back(&self, decoded: &Decoded) -> StreamEntry {
        if self.logs.len() == decoded.entry.logs.len() {
            return decoded.raw.clone();
        }
        let refused: Vec<&LogRecord> = self
            .logs
            .iter()
            .filter_map(|&index| decoded.entry.logs.get(index))
            .collect();
        let logs = serde_json::to_vec(&refused).unwrap_or_default();
        let indexes = self
            .logs
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = decoded
            .raw
            .fields
            .iter()
            .map(|(name, value)| {
                let value = if name == codec::FIELD_LOGS.as_bytes() {
                    logs.clone()
                } else {
                    value.clone()
                };
                (name.clone(), value)
            })
            .collect();
        fields.push((b"log_indexes".to_vec(), indexes.into_bytes()));
        StreamEntry {
            id: decoded.raw.id.clone(),
            fields,
        }
    }
}

/// How logs are kept.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreSettings {
    /// How partitions are made.
    pub partitions: PartitionSettings,
    /// How long logs are kept; forever when None.
    pub retention: Option<Retention>,
}

/// The `logs` table and its counters.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    settings: StoreSettings,
    /// The partitions known to exist, refreshed when a batch needs one that is not.
    known: Arc<RwLock<Vec<Partition>>>,
    /// Picks the counter stripe of the next batch.
    next_stripe: Arc<AtomicU32>,
}

impl Store {
    /// The table behind `pool`.
    pub fn new(pool: PgPool, settings: StoreSettings) -> Self {
        Self {
            pool,
            settings,
            known: Arc::default(),
            next_stripe: Arc::new(AtomicU32::new(std::process::id())),
        }
    }

    /// How logs are kept.
    pub fn settings(&self) -> StoreSettings {
        self.settings
    }

    /// Stores `entries`. Entries received longer ago than the retention are not stored
    /// (their partition is gone or about to be) and count as done. When PostgreSQL
    /// refuses the batch while it still accepts a known-good log (see
    /// [`Store::accepts_writes`]), the refusal is about the data: the batch is split in
    /// halves until the refused entries are alone, and all others are stored. Fails for
    /// everything else (PostgreSQL down or refusing every write, a timeout), which is
    /// worth retrying as a whole and says nothing about the entries.
    pub async fn store(&self, entries: &[Decoded]) -> Result<Outcome, sqlx::Error> {
        let mut outcome = Outcome::default();
        let cutoff = self
            .settings
            .retention
            .map(|retention| retention.cutoff(OffsetDateTime::now_utc()));
        let (expired, live): (Vec<usize>, Vec<usize>) = (0..entries.len()).partition(|&index| {
            cutoff.is_some_and(|cutoff| entries[index].entry.received_at < cutoff)
        });
        for &index in &expired {
            outcome.expired += entries[index].entry.logs.len() as u64;
        }
        outcome.stored.extend(expired);
        self.ensure_partitions(live.iter().map(|&index| entries[index].entry.received_at))
            .await?;
        // Ranges of `live` still to store, the next one last.
        let mut work: Vec<Range<usize>> = Vec::new();
        work.push(0..live.len());
        while let Some(range) = work.pop() {
            if range.is_empty() {
                continue;
            }
            let batch = || live[range.clone()].iter().map(|&index| &entries[index]);
            let error = match insert(Columns::of(batch()), self.next_stripe(), &self.pool).await {
                Ok(inserted) => {
                    outcome.inserted += inserted;
                    outcome.logs += batch()
                        .map(|decoded| decoded.entry.logs.len() as u64)
                        .sum::<u64>();
                    outcome.stored.extend(live[range].iter().copied());
                    continue;
                }
                Err(error) if is_refusal(&error) => error,
                Err(error) => return Err(error),
            };
            if let Err(probe) = self.accepts_writes().await {
                debug!(%probe, %error, "PostgreSQL refuses a known-good log too: not the batch's fault");
                return Err(error);
            }
            if range.len() == 1 {
                let index = live[range.start];
                let rejection = self.isolate_logs(&entries[index], error).await?;
                outcome.rejected.push((index, rejection));
            } else {
                let middle = range.start + range.len() / 2;
                work.push(middle..range.end);
                work.push(range.start..middle);
            }
        }
        outcome.stored.sort_unstable();
        Ok(outcome)
    }

    /// Stores the logs of `decoded`, an entry PostgreSQL refused with `error` while it
    /// accepts a known-good log, that it does take: its logs are split in halves until
    /// the refused ones are alone. The valid logs of a request are stored even when
    /// another log of it is refused; only the refused ones are held back.
    async fn isolate_logs(
        &self,
        decoded: &Decoded,
        error: sqlx::Error,
    ) -> Result<Rejection, sqlx::Error> {
        let count = decoded.entry.logs.len();
        let mut rejection = Rejection {
            reason: rejection_reason(&error),
            logs: Vec::new(),
            inserted: 0,
        };
        if count == 1 {
            rejection.logs.push(0);
            return Ok(rejection);
        }
        let mut work = vec![count / 2..count, 0..count / 2];
        while let Some(range) = work.pop() {
            if range.is_empty() {
                continue;
            }
            let mut columns = Columns::default();
            for index in range.clone() {
                columns.push(decoded, index);
            }
            match insert(columns, self.next_stripe(), &self.pool).await {
                Ok(inserted) => rejection.inserted += inserted,
                Err(error) if is_refusal(&error) && range.len() == 1 => {
                    rejection.reason = rejection_reason(&error);
                    rejection.logs.push(range.start);
                }
                Err(error) if is_refusal(&error) => {
                    let middle = range.start + range.len() / 2;
                    work.push(middle..range.end);
                    work.push(range.start..middle);
                }
                Err(error) => return Err(error),
            }
        }
        Ok(rejection)
    }

    /// Makes sure partitions hold every time of `times`: the partitions known are
    /// enough almost always; otherwise they are read again, and made when missing.
    async fn ensure_partitions(
        &self,
        times: impl Iterator<Item = OffsetDateTime>,
    ) -> Result<(), sqlx::Error> {
        let missing: Vec<OffsetDateTime> = {
            let known = self
                .known
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            times
                .filter(|at| !known.iter().any(|partition| partition.contains(*at)))
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let partitions =
            storage::ensure_partitions(&self.pool, &missing, self.settings.partitions).await?;
        *self
            .known
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = partitions;
        Ok(())
    }

    /// Checks that PostgreSQL stores a known-good log right now: the statement of every
    /// batch, with one synthetic log, in a transaction that is rolled back. A refusal is
    /// held against an entry only when this succeeds, so an outage that refuses every
    /// write (a read-only failover, a full disk, a revoked grant, a missing table) is
    /// never mistaken for bad data, whatever its SQLSTATE.
    pub async fn accepts_writes(&self) -> Result<(), sqlx::Error> {
        let stripe = self.next_stripe();
        let now = OffsetDateTime::now_utc();
        self.ensure_partitions(std::iter::once(now)).await?;
        let columns = Columns {
            id: vec![i64::from(stripe)],
            message_id: vec![format!("{PROBE_DEVICE}:{}:{stripe}", std::process::id())],
            tenant: vec![DEFAULT_TENANT],
            device_id: vec![PROBE_DEVICE],
            log_level: vec!["INFO"],
            message: vec!["probe"],
            log_data: vec!["{}"],
            created_at: vec![now],
            service_name: vec![None],
            trace_id: vec![None],
            span_id: vec![None],
        };
        let mut transaction = self.pool.begin().await?;
        insert(columns, stripe, &mut *transaction).await?;
        transaction.rollback().await
    }

    /// The counter stripe of the next statement.
    fn next_stripe(&self) -> i16 {
        (self.next_stripe.fetch_add(1, Ordering::Relaxed) % COUNT_STRIPES) as i16
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether PostgreSQL answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("select 1").execute(&self.pool).await.is_ok()
    }
}

/// Inserts `columns` in one statement, counting them in `stripe`; returns how many logs
/// were new.
async fn insert<'e>(
    columns: Columns<'_>,
    stripe: i16,
    executor: impl sqlx::PgExecutor<'e>,
) -> Result<u64, sqlx::Error> {
    let inserted: i64 = sqlx::query_scalar(INSERT)
        .bind(columns.id)
        .bind(columns.message_id)
        .bind(columns.tenant)
        .bind(columns.device_id)
        .bind(columns.log_level)
        .bind(columns.message)
        .bind(columns.log_data)
        .bind(columns.created_at)
        .bind(stripe)
        .bind(columns.service_name)
        .bind(columns.trace_id)
        .bind(columns.span_id)
        .fetch_one(executor)
        .await?;
    Ok(inserted.unsigned_abs())
}

/// The batch's logs, one vector per column.
#[derive(Default)]
struct Columns<'a> {
    id: Vec<i64>,
    message_id: Vec<String>,
    tenant: Vec<&'a str>,
    device_id: Vec<&'a str>,
    log_level: Vec<&'static str>,
    message: Vec<&'a str>,
    log_data: Vec<&'a str>,
    created_at: Vec<OffsetDateTime>,
    service_name: Vec<Option<&'a str>>,
    trace_id: Vec<Option<&'a str>>,
    span_id: Vec<Option<&'a str>>,
}

impl<'a> Columns<'a> {
    fn of(entries: impl Iterator<Item = &'a Decoded> + Clone) -> Self {
        let logs = entries
            .clone()
            .map(|decoded| decoded.entry.logs.len())
            .sum();
        let mut columns = Columns {
            id: Vec::with_capacity(logs),
            message_id: Vec::with_capacity(logs),
            tenant: Vec::with_capacity(logs),
            device_id: Vec::with_capacity(logs),
            log_level: Vec::with_capacity(logs),
            message: Vec::with_capacity(logs),
            log_data: Vec::with_capacity(logs),
            created_at: Vec::with_capacity(logs),
            service_name: Vec::with_capacity(logs),
            trace_id: Vec::with_capacity(logs),
            span_id: Vec::with_capacity(logs),
        };
        for decoded in entries {
            for index in 0..decoded.entry.logs.len() {
                columns.push(decoded, index);
            }
        }
        columns
    }

    /// Adds log `index` of `decoded`.
    fn push(&mut self, decoded: &'a Decoded, index: usize) {
        let log = &decoded.entry.logs[index];
        self.id.push(decoded.key(index));
        self.message_id.push(codec::log_id(
            &decoded.raw.id,
            index,
            decoded.entry.logs.len(),
        ));
        self.tenant.push(decoded.entry.tenant.as_str());
        self.device_id.push(log.device_id.as_str());
        self.log_level.push(log.log_level.as_str());
        self.message.push(log.message.as_str());
        self.log_data
            .push(log.log_data.as_ref().map_or("{}", |data| data.as_json()));
        self.created_at.push(decoded.entry.received_at);
        self.service_name
            .push(log.service_name.as_ref().map(|name| name.as_str()));
        self.trace_id
            .push(log.trace_id.as_ref().map(|id| id.as_str()));
        self.span_id
            .push(log.span_id.as_ref().map(|id| id.as_str()));
    }
}

/// Whether PostgreSQL answered the statement with an error, of any SQLSTATE class:
/// possibly the data's fault, unlike a lost connection or a timeout on this side.
/// [`Store::store`] decides which it is by probing with a known-good log.
pub fn is_refusal(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(_))
}

fn rejection_reason(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(error) => format!(
            "PostgreSQL rejected the entry ({}): {}",
            error.code().unwrap_or_default(),
            error.message()
        ),
        other => other.to_string(),
    }
}

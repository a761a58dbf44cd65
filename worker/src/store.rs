//! Storing logs in PostgreSQL: each batch by binary `COPY` in one transaction with its
//! counts, exactly once, and isolating the logs PostgreSQL rejects so they do not hold
//! back the rest.
//!
//! Exactly once rests on the primary key `(created_at, id)`: a log's key comes from its
//! stream entry ([`codec::log_key`]), so a re-delivered entry (a worker killed between its
//! commit and its acknowledgement, a claim, a retry) brings keys that are stored already.
//! A batch goes in by `COPY`, which has no `on conflict`: PostgreSQL's unique check
//! refuses the whole `COPY` when one key is stored already, and only then the batch goes
//! in again by an `insert … on conflict do nothing`, which skips what is there. First
//! deliveries, nearly all of them, pay neither the conflict handling nor `unnest`'s
//! array decoding.
//!
//! Counts go to `log_count_deltas`, one row of arrays per transaction, which
//! [`storage::fold_counts`] folds into `log_counts` every second: a batch of 500 logs over
//! 500 devices and levels costs one row there instead of 500 counter updates.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, RwLock};

use logpipeline_core::codec::{self, Entry};
use logpipeline_core::partitions::{Partition, Retention};
use logpipeline_core::record::LogRecord;
use logpipeline_core::storage::{self, PartitionSettings};
use logpipeline_core::tenant::DEFAULT_TENANT;
use sqlx::{PgConnection, PgPool};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::debug;

use crate::copy::CopyRows;
use crate::stream::StreamEntry;

/// The columns a log is stored with, in the order [`copy_rows`] writes them; the
/// partition key routes each row.
const COPY_LOGS: &str = "copy logs (id, message_id, tenant, device_id, log_level, message, \
    log_data, created_at, service_name, trace_id, span_id) from stdin (format binary)";
/// Fields of a row of [`COPY_LOGS`].
const COPY_FIELDS: i16 = 11;

/// Adds one transaction's counts, as arrays of equal length, to those waiting to be folded
/// into `log_counts`.
const ADD_COUNTS: &str = "insert into log_count_deltas \
    (tenants, devices, levels, periods, counts, last_ats) \
    values ($1, $2, $3, $4::text[]::timestamptz[], $5, $6)";

/// Stores a batch given as one array per column (`$1`–`$11`) and adds the counts of the
/// logs it inserted per tenant, device, level and partition to `log_count_deltas`, in one
/// statement (one transaction). A log whose key `(created_at, id)` is stored already (its
/// entry was delivered again) is skipped and not counted. In the legacy partition, which
/// holds the logs of before partitioning, the unique `message_id` does the same for
/// entries stored before the upgrade: `on conflict do nothing` honours every unique
/// index of the partition a row goes to. Returns the number inserted.
const INSERT_ONCE: &str = "
with inserted as (
    insert into logs (id, message_id, tenant, device_id, log_level, message, log_data, created_at,
                      service_name, trace_id, span_id)
    select id, message_id, tenant, device_id, log_level, message, log_data::jsonb, created_at,
           service_name, trace_id, span_id
    from unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::timestamptz[], $9::text[], $10::text[], $11::text[])
        as batch (id, message_id, tenant, device_id, log_level, message, log_data, created_at,
                  service_name, trace_id, span_id)
    on conflict do nothing
    returning tenant, device_id, log_level, created_at
), counted as (
    select i.tenant, i.device_id::text as device_id, i.log_level::text as log_level,
           coalesce(p.from_at, '-infinity') as period, count(*) as n, max(i.created_at) as last_at
    from inserted i
    join log_partitions p
        on (p.from_at is null or i.created_at >= p.from_at) and i.created_at < p.to_at
    group by 1, 2, 3, 4
), added as (
    insert into log_count_deltas (tenants, devices, levels, periods, counts, last_ats)
    select array_agg(tenant), array_agg(device_id), array_agg(log_level), array_agg(period),
           array_agg(n), array_agg(last_at)
    from counted
    having count(*) > 0
)
select count(*) from inserted
";

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
}

impl Store {
    /// The table behind `pool`.
    pub fn new(pool: PgPool, settings: StoreSettings) -> Self {
        Self {
            pool,
            settings,
            known: Arc::default(),
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
            let rows = Row::of_entries(live[range.clone()].iter().map(|&index| &entries[index]));
            let error = match self.write(&rows).await {
                Ok(inserted) => {
                    outcome.inserted += inserted;
                    outcome.logs += rows.len() as u64;
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
            let rows: Vec<Row<'_>> = range.clone().map(|index| Row::of(decoded, index)).collect();
            match self.write(&rows).await {
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
        let now = OffsetDateTime::now_utc();
        self.ensure_partitions(std::iter::once(now)).await?;
        let probe = Row {
            id: i64::from(std::process::id()),
            message_id: format!("{PROBE_DEVICE}:{}", std::process::id()),
            tenant: DEFAULT_TENANT,
            device_id: PROBE_DEVICE,
            log_level: "INFO",
            message: "probe",
            log_data: "{}",
            created_at: now,
            service_name: None,
            trace_id: None,
            span_id: None,
        };
        let counts = self.counts(std::slice::from_ref(&probe));
        let mut transaction = self.pool.begin().await?;
        copy(&mut transaction, std::slice::from_ref(&probe)).await?;
        if let Some(counts) = counts {
            counts.add(&mut transaction).await?;
        }
        transaction.rollback().await
    }

    /// Stores `rows` in one transaction with their counts: by `COPY`, or when one of them
    /// is stored already, by an insert that skips those. Returns how many were inserted.
    async fn write(&self, rows: &[Row<'_>]) -> Result<u64, sqlx::Error> {
        let Some(counts) = self.counts(rows) else {
            return insert_once(rows, &self.pool).await;
        };
        let mut transaction = self.pool.begin().await?;
        match copy(&mut transaction, rows).await {
            Ok(()) => {}
            Err(error) if is_unique_violation(&error) => {
                // Delivered before: some of these logs are stored already.
                transaction.rollback().await?;
                return insert_once(rows, &self.pool).await;
            }
            Err(error) => return Err(error),
        }
        counts.add(&mut transaction).await?;
        transaction.commit().await?;
        Ok(rows.len() as u64)
    }

    /// The counts of `rows` per tenant, device, level and partition; None when a row's
    /// partition is not among those known (the insert then finds it in the database).
    fn counts(&self, rows: &[Row<'_>]) -> Option<Counts> {
        let known = self
            .known
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut counts: HashMap<CountKey<'_>, (i64, OffsetDateTime)> = HashMap::new();
        for row in rows {
            let partition = known
                .iter()
                .find(|partition| partition.contains(row.created_at))?;
            let count = counts
                .entry((row.tenant, row.device_id, row.log_level, partition.from))
                .or_insert((0, row.created_at));
            count.0 += 1;
            count.1 = count.1.max(row.created_at);
        }
        let mut arrays = Counts::default();
        for ((tenant, device, level, period), (count, last_at)) in counts {
            arrays.tenants.push(tenant.to_owned());
            arrays.devices.push(device.to_owned());
            arrays.levels.push(level.to_owned());
            arrays.periods.push(period.map_or_else(
                || "-infinity".to_owned(),
                |from| from.format(&Rfc3339).unwrap_or_default(),
            ));
            arrays.counts.push(count);
            arrays.last_ats.push(last_at);
        }
        Some(arrays)
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

/// One log as it is stored: a row of `logs`.
struct Row<'a> {
    id: i64,
    message_id: String,
    tenant: &'a str,
    device_id: &'a str,
    log_level: &'static str,
    message: &'a str,
    log_data: &'a str,
    created_at: OffsetDateTime,
    service_name: Option<&'a str>,
    trace_id: Option<&'a str>,
    span_id: Option<&'a str>,
}

impl<'a> Row<'a> {
    /// Log `index` of `decoded`.
    fn of(decoded: &'a Decoded, index: usize) -> Self {
        let log: &LogRecord = &decoded.entry.logs[index];
        Self {
            id: decoded.key(index),
            message_id: codec::log_id(&decoded.raw.id, index, decoded.entry.logs.len()),
            tenant: decoded.entry.tenant.as_str(),
            device_id: log.device_id.as_str(),
            log_level: log.log_level.as_str(),
            message: log.message.as_str(),
            log_data: log.log_data.as_ref().map_or("{}", |data| data.as_json()),
            created_at: decoded.entry.received_at,
            service_name: log.service_name.as_ref().map(|name| name.as_str()),
            trace_id: log.trace_id.as_ref().map(|id| id.as_str()),
            span_id: log.span_id.as_ref().map(|id| id.as_str()),
        }
    }

    /// Every log of `entries`, in order.
    fn of_entries(entries: impl Iterator<Item = &'a Decoded>) -> Vec<Self> {
        entries
            .flat_map(|decoded| {
                (0..decoded.entry.logs.len()).map(move |index| Self::of(decoded, index))
            })
            .collect()
    }
}

/// `rows` in binary `COPY` form, in [`COPY_LOGS`]'s columns.
fn copy_rows(rows: &[Row<'_>]) -> Vec<u8> {
    let bytes: usize = rows
        .iter()
        .map(|row| 160 + row.message.len() + row.log_data.len())
        .sum();
    let mut copy = CopyRows::with_capacity(bytes);
    for row in rows {
        copy.row(COPY_FIELDS);
        copy.bigint(row.id);
        copy.text(&row.message_id);
        copy.text(row.tenant);
        copy.text(row.device_id);
        copy.text(row.log_level);
        copy.text(row.message);
        copy.jsonb(row.log_data);
        copy.timestamptz(row.created_at);
        copy.optional_text(row.service_name);
        copy.optional_text(row.trace_id);
        copy.optional_text(row.span_id);
    }
    copy.finish()
}

/// Writes `rows` with `COPY` on `connection`, in its transaction.
async fn copy(connection: &mut PgConnection, rows: &[Row<'_>]) -> Result<(), sqlx::Error> {
    let data = copy_rows(rows);
    let mut copy_in = connection.copy_in_raw(COPY_LOGS).await?;
    if let Err(error) = copy_in.send(data).await {
        // The connection must leave COPY mode before it is used again.
        let _ = copy_in.abort("the worker could not send the rows").await;
        return Err(error);
    }
    copy_in.finish().await.map(drop)
}

/// Inserts `rows` in one statement that skips the logs stored already, and counts those
/// it inserted; returns how many.
async fn insert_once<'a>(rows: &'a [Row<'a>], pool: &PgPool) -> Result<u64, sqlx::Error> {
    let column = |value: fn(&'a Row<'a>) -> &'a str| rows.iter().map(value).collect::<Vec<&str>>();
    let optional = |value: fn(&'a Row<'a>) -> Option<&'a str>| {
        rows.iter().map(value).collect::<Vec<Option<&str>>>()
    };
    let inserted: i64 = sqlx::query_scalar(INSERT_ONCE)
        .bind(rows.iter().map(|row| row.id).collect::<Vec<i64>>())
        .bind(column(|row| &row.message_id))
        .bind(column(|row| row.tenant))
        .bind(column(|row| row.device_id))
        .bind(column(|row| row.log_level))
        .bind(column(|row| row.message))
        .bind(column(|row| row.log_data))
        .bind(
            rows.iter()
                .map(|row| row.created_at)
                .collect::<Vec<OffsetDateTime>>(),
        )
        .bind(optional(|row| row.service_name))
        .bind(optional(|row| row.trace_id))
        .bind(optional(|row| row.span_id))
        .fetch_one(pool)
        .await?;
    Ok(inserted.unsigned_abs())
}

/// What logs are counted by: tenant, device, level, and the start of their partition
/// (None for the legacy one).
type CountKey<'a> = (&'a str, &'a str, &'a str, Option<OffsetDateTime>);

/// One transaction's counts, as the arrays of a `log_count_deltas` row.
#[derive(Debug, Default)]
struct Counts {
    tenants: Vec<String>,
    devices: Vec<String>,
    levels: Vec<String>,
    /// Each partition's start, as text: `-infinity` for the legacy partition.
    periods: Vec<String>,
    counts: Vec<i64>,
    last_ats: Vec<OffsetDateTime>,
}

impl Counts {
    /// Adds them in `connection`'s transaction.
    async fn add(self, connection: &mut PgConnection) -> Result<(), sqlx::Error> {
        sqlx::query(ADD_COUNTS)
            .bind(self.tenants)
            .bind(self.devices)
            .bind(self.levels)
            .bind(self.periods)
            .bind(self.counts)
            .bind(self.last_ats)
            .execute(connection)
            .await
            .map(drop)
    }
}

/// Whether PostgreSQL refused a write for a key that is stored already (SQLSTATE 23505).
fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(error) if error.code().as_deref() == Some("23505"))
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

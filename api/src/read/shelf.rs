//! Reading the store as one: the rows of `logs` and the logs of chunks, in one snapshot,
//! so a compaction that commits meanwhile never shows a log twice or hides it.
//!
//! A page reads the rows it wants with one statement, then opens chunks, best first, a
//! few more at a time, until it has its logs and the next chunk cannot hold a better one.
//! A histogram counts rows with one statement, counts each chunk that lies in one bucket
//! from its level counts, and opens the others.

use std::collections::BTreeMap;
use std::time::Duration;

use logpipeline_core::codec::unix_micros;
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder, Transaction};
use time::OffsetDateTime;

use super::chunks::{self, Candidate, ReadError};
use super::filter::{Filter, Subject};
use super::page::{Cursor, Order, StoredLog};
use crate::error::Error;

/// The columns of a [`StoredLog`], as a read selects them from `logs`.
const STORED_LOG_COLUMNS: &str = "select id, message_id, device_id, service_name, \
     trace_id, span_id, log_level, message, log_data::text as log_data, created_at";
/// Candidates fetched per statement.
const CANDIDATES_PER_QUERY: i64 = 256;
/// Most chunks opened together.
const MOST_OPENED: usize = 32;
/// Where `date_bin` counts buckets from: 2000-01-01T00:00:00Z.
const BIN_ORIGIN_SECS: i64 = 946_684_800;

/// A read's snapshot of the store: one `REPEATABLE READ` transaction, and the time
/// budget of each statement.
pub struct Snapshot {
    transaction: Transaction<'static, Postgres>,
    budget: Option<Duration>,
}

impl Snapshot {
    /// A snapshot of `db`; with `budget`, each statement past it is stopped (and the read
    /// answered `search_too_broad`).
    pub async fn begin(db: &PgPool, budget: Option<Duration>) -> Result<Self, Error> {
        let mut transaction = db.begin().await.map_err(Error::DatabaseUnavailable)?;
        sqlx::query("set transaction isolation level repeatable read, read only")
            .execute(&mut *transaction)
            .await
            .map_err(Error::DatabaseUnavailable)?;
        if let Some(budget) = budget {
            sqlx::query("select set_config('statement_timeout', $1, true)")
                .bind(budget.as_millis().to_string())
                .execute(&mut *transaction)
                .await
                .map_err(Error::DatabaseUnavailable)?;
        }
        Ok(Self {
            transaction,
            budget,
        })
    }

    /// Ends the snapshot.
    pub async fn end(self) -> Result<(), Error> {
        self.transaction
            .commit()
            .await
            .map_err(Error::DatabaseUnavailable)
    }

    fn connection(&mut self) -> &mut PgConnection {
        &mut self.transaction
    }

    /// `error` of a statement, as the answer says it.
    fn failed(&self, error: ReadError) -> Error {
        match error {
            ReadError::Database(sqlx::Error::Database(database))
                if database.code().as_deref() == Some("57014") =>
            {
                match self.budget {
                    Some(budget) => Error::SearchTooBroad { budget },
                    None => Error::DatabaseUnavailable(sqlx::Error::Database(database)),
                }
            }
            ReadError::Database(error) => Error::DatabaseUnavailable(error),
            ReadError::Chunk(error) => Error::Internal(error.to_string()),
        }
    }

    /// Up to `limit` logs `filter` picks after `cursor`, in `order`.
    pub async fn page(
        &mut self,
        filter: &Filter,
        order: Order,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<StoredLog>, Error> {
        match self.read_page(filter, order, cursor, limit).await {
            Ok(logs) => Ok(logs),
            Err(error) => Err(self.failed(error)),
        }
    }

    async fn read_page(
        &mut self,
        filter: &Filter,
        order: Order,
        cursor: Option<Cursor>,
        limit: usize,
    ) -> Result<Vec<StoredLog>, ReadError> {
        let connection = self.connection();
        let mut logs = rows_page(connection, filter, order, cursor, limit).await?;
        let after_cursor = move |key: (i64, i64)| {
            cursor.is_none_or(|cursor| {
                let at = (cursor.micros, cursor.id);
                match order {
                    Order::NewestFirst => key < at,
                    Order::OldestFirst => key > at,
                }
            })
        };
        let mut after: Option<Candidate> = None;
        let mut opened_together = 1;
        'candidates: loop {
            let batch = chunks::candidates(
                connection,
                filter,
                order,
                cursor,
                after.as_ref(),
                CANDIDATES_PER_QUERY,
            )
            .await?;
            let mut next = 0;
            while next < batch.len() {
                let mut group: Vec<&Candidate> = Vec::new();
                while next < batch.len() && group.len() < opened_together {
                    if logs.len() >= limit && !beats(batch[next].best(order), &logs, order) {
                        break;
                    }
                    group.push(&batch[next]);
                    next += 1;
                }
                if group.is_empty() {
                    // Full, and no chunk left can hold a log that belongs on the page.
                    break 'candidates;
                }
                logs.extend(chunks::logs(connection, &group, filter, after_cursor).await?);
                sort(&mut logs, order);
                logs.truncate(limit);
                opened_together = (opened_together * 2).min(MOST_OPENED);
            }
            if (batch.len() as i64) < CANDIDATES_PER_QUERY {
                break;
            }
            after = batch.last().cloned();
        }
        Ok(logs)
    }

    /// How many logs `filter` picks per bucket of `stride_secs` seconds, by the start of
    /// each bucket that holds any, oldest first.
    pub async fn histogram(
        &mut self,
        filter: &Filter,
        stride_secs: i64,
    ) -> Result<Vec<(OffsetDateTime, i64)>, Error> {
        match self.read_histogram(filter, stride_secs).await {
            Ok(buckets) => Ok(buckets),
            Err(error) => Err(self.failed(error)),
        }
    }

    async fn read_histogram(
        &mut self,
        filter: &Filter,
        stride_secs: i64,
    ) -> Result<Vec<(OffsetDateTime, i64)>, ReadError> {
        let connection = self.connection();
        let stride = stride_secs * 1_000_000;
        let bin = |micros: i64| {
            let origin = BIN_ORIGIN_SECS * 1_000_000;
            origin + (micros - origin).div_euclid(stride) * stride
        };
        let mut sql = QueryBuilder::<Postgres>::new(format!(
            "select date_bin('{stride_secs} seconds', created_at, timestamptz '2000-01-01') as at, \
             count(*) as count from logs"
        ));
        filter.push_rows_where(&mut sql);
        sql.push(" group by 1");
        let rows: Vec<(OffsetDateTime, i64)> =
            sql.build_query_as().fetch_all(&mut *connection).await?;
        let mut buckets: BTreeMap<i64, i64> = rows
            .into_iter()
            .map(|(at, count)| (unix_micros(at), count))
            .collect();
        // A chunk's level counts answer for it when it lies in one bucket, within the
        // range, and nothing but its levels is asked of its logs.
        let counted_whole = !filter.has_content()
            && filter
                .subjects
                .iter()
                .all(|subject| matches!(subject, Subject::Device(_)));
        // Bounds count in whole microseconds, as PostgreSQL gets them.
        let within = |chunk: &Candidate| {
            filter
                .since
                .is_none_or(|since| unix_micros(chunk.first_at) >= unix_micros(since))
                && filter
                    .until
                    .is_none_or(|until| unix_micros(chunk.last_at) < unix_micros(until))
        };
        let mut after: Option<Candidate> = None;
        let mut pending: Vec<Candidate> = Vec::new();
        loop {
            let batch = chunks::candidates(
                connection,
                filter,
                Order::OldestFirst,
                None,
                after.as_ref(),
                CANDIDATES_PER_QUERY,
            )
            .await?;
            for chunk in &batch {
                let first = bin(unix_micros(chunk.first_at));
                if counted_whole && within(chunk) && first == bin(unix_micros(chunk.last_at)) {
                    *buckets.entry(first).or_default() += level_count(chunk, filter);
                } else {
                    pending.push(chunk.clone());
                }
            }
            let last_batch = (batch.len() as i64) < CANDIDATES_PER_QUERY;
            while pending.len() >= MOST_OPENED || (last_batch && !pending.is_empty()) {
                let group: Vec<Candidate> =
                    pending.drain(..pending.len().min(MOST_OPENED)).collect();
                let refs: Vec<&Candidate> = group.iter().collect();
                for micros in chunks::times(connection, &refs, filter).await? {
                    *buckets.entry(bin(micros)).or_default() += 1;
                }
            }
            if last_batch {
                break;
            }
            after = batch.last().cloned();
        }
        Ok(buckets
            .into_iter()
            .filter(|(_, count)| *count > 0)
            .map(|(micros, count)| {
                let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH);
                (at, count)
            })
            .collect())
    }
}

/// The rows of `logs` of a page: up to `limit` after `cursor`, in `order`.
async fn rows_page(
    connection: &mut PgConnection,
    filter: &Filter,
    order: Order,
    cursor: Option<Cursor>,
    limit: usize,
) -> Result<Vec<StoredLog>, sqlx::Error> {
    let mut sql = QueryBuilder::<Postgres>::new(STORED_LOG_COLUMNS);
    sql.push(" from logs");
    filter.push_rows_where(&mut sql);
    let (comparison, bound, direction) = match order {
        Order::NewestFirst => ("<", "<=", "desc"),
        Order::OldestFirst => (">", ">=", "asc"),
    };
    if let Some((cursor, at)) = cursor.and_then(|cursor| Some((cursor, cursor.at()?))) {
        // The first condition lets the index on created_at bound the scan.
        sql.push(format_args!(" and created_at {bound} "))
            .push_bind(at);
        sql.push(format_args!(" and (created_at, id) {comparison} ("))
            .push_bind(at)
            .push(", ")
            .push_bind(cursor.id)
            .push(")");
    }
    sql.push(format_args!(
        " order by created_at {direction}, id {direction} limit "
    ))
    .push_bind(i64::try_from(limit).unwrap_or(i64::MAX));
    sql.build_query_as().fetch_all(connection).await
}

/// Whether a log at `key` would come before the last of `logs` in `order`.
fn beats(key: (i64, i64), logs: &[StoredLog], order: Order) -> bool {
    logs.last().is_none_or(|last| match order {
        Order::NewestFirst => key > last.key(),
        Order::OldestFirst => key < last.key(),
    })
}

fn sort(logs: &mut [StoredLog], order: Order) {
    match order {
        Order::NewestFirst => logs.sort_unstable_by_key(|log| std::cmp::Reverse(log.key())),
        Order::OldestFirst => logs.sort_unstable_by_key(StoredLog::key),
    }
}

/// Logs of `chunk` at the levels `filter` asks for (all of them when it asks for none).
fn level_count(chunk: &Candidate, filter: &Filter) -> i64 {
    if filter.levels.is_empty() {
        return i64::from(chunk.rows);
    }
    filter
        .levels
        .iter()
        .filter_map(|level| chunk.levels.get(*level as usize))
        .map(|&count| i64::from(count))
        .sum()
}

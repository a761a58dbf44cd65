//! Reading the store as one: the rows of `logs` and the logs of chunks, in one snapshot,
//! so a compaction that commits meanwhile never shows a log twice or hides it.
//!
//! A page reads the rows it wants with one statement. It then opens the chunks that can
//! hold a better log than the worst it keeps, best first, and looks at their logs best
//! first, a batch at a time (PostgreSQL decides each batch's content conditions), until
//! no log left, opened or not, can beat the worst it keeps. Only the logs that end on the
//! page are decoded whole.
//!
//! A histogram counts rows with one statement, counts each chunk that lies in one bucket
//! from its level counts, and opens the others.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use logpipeline_core::codec::unix_micros;
use logpipeline_core::db::Reachability;
use logpipeline_core::record::LogLevel;
use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder, Transaction};
use time::OffsetDateTime;
use tokio_util::task::AbortOnDropHandle;

use super::chunks::{self, BloomCache, Candidate, Opened, ReadError, Score, score};
use super::filter::{Filter, Subject};
use super::page::{Cursor, Order, StoredLog};
use crate::error::Error;

/// The columns of a [`StoredLog`], as a read selects them from `logs`.
const STORED_LOG_COLUMNS: &str = "select id, message_id, device_id, service_name, \
     trace_id, span_id, log_level, message, log_data::text as log_data, created_at";
/// Candidates fetched by a read's first statement, and the most by one: each statement
/// fetches four times as many as the one before (a page often needs few; a search that
/// skips most chunks by their filters reads them all).
const FIRST_CANDIDATES: i64 = 256;
const MOST_CANDIDATES: i64 = 16_384;
/// Most chunks opened together.
const MOST_OPENED: usize = 64;
/// Logs whose content is checked in the first batch, and the most in one.
const FIRST_BATCH: usize = 256;
const MOST_BATCH: usize = 8192;
/// How often a read past its budget is told again to stop.
const STOP_AGAIN_EVERY: Duration = Duration::from_millis(100);
/// The least a statement's backstop adds to its read's budget.
const BACKSTOP_MARGIN: Duration = Duration::from_secs(5);
/// Where `date_bin` counts buckets from: 2000-01-01T00:00:00Z.
const BIN_ORIGIN_SECS: i64 = 946_684_800;

/// The store's read side: the database, and the Bloom filters of the chunks read lately.
#[derive(Clone)]
pub struct Shelf {
    db: PgPool,
    /// Where a read past its budget is stopped from: not `db`, whose connections may
    /// all be in reads.
    control: PgPool,
    blooms: BloomCache,
    reachability: Reachability,
}

impl Shelf {
    /// Reads `db`, keeping about `bloom_cache_bytes` of chunks' Bloom filters in memory;
    /// fails at once while `reachability` says PostgreSQL does not answer.
    pub fn new(db: PgPool, bloom_cache_bytes: u64, reachability: Reachability) -> Self {
        Self {
            control: db.clone(),
            db,
            blooms: chunks::bloom_cache(bloom_cache_bytes),
            reachability,
        }
    }

    /// The same shelf read through the connections of `db` (a pool kept for one kind of
    /// read), sharing its Bloom filters.
    pub fn through(&self, db: PgPool) -> Self {
        Self { db, ..self.clone() }
    }

    /// A snapshot of the store; with `budget`, the read is stopped once it has run that
    /// long (and answered `search_too_broad`), and runs in its own PostgreSQL backend
    /// only, without parallel workers: the search limits then bound the CPU that
    /// searches take, not only their connections.
    pub async fn snapshot(&self, budget: Option<Duration>) -> Result<Snapshot, Error> {
        if !self.reachability.is_up() {
            return Err(Error::DatabaseDown);
        }
        let mut transaction = self.db.begin().await.map_err(|error| match error {
            // The pool waited its whole acquire timeout: busy while PostgreSQL answers.
            sqlx::Error::PoolTimedOut if self.reachability.is_up() => Error::DatabaseBusy,
            sqlx::Error::PoolTimedOut => Error::DatabaseDown,
            error => Error::DatabaseUnavailable(error),
        })?;
        sqlx::query("set transaction isolation level repeatable read, read only")
            .execute(&mut *transaction)
            .await
            .map_err(Error::DatabaseUnavailable)?;
        let mut stopper = None;
        let stopped = Arc::new(AtomicBool::new(false));
        if let Some(budget) = budget {
            let backend: i32 = sqlx::query_scalar(
                "select pg_backend_pid() from set_config('statement_timeout', $1, true) as timeout, \
                 set_config('max_parallel_workers_per_gather', '0', true) as workers",
            )
            .bind(backstop(budget).as_millis().to_string())
            .fetch_one(&mut *transaction)
            .await
            .map_err(Error::DatabaseUnavailable)?;
            stopper = Some(AbortOnDropHandle::new(tokio::spawn(stop_at(
                self.control.clone(),
                backend,
                budget,
                stopped.clone(),
            ))));
        }
        Ok(Snapshot {
            _stopper: stopper,
            stopped,
            transaction,
            blooms: self.blooms.clone(),
            budget,
        })
    }
}

/// How long one statement of a read with `budget` may run if the stop at the budget
/// cannot be sent (PostgreSQL's `statement_timeout`, a backstop).
fn backstop(budget: Duration) -> Duration {
    budget + budget.max(BACKSTOP_MARGIN)
}

/// Stops the statements of `backend` once `budget` has passed, as long as it runs (the
/// snapshot aborts it when it ends): a read of many statements, each within the budget,
/// still ends at it. A cancel finds the backend between statements now and then, where
/// it does nothing, so it is sent again every [`STOP_AGAIN_EVERY`].
async fn stop_at(control: PgPool, backend: i32, budget: Duration, stopped: Arc<AtomicBool>) {
    tokio::time::sleep(budget).await;
    stopped.store(true, Ordering::Relaxed);
    let mut ticks = tokio::time::interval(STOP_AGAIN_EVERY);
    loop {
        ticks.tick().await;
        if let Err(error) = sqlx::query("select pg_cancel_backend($1)")
            .bind(backend)
            .execute(&control)
            .await
        {
            tracing::warn!(%error, backend, "cannot stop a read past its budget");
        }
    }
}

/// A read's snapshot of the store: one `REPEATABLE READ` transaction, and the time
/// budget of the whole read.
pub struct Snapshot {
    _stopper: Option<AbortOnDropHandle<()>>,
    /// Whether the read was told to stop at its budget.
    stopped: Arc<AtomicBool>,
    transaction: Transaction<'static, Postgres>,
    blooms: BloomCache,
    budget: Option<Duration>,
}

/// A log on its way to a page: a row, or a log of an opened chunk.
enum Hit {
    Row(StoredLog),
    Chunk(usize, usize),
}

impl Snapshot {
    /// Ends the snapshot.
    pub async fn end(self) -> Result<(), Error> {
        let Self {
            _stopper: stopper,
            transaction,
            ..
        } = self;
        drop(stopper);
        transaction
            .commit()
            .await
            .map_err(Error::DatabaseUnavailable)
    }

    /// `error` of a statement, as the answer says it.
    fn failed(&self, error: ReadError) -> Error {
        match error {
            ReadError::Database(sqlx::Error::Database(database))
                if database.code().as_deref() == Some("57014") =>
            {
                match self.budget {
                    Some(budget) if self.stopped.load(Ordering::Relaxed) => {
                        Error::SearchTooBroad { budget }
                    }
                    Some(budget) => Error::SearchTooBroad {
                        budget: backstop(budget),
                    },
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
        let connection: &mut PgConnection = &mut self.transaction;
        let mut hits: Vec<(Score, Hit)> = rows_page(connection, filter, order, cursor, limit)
            .await?
            .into_iter()
            .map(|log| (score(order, log.key()), Hit::Row(log)))
            .collect();
        let after_cursor = move |key: (i64, i64)| {
            cursor.is_none_or(|cursor| score(order, key) < score(order, (cursor.micros, cursor.id)))
        };
        let mut waiting: VecDeque<Candidate> = VecDeque::new();
        let mut after: Option<Candidate> = None;
        let mut more_candidates = true;
        let mut candidates_wanted = FIRST_CANDIDATES;
        let mut opened: Vec<Opened> = Vec::new();
        // The next unchecked picked log of each opened chunk, best first.
        let mut frontier: BinaryHeap<(Score, usize, usize)> = BinaryHeap::new();
        let mut batch_size = FIRST_BATCH.max(limit * 2);
        loop {
            // The worst log a full page keeps: nothing at or below it matters.
            let bar: Option<Score> = (hits.len() >= limit).then(|| hits[limit - 1].0);
            if waiting.is_empty() && more_candidates {
                let page = chunks::candidates(
                    connection,
                    &self.blooms,
                    filter,
                    order,
                    cursor,
                    after.as_ref(),
                    candidates_wanted,
                )
                .await?;
                candidates_wanted = (candidates_wanted * 4).min(MOST_CANDIDATES);
                more_candidates = page.after.is_some();
                after = page.after;
                waiting.extend(page.kept);
                continue;
            }
            let next_best = waiting.front().map(|next| next.best(order));
            if let (Some(bar), Some(best)) = (bar, next_best)
                && best <= bar
            {
                // Candidates come best first: none left can make the page.
                waiting.clear();
                more_candidates = false;
                continue;
            }
            // A chunk not opened yet may hold a better log than every unchecked one: open
            // it, with the others that may too.
            let unchecked = frontier.peek().map(|(score, ..)| *score);
            if let Some(best) = next_best
                && unchecked.is_none_or(|unchecked| best >= unchecked)
            {
                let mut group = Vec::new();
                while let Some(next) = waiting.front()
                    && group.len() < MOST_OPENED
                    && unchecked.is_none_or(|unchecked| next.best(order) >= unchecked)
                    && bar.is_none_or(|bar| next.best(order) > bar)
                {
                    group.extend(waiting.pop_front());
                }
                let first = opened.len();
                opened.extend(chunks::open(connection, group, filter, after_cursor).await?);
                for (index, chunk) in opened.iter_mut().enumerate().skip(first) {
                    if order == Order::NewestFirst {
                        chunk.picked.reverse();
                    }
                    if let Some(&log) = chunk.picked.first() {
                        frontier.push((score(order, chunk.keys[log]), index, 0));
                    }
                }
                continue;
            }
            // Check the best unchecked logs, a batch at a time: each is better than any
            // log of a chunk not opened yet.
            let mut batch: Vec<(usize, usize)> = Vec::new();
            while batch.len() < batch_size
                && let Some(&(best, chunk, position)) = frontier.peek()
                && bar.is_none_or(|bar| best > bar)
                && next_best.is_none_or(|next| best >= next)
            {
                frontier.pop();
                batch.push((chunk, opened[chunk].picked[position]));
                if let Some(&next) = opened[chunk].picked.get(position + 1) {
                    frontier.push((score(order, opened[chunk].keys[next]), chunk, position + 1));
                }
            }
            if batch.is_empty() {
                break;
            }
            let pass = chunks::decide_content(connection, filter, &mut opened, &batch).await?;
            for ((chunk, log), passed) in batch.into_iter().zip(pass) {
                if passed {
                    hits.push((
                        score(order, opened[chunk].keys[log]),
                        Hit::Chunk(chunk, log),
                    ));
                }
            }
            hits.sort_unstable_by_key(|(score, _)| Reverse(*score));
            hits.truncate(limit);
            batch_size = (batch_size * 2).min(MOST_BATCH);
        }
        let wanted: Vec<(usize, usize)> = hits
            .iter()
            .filter_map(|(_, hit)| match hit {
                Hit::Chunk(chunk, log) => Some((*chunk, *log)),
                Hit::Row(_) => None,
            })
            .collect();
        let mut from_chunks = chunks::logs(&mut opened, &wanted)?.into_iter();
        Ok(hits
            .into_iter()
            .filter_map(|(_, hit)| match hit {
                Hit::Row(log) => Some(log),
                Hit::Chunk(..) => from_chunks.next(),
            })
            .collect())
    }

    /// How many logs `filter` picks per bucket of `stride_secs` seconds and per level, by
    /// the start of each bucket that holds any, oldest first.
    pub async fn histogram(
        &mut self,
        filter: &Filter,
        stride_secs: i64,
    ) -> Result<Vec<(OffsetDateTime, BTreeMap<String, i64>)>, Error> {
        match self.read_histogram(filter, stride_secs).await {
            Ok(buckets) => Ok(buckets),
            Err(error) => Err(self.failed(error)),
        }
    }

    async fn read_histogram(
        &mut self,
        filter: &Filter,
        stride_secs: i64,
    ) -> Result<Vec<(OffsetDateTime, BTreeMap<String, i64>)>, ReadError> {
        let connection: &mut PgConnection = &mut self.transaction;
        let stride = stride_secs * 1_000_000;
        let bin = |micros: i64| {
            let origin = BIN_ORIGIN_SECS * 1_000_000;
            origin + (micros - origin).div_euclid(stride) * stride
        };
        let mut sql = QueryBuilder::<Postgres>::new(format!(
            "select date_bin('{stride_secs} seconds', created_at, timestamptz '2000-01-01') as at, \
             log_level::text, count(*) as count from logs"
        ));
        filter.push_rows_where(&mut sql);
        sql.push(" group by 1, 2");
        let rows: Vec<(OffsetDateTime, String, i64)> =
            sql.build_query_as().fetch_all(&mut *connection).await?;
        let mut buckets: BTreeMap<i64, BTreeMap<String, i64>> = BTreeMap::new();
        for (at, level, count) in rows {
            *buckets
                .entry(unix_micros(at))
                .or_default()
                .entry(level)
                .or_default() += count;
        }
        // A chunk's level counts answer for it when it lies in one bucket, within the
        // range, all its levels are of the five, and nothing but its levels is asked of
        // its logs.
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
        let mut candidates_wanted = FIRST_CANDIDATES;
        loop {
            let page = chunks::candidates(
                connection,
                &self.blooms,
                filter,
                Order::OldestFirst,
                None,
                after.as_ref(),
                candidates_wanted,
            )
            .await?;
            candidates_wanted = (candidates_wanted * 4).min(MOST_CANDIDATES);
            for chunk in page.kept {
                let first = bin(unix_micros(chunk.first_at));
                let known_levels = chunk
                    .levels
                    .get(LogLevel::ALL.len())
                    .is_none_or(|&n| n == 0);
                if counted_whole
                    && known_levels
                    && within(&chunk)
                    && first == bin(unix_micros(chunk.last_at))
                {
                    let bucket = buckets.entry(first).or_default();
                    for (level, count) in level_counts(&chunk, filter) {
                        *bucket.entry(level.as_str().to_owned()).or_default() += count;
                    }
                } else {
                    pending.push(chunk);
                }
            }
            let last_page = page.after.is_none();
            while pending.len() >= MOST_OPENED || (last_page && !pending.is_empty()) {
                let group: Vec<Candidate> =
                    pending.drain(..pending.len().min(MOST_OPENED)).collect();
                let mut opened = chunks::open(connection, group, filter, |_| true).await?;
                let logs: Vec<(usize, usize)> = opened
                    .iter()
                    .enumerate()
                    .flat_map(|(chunk, opened)| opened.picked.iter().map(move |&log| (chunk, log)))
                    .collect();
                let pass = chunks::decide_content(connection, filter, &mut opened, &logs).await?;
                for ((chunk, log), passed) in logs.into_iter().zip(pass) {
                    if passed {
                        let opened = &opened[chunk];
                        *buckets
                            .entry(bin(opened.keys[log].0))
                            .or_default()
                            .entry(opened.level(log).to_owned())
                            .or_default() += 1;
                    }
                }
            }
            if last_page {
                break;
            }
            after = page.after;
        }
        Ok(buckets
            .into_iter()
            .map(|(micros, mut levels)| {
                levels.retain(|_, count| *count > 0);
                let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
                    .unwrap_or(OffsetDateTime::UNIX_EPOCH);
                (at, levels)
            })
            .filter(|(_, levels)| !levels.is_empty())
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

/// Logs of `chunk` per level of the five that `filter` asks for (all of them when it
/// asks for none).
fn level_counts(chunk: &Candidate, filter: &Filter) -> Vec<(LogLevel, i64)> {
    LogLevel::ALL
        .into_iter()
        .filter(|level| filter.levels.is_empty() || filter.levels.contains(level))
        .map(|level| {
            let count = chunk.levels.get(level as usize).copied().unwrap_or(0);
            (level, i64::from(count))
        })
        .collect()
}

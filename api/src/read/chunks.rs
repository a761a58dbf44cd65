//! The logs of chunks, for reads: which chunks can hold what a read asks for (their index:
//! the header in PostgreSQL, the Bloom filters tested here from a cache), and the logs of
//! those chunks that it picks (their blocks, decoded here, each column only when needed).
//! Conditions on the message and `log_data` are decided by PostgreSQL, on the candidate
//! logs sent back as arrays, with the very `WHERE` a row gets: a log reads the same from
//! a row and from a chunk (docs/storage.md, "How reads use chunks").

use std::collections::HashMap;
use std::sync::Arc;

use logpipeline_core::chunk::ChunkError;
use logpipeline_core::chunk::block::{Block, Column, Level, MessageIds, Texts};
use logpipeline_core::chunk::bloom;
use sqlx::{PgConnection, Postgres, QueryBuilder};
use time::OffsetDateTime;

use super::filter::{ChunkTokens, Filter, Subject};
use super::page::{Cursor, JsonText, Order, StoredLog};

/// A chunk's Bloom filters, as cached.
#[derive(Debug)]
pub struct Blooms {
    grams: Vec<u8>,
    fields: Vec<u8>,
}

/// The Bloom filters of the chunks read lately, by chunk id. A chunk never changes (a
/// merge writes new ones under new ids), so a cached filter is never stale.
pub type BloomCache = moka::sync::Cache<i64, Arc<Blooms>>;

/// A cache of Bloom filters that holds about `bytes` of them.
pub fn bloom_cache(bytes: u64) -> BloomCache {
    moka::sync::Cache::builder()
        .weigher(|_, blooms: &Arc<Blooms>| {
            u32::try_from(blooms.grams.len() + blooms.fields.len() + 64).unwrap_or(u32::MAX)
        })
        .max_capacity(bytes)
        .build()
}

/// A chunk that may hold logs a read wants.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Candidate {
    /// Its id.
    pub id: i64,
    /// Its device.
    pub device_id: String,
    /// (`created_at`, `id`) of its first log.
    pub first_at: OffsetDateTime,
    pub first_key: i64,
    /// (`created_at`, `id`) of its last log.
    pub last_at: OffsetDateTime,
    pub last_key: i64,
    /// Logs per level: DEBUG, INFO, WARNING, ERROR, CRITICAL, any other.
    pub levels: Vec<i32>,
}

impl Candidate {
    /// The best place in `order` a log of it can have.
    pub fn best(&self, order: Order) -> Score {
        match order {
            Order::NewestFirst => score(order, (micros(self.last_at), self.last_key)),
            Order::OldestFirst => score(order, (micros(self.first_at), self.first_key)),
        }
    }
}

/// A log's place in a page's order: the greater comes first.
pub type Score = (i64, i64);

/// The score of the log at (`created_at` µs, `id`) in `order`.
pub fn score(order: Order, key: (i64, i64)) -> Score {
    match order {
        Order::NewestFirst => key,
        // Bitwise not reverses the order of an i64 and never overflows.
        Order::OldestFirst => (!key.0, !key.1),
    }
}

fn micros(at: OffsetDateTime) -> i64 {
    logpipeline_core::codec::unix_micros(at)
}

fn time(micros: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Why reading chunks failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// PostgreSQL failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A block is corrupt.
    #[error(transparent)]
    Chunk(#[from] ChunkError),
}

/// A page of candidates: those whose filters may hold the read's tokens, and the last one
/// looked at (where the next page goes on), if the page was full.
pub struct Candidates {
    /// The candidates kept, in order.
    pub kept: Vec<Candidate>,
    /// Where the next page starts, if there may be one.
    pub after: Option<Candidate>,
}

/// Up to `limit` chunks that can hold logs `filter` picks, in `order` of their best log,
/// after `cursor` (logs past it) and after candidate `after` (the last of the previous
/// page); those whose Bloom filters lack a token of `filter` are dropped.
pub async fn candidates(
    connection: &mut PgConnection,
    blooms: &BloomCache,
    filter: &Filter,
    order: Order,
    cursor: Option<Cursor>,
    after: Option<&Candidate>,
    limit: i64,
) -> Result<Candidates, sqlx::Error> {
    let mut sql = QueryBuilder::<Postgres>::new(
        "select c.id, c.device_id::text as device_id, c.first_at, c.first_key, c.last_at, \
         c.last_key, c.levels from log_chunks c where true",
    );
    filter.push_chunk_conditions(&mut sql);
    if let Some((cursor, at)) = cursor.and_then(|cursor| Some((cursor, cursor.at()?))) {
        let (bound, comparison) = match order {
            Order::NewestFirst => ("(c.first_at, c.first_key)", "<"),
            Order::OldestFirst => ("(c.last_at, c.last_key)", ">"),
        };
        sql.push(format_args!(" and {bound} {comparison} ("))
            .push_bind(at)
            .push(", ")
            .push_bind(cursor.id)
            .push(")");
    }
    let (key, comparison, direction) = match order {
        Order::NewestFirst => ("c.last_at, c.last_key, c.id", "<", "desc"),
        Order::OldestFirst => ("c.first_at, c.first_key, c.id", ">", "asc"),
    };
    if let Some(after) = after {
        let (at, last) = match order {
            Order::NewestFirst => (after.last_at, after.last_key),
            Order::OldestFirst => (after.first_at, after.first_key),
        };
        sql.push(format_args!(" and ({key}) {comparison} ("))
            .push_bind(at)
            .push(", ")
            .push_bind(last)
            .push(", ")
            .push_bind(after.id)
            .push(")");
    }
    sql.push(format_args!(
        " order by {} limit ",
        key.split(", ")
            .map(|column| format!("{column} {direction}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .push_bind(limit);
    let found: Vec<Candidate> = sql.build_query_as().fetch_all(&mut *connection).await?;
    let after = (found.len() as i64 >= limit)
        .then(|| found.last().cloned())
        .flatten();
    let tokens = filter.chunk_tokens();
    if tokens.is_empty() {
        return Ok(Candidates { kept: found, after });
    }
    let missing: Vec<&Candidate> = found
        .iter()
        .filter(|chunk| !blooms.contains_key(&chunk.id))
        .collect();
    if !missing.is_empty() {
        let firsts: Vec<OffsetDateTime> = missing.iter().map(|chunk| chunk.first_at).collect();
        let ids: Vec<i64> = missing.iter().map(|chunk| chunk.id).collect();
        let rows: Vec<(i64, Vec<u8>, Vec<u8>)> = sqlx::query_as(
            "select id, grams, fields from log_chunks \
             where (first_at, id) in (select * from unnest($1::timestamptz[], $2::bigint[]))",
        )
        .bind(firsts)
        .bind(ids)
        .fetch_all(&mut *connection)
        .await?;
        for (id, grams, fields) in rows {
            blooms.insert(id, Arc::new(Blooms { grams, fields }));
        }
    }
    let kept = found
        .into_iter()
        .filter(|chunk| {
            // A chunk whose filters could not be read (gone since) is kept: its block
            // says what it holds, if it is still there.
            blooms
                .get(&chunk.id)
                .is_none_or(|filters| may_hold(&filters, &tokens))
        })
        .collect();
    Ok(Candidates { kept, after })
}

/// Whether `blooms` may hold every token of `tokens`.
fn may_hold(blooms: &Blooms, tokens: &ChunkTokens) -> bool {
    tokens
        .grams
        .iter()
        .all(|&hashes| bloom::may_hold(&blooms.grams, hashes))
        && tokens.fields.iter().all(|any| {
            any.iter()
                .any(|&hashes| bloom::may_hold(&blooms.fields, hashes))
        })
}

/// An opened chunk: its block, where each log falls in time, which pass the conditions
/// decided here, and the columns decoded so far.
pub struct Opened {
    /// The chunk.
    pub chunk: Candidate,
    block: Vec<u8>,
    /// (`created_at` µs, `id`) of every log.
    pub keys: Vec<(i64, i64)>,
    /// The logs that pass the conditions other than content, in order.
    pub picked: Vec<usize>,
    levels: Vec<Level>,
    texts: HashMap<usize, Texts>,
    message_ids: Option<MessageIds>,
}

impl Opened {
    /// Log `index`'s level.
    pub fn level(&self, index: usize) -> &str {
        self.levels[index].as_str()
    }

    /// Text column `column`, decoded on first use.
    fn texts(&mut self, column: Column) -> Result<&Texts, ChunkError> {
        let slot = column as usize;
        if !self.texts.contains_key(&slot) {
            let texts = Block::parse(&self.block)?.texts(column)?;
            self.texts.insert(slot, texts);
        }
        self.texts
            .get(&slot)
            .ok_or(ChunkError::Corrupt("a column that did not decode"))
    }

    /// Log `index`, whole.
    fn log(&mut self, index: usize) -> Result<StoredLog, ChunkError> {
        let (at, id) = self.keys[index];
        if self.message_ids.is_none() {
            self.message_ids = Some(Block::parse(&self.block)?.message_id_column()?);
        }
        let message_id = match &self.message_ids {
            Some(ids) => ids.get(index, id)?,
            None => None,
        };
        let text = |opened: &mut Self, column| -> Result<Option<String>, ChunkError> {
            Ok(opened.texts(column)?.get(index)?.map(str::to_owned))
        };
        let log_data = text(self, Column::LogData)?;
        Ok(StoredLog {
            id,
            message_id,
            device_id: self.chunk.device_id.clone(),
            service_name: text(self, Column::ServiceName)?,
            trace_id: text(self, Column::TraceId)?,
            span_id: text(self, Column::SpanId)?,
            log_level: self.levels[index].as_str().to_owned(),
            message: text(self, Column::Message)?,
            log_data: JsonText::try_from(log_data)
                .map_err(|_| ChunkError::Corrupt("log_data that is not JSON"))?,
            created_at: Some(time(at)),
        })
    }
}

/// Opens `chunks`: fetches their blocks in one statement, and picks the logs that pass
/// `filter`'s conditions other than content, and `keep` (which sees each log's place in
/// time order). A chunk gone since (merged) is left out: its logs are in the chunks that
/// replaced it, which are candidates too.
pub async fn open(
    connection: &mut PgConnection,
    chunks: Vec<Candidate>,
    filter: &Filter,
    keep: impl Fn((i64, i64)) -> bool,
) -> Result<Vec<Opened>, ReadError> {
    let firsts: Vec<OffsetDateTime> = chunks.iter().map(|chunk| chunk.first_at).collect();
    let ids: Vec<i64> = chunks.iter().map(|chunk| chunk.id).collect();
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "select id, block from log_chunks \
         where (first_at, id) in (select * from unnest($1::timestamptz[], $2::bigint[]))",
    )
    .bind(firsts)
    .bind(ids)
    .fetch_all(connection)
    .await?;
    let mut blocks: HashMap<i64, Vec<u8>> = rows.into_iter().collect();
    let mut opened = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        let Some(block) = blocks.remove(&chunk.id) else {
            continue;
        };
        let parsed = Block::parse(&block)?;
        let keys: Vec<(i64, i64)> = parsed
            .created_at()?
            .into_iter()
            .zip(parsed.ids()?)
            .collect();
        let levels = parsed.levels()?;
        let mut texts = HashMap::new();
        for (subject, column) in [
            (
                filter
                    .subjects
                    .iter()
                    .any(|s| matches!(s, Subject::Service(_))),
                Column::ServiceName,
            ),
            (
                filter
                    .subjects
                    .iter()
                    .any(|s| matches!(s, Subject::Trace(_))),
                Column::TraceId,
            ),
        ] {
            if subject {
                texts.insert(column as usize, parsed.texts(column)?);
            }
        }
        let value = |column: Column, index: usize| -> Result<Option<&str>, ChunkError> {
            match texts.get(&(column as usize)) {
                Some(texts) => texts.get(index),
                None => Ok(None),
            }
        };
        let mut picked = Vec::new();
        for (index, &key) in keys.iter().enumerate() {
            if keep(key)
                && filter.admits(
                    &chunk.device_id,
                    levels[index].as_str(),
                    value(Column::ServiceName, index)?,
                    value(Column::TraceId, index)?,
                    key.0,
                )
            {
                picked.push(index);
            }
        }
        opened.push(Opened {
            chunk,
            block,
            keys,
            picked,
            levels,
            texts,
            message_ids: None,
        });
    }
    Ok(opened)
}

/// Which of `logs` (an opened chunk's place in `opened`, a log's place in it) pass
/// `filter`'s conditions on the message and `log_data`, as PostgreSQL decides them: one
/// statement for all of them. All pass when it has no such condition.
pub async fn decide_content(
    connection: &mut PgConnection,
    filter: &Filter,
    opened: &mut [Opened],
    logs: &[(usize, usize)],
) -> Result<Vec<bool>, ReadError> {
    if !filter.has_content() || logs.is_empty() {
        return Ok(vec![true; logs.len()]);
    }
    let (want_messages, want_data) = (!filter.terms.is_empty(), !filter.fields.is_empty());
    let mut messages: Vec<Option<String>> = Vec::new();
    let mut data: Vec<Option<String>> = Vec::new();
    for &(chunk, index) in logs {
        let chunk = &mut opened[chunk];
        if want_messages {
            messages.push(chunk.texts(Column::Message)?.get(index)?.map(str::to_owned));
        }
        if want_data {
            data.push(chunk.texts(Column::LogData)?.get(index)?.map(str::to_owned));
        }
    }
    let mut sql = QueryBuilder::<Postgres>::new("select r.n from unnest(");
    match (want_messages, want_data) {
        (true, true) => sql
            .push_bind(messages)
            .push("::text[], ")
            .push_bind(data)
            .push("::text[]) with ordinality as r(message, log_data_text, n)"),
        (true, false) => sql
            .push_bind(messages)
            .push("::text[]) with ordinality as r(message, n)"),
        _ => sql
            .push_bind(data)
            .push("::text[]) with ordinality as r(log_data_text, n)"),
    };
    if want_data {
        sql.push(" cross join lateral (select r.log_data_text::jsonb as log_data) j");
    }
    sql.push(" where true");
    filter.push_content(&mut sql);
    let matching: Vec<i64> = sql.build_query_scalar().fetch_all(connection).await?;
    let mut pass = vec![false; logs.len()];
    for ordinal in matching {
        // Ordinals count from 1.
        if let Some(slot) = usize::try_from(ordinal - 1)
            .ok()
            .and_then(|index| pass.get_mut(index))
        {
            *slot = true;
        }
    }
    Ok(pass)
}

/// The whole logs `logs` of `opened` (an opened chunk's place, a log's place in it).
pub fn logs(opened: &mut [Opened], logs: &[(usize, usize)]) -> Result<Vec<StoredLog>, ReadError> {
    logs.iter()
        .map(|&(chunk, index)| Ok(opened[chunk].log(index)?))
        .collect()
}

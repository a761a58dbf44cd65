//! The logs of chunks, for reads: which chunks can hold what a read asks for (their
//! index, in PostgreSQL), and the logs of those chunks that it picks (their blocks,
//! decoded here). Conditions on the message and `log_data` are decided by PostgreSQL, on
//! the candidate logs sent back as arrays, with the very `WHERE` a row gets: a log reads
//! the same from a row and from a chunk (docs/storage.md, "How reads use chunks").

use std::collections::HashMap;

use logpipeline_core::chunk::ChunkError;
use logpipeline_core::chunk::block::{Block, Column};
use sqlx::{PgConnection, Postgres, QueryBuilder};
use time::OffsetDateTime;

use super::filter::{Filter, Subject};
use super::page::{Cursor, JsonText, Order, StoredLog};

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
    /// Logs in it.
    pub rows: i32,
    /// Logs per level: DEBUG, INFO, WARNING, ERROR, CRITICAL, any other.
    pub levels: Vec<i32>,
}

impl Candidate {
    /// The best place in `order` a log of it can have, as (`created_at` µs, `id`).
    pub fn best(&self, order: Order) -> (i64, i64) {
        match order {
            Order::NewestFirst => (micros(self.last_at), self.last_key),
            Order::OldestFirst => (micros(self.first_at), self.first_key),
        }
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

/// Up to `limit` chunks that can hold logs `filter` picks, in `order` of their best log,
/// after `cursor` (logs past it) and after candidate `after` (the last of the previous
/// call).
pub async fn candidates(
    connection: &mut PgConnection,
    filter: &Filter,
    order: Order,
    cursor: Option<Cursor>,
    after: Option<&Candidate>,
    limit: i64,
) -> Result<Vec<Candidate>, sqlx::Error> {
    let mut sql = QueryBuilder::<Postgres>::new(
        "select c.id, c.device_id::text as device_id, c.first_at, c.first_key, c.last_at, c.last_key, \
         c.rows, c.levels from log_chunks c where true",
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
    sql.build_query_as().fetch_all(connection).await
}

/// The blocks of `chunks`, by chunk id.
async fn blocks(
    connection: &mut PgConnection,
    chunks: &[&Candidate],
) -> Result<HashMap<i64, Vec<u8>>, sqlx::Error> {
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
    Ok(rows.into_iter().collect())
}

/// The logs of one opened chunk that pass the conditions decided here, by their place in
/// it, with what is needed to decide the rest.
struct Opened<'a> {
    chunk: &'a Candidate,
    block: Vec<u8>,
    /// (`created_at` µs, `id`) of every log.
    keys: Vec<(i64, i64)>,
    /// The places of the logs that pass so far.
    picked: Vec<usize>,
}

/// Which of the logs of a chunk pass `filter`'s conditions other than content, and
/// `keep` (which sees each log's place in time order).
fn open<'a>(
    chunk: &'a Candidate,
    block: Vec<u8>,
    filter: &Filter,
    keep: &impl Fn((i64, i64)) -> bool,
) -> Result<Opened<'a>, ChunkError> {
    let parsed = Block::parse(&block)?;
    let times = parsed.created_at()?;
    let ids = parsed.ids()?;
    let levels = parsed.levels()?;
    let wants = |subject: fn(&Subject) -> bool| filter.subjects.iter().any(subject);
    let services = if wants(|s| matches!(s, Subject::Service(_))) {
        Some(parsed.texts(Column::ServiceName)?)
    } else {
        None
    };
    let traces = if wants(|s| matches!(s, Subject::Trace(_))) {
        Some(parsed.texts(Column::TraceId)?)
    } else {
        None
    };
    let keys: Vec<(i64, i64)> = times.iter().copied().zip(ids).collect();
    let picked = (0..keys.len())
        .filter(|&index| {
            keep(keys[index])
                && filter.admits(
                    &chunk.device_id,
                    levels[index].as_str(),
                    services.as_ref().and_then(|s| s[index].as_deref()),
                    traces.as_ref().and_then(|t| t[index].as_deref()),
                    keys[index].0,
                )
        })
        .collect();
    Ok(Opened {
        chunk,
        block,
        keys,
        picked,
    })
}

/// Keeps of every chunk's picked logs those that pass `filter`'s conditions on the
/// message and `log_data`, as PostgreSQL decides them: one statement for all of them.
async fn decide_content(
    connection: &mut PgConnection,
    filter: &Filter,
    opened: &mut [Opened<'_>],
) -> Result<(), ReadError> {
    if !filter.has_content() || opened.iter().all(|chunk| chunk.picked.is_empty()) {
        return Ok(());
    }
    let (want_messages, want_data) = (!filter.terms.is_empty(), !filter.fields.is_empty());
    let mut messages: Vec<Option<String>> = Vec::new();
    let mut data: Vec<Option<String>> = Vec::new();
    for chunk in opened.iter() {
        if chunk.picked.is_empty() {
            continue;
        }
        let block = Block::parse(&chunk.block)?;
        for (wanted, column, into) in [
            (want_messages, Column::Message, &mut messages),
            (want_data, Column::LogData, &mut data),
        ] {
            if wanted {
                let mut values = block.texts(column)?;
                into.extend(chunk.picked.iter().map(|&index| values[index].take()));
            }
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
    let total: usize = opened.iter().map(|chunk| chunk.picked.len()).sum();
    let mut keep = vec![false; total];
    for ordinal in matching {
        // Ordinals count from 1.
        if let Some(slot) = usize::try_from(ordinal - 1)
            .ok()
            .and_then(|i| keep.get_mut(i))
        {
            *slot = true;
        }
    }
    let mut next = 0;
    for chunk in opened.iter_mut() {
        let picked = std::mem::take(&mut chunk.picked);
        for index in picked {
            if keep[next] {
                chunk.picked.push(index);
            }
            next += 1;
        }
    }
    Ok(())
}

/// The logs of `chunks` that `filter` picks and `keep` keeps, each whole.
pub async fn logs(
    connection: &mut PgConnection,
    chunks: &[&Candidate],
    filter: &Filter,
    keep: impl Fn((i64, i64)) -> bool,
) -> Result<Vec<StoredLog>, ReadError> {
    let mut blocks = blocks(&mut *connection, chunks).await?;
    let mut opened = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        let Some(block) = blocks.remove(&chunk.id) else {
            continue;
        };
        opened.push(open(chunk, block, filter, &keep)?);
    }
    decide_content(connection, filter, &mut opened).await?;
    let mut logs = Vec::new();
    for chunk in opened.into_iter().filter(|chunk| !chunk.picked.is_empty()) {
        let block = Block::parse(&chunk.block)?;
        let rows = block.rows_all()?;
        for index in chunk.picked {
            let row = &rows[index];
            logs.push(StoredLog {
                id: row.id,
                message_id: row.message_id.clone(),
                device_id: chunk.chunk.device_id.clone(),
                service_name: row.service_name.clone(),
                trace_id: row.trace_id.clone(),
                span_id: row.span_id.clone(),
                log_level: row.log_level.clone(),
                message: row.message.clone(),
                log_data: JsonText::try_from(row.log_data.clone())
                    .map_err(|_| ChunkError::Corrupt("log_data that is not JSON"))?,
                created_at: Some(time(chunk.keys[index].0)),
            });
        }
    }
    Ok(logs)
}

/// The times of the logs of `chunks` that `filter` picks, in µs.
pub async fn times(
    connection: &mut PgConnection,
    chunks: &[&Candidate],
    filter: &Filter,
) -> Result<Vec<i64>, ReadError> {
    let mut blocks = blocks(&mut *connection, chunks).await?;
    let mut opened = Vec::with_capacity(chunks.len());
    for chunk in chunks {
        let Some(block) = blocks.remove(&chunk.id) else {
            continue;
        };
        opened.push(open(chunk, block, filter, &|_| true)?);
    }
    decide_content(connection, filter, &mut opened).await?;
    Ok(opened
        .iter()
        .flat_map(|chunk| chunk.picked.iter().map(|&index| chunk.keys[index].0))
        .collect())
}

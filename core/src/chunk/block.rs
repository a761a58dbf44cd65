//! A chunk's block: its logs as nine columns, each encoded and compressed with zstd on its
//! own (docs/storage.md, "The block").

use crate::codec;
use crate::record::LogLevel;

use super::{ChunkError, ChunkRow};

/// The block's first bytes: the format and its version.
const MAGIC: &[u8; 4] = b"LPC1";
/// Columns of a block, in their order.
const COLUMNS: usize = 9;
/// zstd's level for blocks: its default, a good ratio at some 300 MB/s on one core.
const LEVEL: i32 = 3;

/// A block's columns, by their place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Column {
    CreatedAt = 0,
    Id = 1,
    MessageId = 2,
    Level = 3,
    Message = 4,
    LogData = 5,
    ServiceName = 6,
    TraceId = 7,
    SpanId = 8,
}

/// Kinds of a `message_id` (column 3).
const ID_ENTRY: u8 = 0;
const ID_ENTRY_INDEX: u8 = 1;
const ID_NULL: u8 = 2;
const ID_LITERAL: u8 = 3;
/// The level code of a level that is none of the five.
const LEVEL_LITERAL: u8 = 5;

/// `rows`, in `(created_at, id)` order, as a block.
pub fn encode(rows: &[ChunkRow]) -> Result<Vec<u8>, ChunkError> {
    let count = u32::try_from(rows.len()).map_err(|_| ChunkError::TooLarge)?;
    let columns: [Vec<u8>; COLUMNS] = [
        integers(rows.iter().map(|row| row.created_at)),
        integers(rows.iter().map(|row| row.id)),
        message_ids(rows),
        levels(rows),
        texts(rows.iter().map(|row| row.message.as_deref())),
        texts(rows.iter().map(|row| row.log_data.as_deref())),
        texts(rows.iter().map(|row| row.service_name.as_deref())),
        texts(rows.iter().map(|row| row.trace_id.as_deref())),
        texts(rows.iter().map(|row| row.span_id.as_deref())),
    ];
    let mut frames = Vec::with_capacity(COLUMNS);
    for column in &columns {
        frames.push(zstd::bulk::compress(column, LEVEL).map_err(ChunkError::Compress)?);
    }
    let mut block =
        Vec::with_capacity(8 + 4 * COLUMNS + frames.iter().map(Vec::len).sum::<usize>());
    block.extend_from_slice(MAGIC);
    block.extend_from_slice(&count.to_le_bytes());
    for frame in &frames {
        let length = u32::try_from(frame.len()).map_err(|_| ChunkError::TooLarge)?;
        block.extend_from_slice(&length.to_le_bytes());
    }
    for frame in frames {
        block.extend_from_slice(&frame);
    }
    Ok(block)
}

/// A block's columns, found but not yet decompressed.
#[derive(Debug, Clone, Copy)]
pub struct Block<'a> {
    rows: usize,
    frames: [&'a [u8]; COLUMNS],
}

impl<'a> Block<'a> {
    /// The block in `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ChunkError> {
        let mut reader = Reader::new(bytes);
        if reader.take(4)? != MAGIC {
            return Err(ChunkError::Corrupt("not a block of this format"));
        }
        let rows = reader.u32()? as usize;
        let mut lengths = [0usize; COLUMNS];
        for length in &mut lengths {
            *length = reader.u32()? as usize;
        }
        let mut frames = [&bytes[..0]; COLUMNS];
        for (frame, length) in frames.iter_mut().zip(lengths) {
            *frame = reader.take(length)?;
        }
        if !reader.rest().is_empty() {
            return Err(ChunkError::Corrupt("bytes after the last column"));
        }
        Ok(Self { rows, frames })
    }

    /// Logs in the block.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Column `column`, decompressed.
    fn column(&self, column: Column) -> Result<Vec<u8>, ChunkError> {
        let frame = self.frames[column as usize];
        // Every frame says its size; no column of a block that PostgreSQL holds (1 GB at
        // most) decompresses to more than 1 GiB.
        let size = zstd::zstd_safe::get_frame_content_size(frame)
            .ok()
            .flatten()
            .filter(|&size| size <= 1 << 30)
            .ok_or(ChunkError::Corrupt("a column of no or too large a size"))?;
        zstd::bulk::decompress(frame, size as usize).map_err(ChunkError::Decompress)
    }

    /// `created_at` of each log, in µs since the epoch.
    pub fn created_at(&self) -> Result<Vec<i64>, ChunkError> {
        decode_integers(&self.column(Column::CreatedAt)?, self.rows)
    }

    /// `id` of each log.
    pub fn ids(&self) -> Result<Vec<i64>, ChunkError> {
        decode_integers(&self.column(Column::Id)?, self.rows)
    }

    /// `message_id` of each log, given their `ids`.
    pub fn message_ids(&self, ids: &[i64]) -> Result<Vec<Option<String>>, ChunkError> {
        let column = self.message_id_column()?;
        (0..self.rows)
            .map(|index| column.get(index, ids.get(index).copied().unwrap_or_default()))
            .collect()
    }

    /// The `message_id` column, decompressed once; each log's id is made from it and the
    /// log's `id` on demand.
    pub fn message_id_column(&self) -> Result<MessageIds, ChunkError> {
        let bytes = self.column(Column::MessageId)?;
        let mut reader = Reader::new(&bytes);
        reader.take(self.rows)?;
        let mut literals = Vec::new();
        for &kind in &bytes[..self.rows] {
            literals.push(match kind {
                ID_ENTRY | ID_ENTRY_INDEX | ID_NULL => None,
                ID_LITERAL => {
                    let length = usize::try_from(reader.varint()?)
                        .map_err(|_| ChunkError::Corrupt("a text too long"))?;
                    let start = bytes.len() - reader.rest().len();
                    utf8(reader.take(length)?)?;
                    Some((start, start + length))
                }
                _ => return Err(ChunkError::Corrupt("an unknown message_id kind")),
            });
        }
        reader.finish()?;
        Ok(MessageIds { bytes, literals })
    }

    /// `log_level` of each log.
    pub fn levels(&self) -> Result<Vec<Level>, ChunkError> {
        let bytes = self.column(Column::Level)?;
        let mut reader = Reader::new(&bytes);
        let codes = reader.take(self.rows)?.to_vec();
        let mut values = Vec::with_capacity(self.rows);
        for code in codes {
            values.push(match LogLevel::ALL.get(usize::from(code)) {
                Some(&level) => Level::Known(level),
                None if code == LEVEL_LITERAL => Level::Other(reader.text()?.to_owned()),
                None => return Err(ChunkError::Corrupt("an unknown level code")),
            });
        }
        reader.finish()?;
        Ok(values)
    }

    /// Text column `column` (message, log_data, service, trace or span), decompressed
    /// once; each log's value is read from it without a copy.
    pub fn texts(&self, column: Column) -> Result<Texts, ChunkError> {
        if !matches!(
            column,
            Column::Message
                | Column::LogData
                | Column::ServiceName
                | Column::TraceId
                | Column::SpanId
        ) {
            return Err(ChunkError::Corrupt("not a text column"));
        }
        let bytes = self.column(column)?;
        let mut reader = Reader::new(&bytes);
        let mut lengths = Vec::with_capacity(self.rows);
        for _ in 0..self.rows {
            lengths.push(reader.varint()?);
        }
        let mut start = bytes.len() - reader.rest().len();
        let mut spans = Vec::with_capacity(self.rows);
        for length in lengths {
            spans.push(match length {
                0 => None,
                length => {
                    let length = usize::try_from(length - 1)
                        .map_err(|_| ChunkError::Corrupt("a text too long"))?;
                    reader.take(length)?;
                    let span = (start, start + length);
                    start += length;
                    Some(span)
                }
            });
        }
        reader.finish()?;
        Ok(Texts { bytes, spans })
    }

    /// Every column of every log.
    pub fn rows_all(&self) -> Result<Vec<ChunkRow>, ChunkError> {
        let created_at = self.created_at()?;
        let ids = self.ids()?;
        let message_ids = self.message_ids(&ids)?;
        let levels = self.levels()?;
        let columns = [
            Column::Message,
            Column::LogData,
            Column::ServiceName,
            Column::TraceId,
            Column::SpanId,
        ]
        .map(|column| self.texts(column));
        let [messages, log_data, services, traces, spans] = columns;
        let (messages, log_data, services, traces, spans) =
            (messages?, log_data?, services?, traces?, spans?);
        let owned = |texts: &Texts, index: usize| -> Result<Option<String>, ChunkError> {
            Ok(texts.get(index)?.map(str::to_owned))
        };
        let mut rows = Vec::with_capacity(self.rows);
        for (index, ((at, id), (message_id, level))) in created_at
            .into_iter()
            .zip(ids)
            .zip(message_ids.into_iter().zip(levels))
            .enumerate()
        {
            rows.push(ChunkRow {
                id,
                message_id,
                log_level: level.into_string(),
                message: owned(&messages, index)?,
                log_data: owned(&log_data, index)?,
                created_at: at,
                service_name: owned(&services, index)?,
                trace_id: owned(&traces, index)?,
                span_id: owned(&spans, index)?,
            });
        }
        Ok(rows)
    }
}

/// The `message_id` column of a block, decompressed.
#[derive(Debug, Clone, Default)]
pub struct MessageIds {
    /// Each log's kind, then the literals.
    bytes: Vec<u8>,
    /// Where each log's literal is in `bytes`, for those that have one.
    literals: Vec<Option<(usize, usize)>>,
}

impl MessageIds {
    /// The `message_id` of log `index`, whose `id` is `id`.
    pub fn get(&self, index: usize, id: i64) -> Result<Option<String>, ChunkError> {
        match self.bytes.get(index) {
            Some(&ID_ENTRY) => Ok(Some(entry_id(id))),
            Some(&ID_ENTRY_INDEX) => Ok(Some(format!("{}.{}", entry_id(id), id & 0x3ff))),
            Some(&ID_NULL) => Ok(None),
            Some(&ID_LITERAL) => match self.literals.get(index).copied().flatten() {
                Some((start, end)) => Ok(Some(utf8(&self.bytes[start..end])?.to_owned())),
                None => Err(ChunkError::Corrupt("a literal message_id that is missing")),
            },
            _ => Err(ChunkError::Corrupt("no such log")),
        }
    }
}

/// A text column of a block, decompressed: each log's value, read without a copy.
#[derive(Debug, Clone, Default)]
pub struct Texts {
    bytes: Vec<u8>,
    /// Where each log's value is in `bytes`; None for a null.
    spans: Vec<Option<(usize, usize)>>,
}

impl Texts {
    /// Log `index`'s value: None for a null (or past the last log).
    pub fn get(&self, index: usize) -> Result<Option<&str>, ChunkError> {
        match self.spans.get(index).copied().flatten() {
            Some((start, end)) => utf8(&self.bytes[start..end]).map(Some),
            None => Ok(None),
        }
    }
}

/// A log's level in a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Level {
    /// One of the five.
    Known(LogLevel),
    /// Another text (a seed database's rows may hold any).
    Other(String),
}

impl Level {
    /// The level of text `text`.
    pub fn of(text: &str) -> Self {
        LogLevel::ALL
            .into_iter()
            .find(|level| level.as_str() == text)
            .map_or_else(|| Self::Other(text.to_owned()), Self::Known)
    }

    /// Its text.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Known(level) => level.as_str(),
            Self::Other(text) => text,
        }
    }

    /// Its text, owned.
    pub fn into_string(self) -> String {
        match self {
            Self::Known(level) => level.as_str().to_owned(),
            Self::Other(text) => text,
        }
    }

    /// Its place in a chunk's level counts: 0–4 for the five, 5 for any other.
    pub fn slot(&self) -> usize {
        match self {
            Self::Known(level) => *level as usize,
            Self::Other(_) => LEVEL_LITERAL as usize,
        }
    }
}

/// The entry id that log key `id` was made from, `<ms>-<seq>` ([`codec::log_key`]).
fn entry_id(id: i64) -> String {
    let (ms, seq, _) = codec::key_parts(id);
    format!("{ms}-{seq}")
}

/// Integers as the first one and zigzag deltas.
fn integers(values: impl Iterator<Item = i64>) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut previous = None;
    for value in values {
        match previous {
            None => bytes.extend_from_slice(&value.to_le_bytes()),
            Some(previous) => {
                let delta = value.wrapping_sub(previous);
                put_varint(&mut bytes, ((delta << 1) ^ (delta >> 63)) as u64);
            }
        }
        previous = Some(value);
    }
    bytes
}

fn decode_integers(bytes: &[u8], rows: usize) -> Result<Vec<i64>, ChunkError> {
    let mut reader = Reader::new(bytes);
    let mut values = Vec::with_capacity(rows);
    if rows > 0 {
        let first = i64::from_le_bytes(
            reader
                .take(8)?
                .try_into()
                .map_err(|_| ChunkError::Corrupt("a short integer"))?,
        );
        values.push(first);
        let mut value = first;
        for _ in 1..rows {
            let zigzag = reader.varint()?;
            let delta = (zigzag >> 1) as i64 ^ -((zigzag & 1) as i64);
            value = value.wrapping_add(delta);
            values.push(value);
        }
    }
    reader.finish()?;
    Ok(values)
}

fn message_ids(rows: &[ChunkRow]) -> Vec<u8> {
    let mut kinds = Vec::with_capacity(rows.len());
    let mut literals = Vec::new();
    for row in rows {
        let kind = match row.message_id.as_deref() {
            None => ID_NULL,
            Some(text) => {
                let entry = entry_id(row.id);
                if text == entry {
                    ID_ENTRY
                } else if text
                    .strip_prefix(entry.as_str())
                    .and_then(|rest| rest.strip_prefix('.'))
                    .is_some_and(|index| index == (row.id & 0x3ff).to_string())
                {
                    ID_ENTRY_INDEX
                } else {
                    put_text(&mut literals, text);
                    ID_LITERAL
                }
            }
        };
        kinds.push(kind);
    }
    kinds.extend_from_slice(&literals);
    kinds
}

fn levels(rows: &[ChunkRow]) -> Vec<u8> {
    let mut codes = Vec::with_capacity(rows.len());
    let mut literals = Vec::new();
    for row in rows {
        let level = Level::of(&row.log_level);
        if let Level::Other(text) = &level {
            put_text(&mut literals, text);
        }
        codes.push(level.slot() as u8);
    }
    codes.extend_from_slice(&literals);
    codes
}

fn texts<'a>(values: impl Iterator<Item = Option<&'a str>> + Clone) -> Vec<u8> {
    let mut bytes = Vec::new();
    for value in values.clone() {
        put_varint(&mut bytes, value.map_or(0, |text| text.len() as u64 + 1));
    }
    for text in values.flatten() {
        bytes.extend_from_slice(text.as_bytes());
    }
    bytes
}

fn put_varint(bytes: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        bytes.push((value as u8) | 0x80);
        value >>= 7;
    }
    bytes.push(value as u8);
}

fn put_text(bytes: &mut Vec<u8>, text: &str) {
    put_varint(bytes, text.len() as u64);
    bytes.extend_from_slice(text.as_bytes());
}

fn utf8(bytes: &[u8]) -> Result<&str, ChunkError> {
    std::str::from_utf8(bytes).map_err(|_| ChunkError::Corrupt("a text that is not UTF-8"))
}

/// Reads a column's bytes, checking each length against what is left.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    fn take(&mut self, length: usize) -> Result<&'a [u8], ChunkError> {
        if length > self.bytes.len() {
            return Err(ChunkError::Corrupt("a length past the end"));
        }
        let (taken, rest) = self.bytes.split_at(length);
        self.bytes = rest;
        Ok(taken)
    }

    fn u32(&mut self) -> Result<u32, ChunkError> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn varint(&mut self) -> Result<u64, ChunkError> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self.take(1)?.first().unwrap_or(&0);
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(ChunkError::Corrupt("a varint of more than 64 bits"))
    }

    fn text(&mut self) -> Result<&'a str, ChunkError> {
        let length =
            usize::try_from(self.varint()?).map_err(|_| ChunkError::Corrupt("a text too long"))?;
        utf8(self.take(length)?)
    }

    fn rest(&self) -> &'a [u8] {
        self.bytes
    }

    fn finish(&self) -> Result<(), ChunkError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(ChunkError::Corrupt("bytes after a column's values"))
        }
    }
}

//! Chunks: one tenant's and one device's logs in time order, each column compressed, with
//! an index that lets a search skip the chunks that cannot match. docs/storage.md is the
//! format's specification; this module encodes and decodes it, and makes the tokens of
//! its Bloom filters. Nothing here talks to a database.

pub mod block;
pub mod bloom;
pub mod tokens;

use std::collections::HashSet;

use block::Level;

/// Logs per chunk when the setting is not given.
pub const DEFAULT_CHUNK_ROWS: usize = 2048;

/// One log as a chunk holds it: a row of `logs`, less its tenant and device (the chunk's)
/// and `indexed_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRow {
    /// The row's key with `created_at`.
    pub id: i64,
    /// The id the api answered.
    pub message_id: Option<String>,
    /// Its level's text.
    pub log_level: String,
    /// Its message.
    pub message: Option<String>,
    /// `log_data` as PostgreSQL prints the `jsonb`.
    pub log_data: Option<String>,
    /// When the api received it, in µs since the epoch.
    pub created_at: i64,
    /// Its service.
    pub service_name: Option<String>,
    /// Its trace.
    pub trace_id: Option<String>,
    /// Its span.
    pub span_id: Option<String>,
}

impl ChunkRow {
    /// Its place in time order.
    pub fn key(&self) -> (i64, i64) {
        (self.created_at, self.id)
    }
}

/// Why a chunk could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// More logs or bytes than a block can say.
    #[error("a chunk too large for its format")]
    TooLarge,
    /// zstd failed to compress.
    #[error("compressing a chunk: {0}")]
    Compress(std::io::Error),
    /// zstd failed to decompress.
    #[error("decompressing a chunk: {0}")]
    Decompress(std::io::Error),
    /// The bytes are not a block of this format.
    #[error("a corrupt chunk: {0}")]
    Corrupt(&'static str),
}

/// A chunk as `log_chunks` stores it: the index and the block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// `(created_at, id)` of its first log.
    pub first: (i64, i64),
    /// `(created_at, id)` of its last log.
    pub last: (i64, i64),
    /// Logs in it.
    pub rows: i32,
    /// Logs per level: DEBUG, INFO, WARNING, ERROR, CRITICAL, any other.
    pub levels: [i32; 6],
    /// Bloom filter of its messages' trigrams.
    pub grams: Vec<u8>,
    /// Bloom filter of its `log_data` fields, services and traces.
    pub fields: Vec<u8>,
    /// The logs.
    pub block: Vec<u8>,
}

impl Chunk {
    /// The chunk of `rows`, which must be in `(created_at, id)` order and not empty.
    pub fn of(rows: &[ChunkRow]) -> Result<Self, ChunkError> {
        let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
            return Err(ChunkError::Corrupt("a chunk of no logs"));
        };
        let mut levels = [0i32; 6];
        let mut grams: HashSet<Vec<u8>> = HashSet::new();
        let mut fields: HashSet<Vec<u8>> = HashSet::new();
        let mut field_tokens = Vec::new();
        for row in rows {
            levels[Level::of(&row.log_level).slot()] += 1;
            if let Some(message) = &row.message {
                grams.extend(tokens::grams(message));
            }
            if let Some(log_data) = &row.log_data {
                tokens::field_tokens(log_data, &mut field_tokens);
                fields.extend(field_tokens.drain(..));
            }
            if let Some(service) = &row.service_name {
                fields.insert(tokens::service_token(service));
            }
            if let Some(trace) = &row.trace_id {
                fields.insert(tokens::trace_token(trace));
            }
        }
        Ok(Self {
            first: first.key(),
            last: last.key(),
            rows: i32::try_from(rows.len()).map_err(|_| ChunkError::TooLarge)?,
            levels,
            grams: bloom::build(grams.iter().map(Vec::as_slice)),
            fields: bloom::build(fields.iter().map(Vec::as_slice)),
            block: block::encode(rows)?,
        })
    }
}

/// `rows` (of one tenant, device and period) as chunks of at most `chunk_rows` logs each,
/// in time order; the rows are sorted first.
pub fn chunks_of(mut rows: Vec<ChunkRow>, chunk_rows: usize) -> Result<Vec<Chunk>, ChunkError> {
    rows.sort_unstable_by_key(ChunkRow::key);
    rows.chunks(chunk_rows.max(1)).map(Chunk::of).collect()
}

#[cfg(test)]
mod tests {
    use super::block::{Block, Column};
    use super::*;
    use crate::codec::log_key;

    fn row(seq: i64) -> ChunkRow {
        let entry = format!("{}-{}", 1_795_000_000_000 + seq / 5, seq % 3);
        let id = log_key(&entry, (seq % 5) as usize).unwrap();
        ChunkRow {
            id,
            message_id: Some(if seq % 7 == 0 {
                entry
            } else {
                format!("{entry}.{}", seq % 5)
            }),
            log_level: ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"][seq as usize % 5].into(),
            message: Some(format!(
                "Temperature reading: {}.{}C",
                20 + seq % 9,
                seq % 10
            )),
            log_data: Some(format!(r#"{{"seq": {seq}, "firmware": "1.4.2"}}"#)),
            created_at: 1_795_000_000_000_000 + seq * 200,
            service_name: (seq % 2 == 0).then(|| "checkout".into()),
            trace_id: (seq % 3 == 0).then(|| format!("trace-{}", seq / 3)),
            span_id: None,
        }
    }

    #[test]
    fn a_block_gives_back_every_log_as_it_was() {
        let mut rows: Vec<ChunkRow> = (0..1000).map(row).collect();
        // What a seed database or a test may hold: no ids from a stream, a level of its
        // own, nulls, text of every kind.
        rows.push(ChunkRow {
            id: -5,
            message_id: None,
            log_level: "WARN".into(),
            message: None,
            log_data: None,
            created_at: 1_795_000_000_300_000,
            service_name: Some("ünïcödé ✓".into()),
            trace_id: None,
            span_id: Some("span".into()),
        });
        rows.push(ChunkRow {
            message_id: Some("bench-7".into()),
            message: Some(String::new()),
            ..row(1001)
        });
        rows.sort_by_key(ChunkRow::key);
        let encoded = block::encode(&rows).unwrap();
        let block = Block::parse(&encoded).unwrap();
        assert_eq!(block.rows(), rows.len());
        assert_eq!(block.rows_all().unwrap(), rows);
        // Under 20 bytes a log for these.
        assert!(encoded.len() < rows.len() * 20, "{} bytes", encoded.len());
    }

    #[test]
    fn a_corrupt_block_is_an_error_not_a_panic() {
        let encoded = block::encode(&(0..50).map(row).collect::<Vec<_>>()).unwrap();
        for cut in [0, 3, 8, 20, encoded.len() / 2, encoded.len() - 1] {
            assert!(Block::parse(&encoded[..cut]).is_err(), "cut at {cut}");
        }
        let mut flipped = encoded.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0xff;
        let result = Block::parse(&flipped).and_then(|block| block.rows_all());
        assert!(result.is_err() || result.is_ok_and(|rows| rows.len() == 50));
        assert!(Block::parse(b"LPC1\x01\x00\x00\x00").is_err());
        assert!(
            Block::parse(&encoded)
                .unwrap()
                .texts(Column::CreatedAt)
                .is_err()
        );
    }

    #[test]
    fn a_chunk_indexes_its_levels_trigrams_and_fields() {
        let rows: Vec<ChunkRow> = (0..100).map(row).collect();
        let chunk = Chunk::of(&rows).unwrap();
        assert_eq!(chunk.rows, 100);
        assert_eq!(chunk.levels, [20, 20, 20, 20, 20, 0]);
        assert_eq!(chunk.first, rows[0].key());
        assert_eq!(chunk.last, rows[99].key());
        for gram in tokens::grams("reading") {
            assert!(bloom::may_contain(&chunk.grams, &gram));
        }
        let firmware = serde_json::value::RawValue::from_string(r#""1.4.2""#.into()).unwrap();
        let token = tokens::value_token(&["firmware"], &firmware).unwrap();
        assert!(bloom::may_contain(&chunk.fields, &token));
        assert!(bloom::may_contain(
            &chunk.fields,
            &tokens::number_token(&["seq"])
        ));
        assert!(bloom::may_contain(
            &chunk.fields,
            &tokens::service_token("checkout")
        ));
        assert!(bloom::may_contain(
            &chunk.fields,
            &tokens::trace_token("trace-4")
        ));
        assert!(!bloom::may_contain(
            &chunk.fields,
            &tokens::service_token("billing")
        ));
    }

    #[test]
    fn rows_are_cut_into_chunks_in_time_order() {
        let mut rows: Vec<ChunkRow> = (0..250).map(row).collect();
        rows.reverse();
        let chunks = chunks_of(rows, 100).unwrap();
        assert_eq!(
            chunks.iter().map(|chunk| chunk.rows).collect::<Vec<_>>(),
            [100, 100, 50]
        );
        assert!(chunks.windows(2).all(|pair| pair[0].last < pair[1].first));
    }
}

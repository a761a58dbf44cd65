//! PostgreSQL's binary `COPY` format, for the columns the worker writes: each row a field
//! count, then each field as its length and its bytes in the type's binary form
//! (<https://www.postgresql.org/docs/current/sql-copy.html>, "Binary Format"). Binary
//! saves PostgreSQL the text parsing of numbers and timestamps that `COPY` in text form
//! and `INSERT … unnest(…)` both cost.

use time::OffsetDateTime;
use time::macros::datetime;

/// The signature, flags and header extension that open every binary `COPY` stream.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// The binary form of `jsonb` is a version byte, then the JSON text.
const JSONB_VERSION: u8 = 1;
/// Where PostgreSQL counts timestamps from.
const POSTGRES_EPOCH: OffsetDateTime = datetime!(2000-01-01 0:00 UTC);

/// Rows in binary `COPY` form, built one field at a time.
#[derive(Debug, Clone)]
pub struct CopyRows {
    buffer: Vec<u8>,
    rows: usize,
}

impl CopyRows {
    /// An empty stream, with room for about `bytes`.
    pub fn with_capacity(bytes: usize) -> Self {
        let mut buffer = Vec::with_capacity(bytes + HEADER.len() + 2);
        buffer.extend_from_slice(HEADER);
        Self { buffer, rows: 0 }
    }

    /// Starts a row of `fields` fields.
    pub fn row(&mut self, fields: i16) {
        self.buffer.extend_from_slice(&fields.to_be_bytes());
        self.rows += 1;
    }

    /// A `bigint`.
    pub fn bigint(&mut self, value: i64) {
        self.field(&value.to_be_bytes());
    }

    /// A `text` or `varchar`.
    pub fn text(&mut self, value: &str) {
        self.field(value.as_bytes());
    }

    /// A `text` or `varchar` that may be null.
    pub fn optional_text(&mut self, value: Option<&str>) {
        match value {
            Some(value) => self.text(value),
            None => self.buffer.extend_from_slice(&(-1_i32).to_be_bytes()),
        }
    }

    /// A `jsonb`, from its JSON text.
    pub fn jsonb(&mut self, json: &str) {
        self.length(json.len() + 1);
        self.buffer.push(JSONB_VERSION);
        self.buffer.extend_from_slice(json.as_bytes());
    }

    /// A `timestamptz`: microseconds since 2000-01-01 UTC.
    pub fn timestamptz(&mut self, at: OffsetDateTime) {
        let micros = (at - POSTGRES_EPOCH).whole_microseconds();
        self.bigint(i64::try_from(micros).unwrap_or(i64::MAX));
    }

    /// How many rows were started.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The stream, with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.buffer.extend_from_slice(&(-1_i16).to_be_bytes());
        self.buffer
    }

    fn field(&mut self, bytes: &[u8]) {
        self.length(bytes.len());
        self.buffer.extend_from_slice(bytes);
    }

    /// A field's length. Every field the worker writes is far below 2 GiB: a message
    /// holds at most 5,000 characters and a request body at most the api's body limit.
    fn length(&mut self, length: usize) {
        let length = i32::try_from(length).unwrap_or(i32::MAX);
        self.buffer.extend_from_slice(&length.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_is_encoded_as_postgres_reads_it() {
        let mut rows = CopyRows::with_capacity(64);
        rows.row(5);
        rows.bigint(7);
        rows.text("é");
        rows.optional_text(None);
        rows.jsonb("{}");
        rows.timestamptz(datetime!(2000-01-01 0:00:01.5 UTC));
        assert_eq!(rows.rows(), 1);
        let bytes = rows.finish();
        let mut expected = HEADER.to_vec();
        expected.extend([0, 5]);
        expected.extend([0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 7]);
        expected.extend([0, 0, 0, 2, 0xc3, 0xa9]);
        expected.extend([0xff, 0xff, 0xff, 0xff]);
        expected.extend([0, 0, 0, 3, 1, b'{', b'}']);
        expected.extend([0, 0, 0, 8]);
        expected.extend(1_500_000_i64.to_be_bytes());
        expected.extend([0xff, 0xff]);
        assert_eq!(bytes, expected);
    }

    #[test]
    fn times_before_postgres_epoch_are_negative() {
        let mut rows = CopyRows::with_capacity(16);
        rows.timestamptz(datetime!(1999-12-31 23:59:59 UTC));
        let bytes = rows.finish();
        let field = &bytes[HEADER.len() + 4..HEADER.len() + 12];
        assert_eq!(i64::from_be_bytes(field.try_into().unwrap()), -1_000_000);
    }
}

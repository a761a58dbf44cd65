//! A page of logs: the logs as reads return them, the order they come in, and the cursor
//! that continues after the last.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sqlx::FromRow;
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::error::{Error, Result};

/// Which way a page runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Order {
    /// Newest first.
    NewestFirst,
    /// Oldest first.
    OldestFirst,
}

/// A position in a sequence of logs: the last log of a page, by (`created_at`, `id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cursor {
    /// `created_at` in µs since the epoch.
    pub micros: i64,
    /// `id`.
    pub id: i64,
}

impl Cursor {
    /// `<micros>.<id in hexadecimal>`: every text of that form is a position (the schema's
    /// pattern says so), so a client can only be refused a cursor for its form.
    pub fn encode(self) -> String {
        format!("{}.{:x}", self.micros, self.id as u64)
    }

    fn decode(text: &str) -> Option<Self> {
        let (micros, id) = text.split_once('.')?;
        let digits = micros.strip_prefix('-').unwrap_or(micros);
        let decimal =
            (1..=17).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
        let hex = (1..=16).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !decimal || !hex {
            return None;
        }
        Some(Self {
            micros: micros.parse().ok()?,
            id: u64::from_str_radix(id, 16).ok()? as i64,
        })
    }

    /// Its time.
    pub fn at(self) -> Option<OffsetDateTime> {
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.micros) * 1000).ok()
    }
}

/// `cursor`: the `next` of a previous page.
pub fn parse_cursor(cursor: Option<&str>) -> Result<Option<Cursor>> {
    cursor
        .map(|text| {
            Cursor::decode(text)
                .filter(|cursor| cursor.at().is_some())
                .ok_or_else(|| {
                    Error::InvalidQuery(
                        "cursor must be the `next` of a previous page, such as 1795308807997201.1f"
                            .into(),
                    )
                })
        })
        .transpose()
}

/// A stored log, as queries return it.
#[derive(Debug, Serialize, Deserialize, FromRow, ToSchema)]
pub struct StoredLog {
    /// Row id, increasing in insertion order.
    pub id: i64,
    /// The id the api answered when it accepted the log (absent on rows the seed system
    /// wrote).
    pub message_id: Option<String>,
    /// The device.
    pub device_id: String,
    /// The service that wrote it, if it said.
    pub service_name: Option<String>,
    /// Its trace, if any.
    pub trace_id: Option<String>,
    /// Its span, if any.
    pub span_id: Option<String>,
    /// The level.
    pub log_level: String,
    /// The message.
    pub message: Option<String>,
    /// The structured data.
    #[schema(value_type = Option<Object>)]
    #[sqlx(try_from = "Option<String>")]
    pub log_data: JsonText,
    /// When the api received it.
    #[serde(with = "time::serde::rfc3339::option")]
    pub created_at: Option<OffsetDateTime>,
}

impl StoredLog {
    /// Its place in time order: (`created_at` in µs, `id`).
    pub fn key(&self) -> (i64, i64) {
        let micros = self
            .created_at
            .map_or(i64::MIN, logpipeline_core::codec::unix_micros);
        (micros, self.id)
    }
}

/// JSON text from PostgreSQL (`null` for SQL NULL), passed through without being parsed.
#[derive(Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JsonText(Box<RawValue>);

impl TryFrom<Option<String>> for JsonText {
    type Error = serde_json::Error;

    fn try_from(text: Option<String>) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text.unwrap_or_else(|| "null".into())).map(Self)
    }
}

/// Where a page came from.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// The Redis cache.
    Cache,
    /// PostgreSQL.
    Database,
}

/// A page of logs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct LogPage {
    /// Logs on this page.
    pub total: usize,
    /// Where the page came from.
    pub source: Source,
    /// The logs.
    #[schema(value_type = Vec<StoredLog>)]
    pub data: Box<RawValue>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next: Option<String>,
}

/// A page as cached.
#[derive(Serialize, Deserialize)]
pub struct CachedPage {
    pub total: usize,
    pub data: Box<RawValue>,
    pub next: Option<String>,
}

impl CachedPage {
    /// The page, as served from `source`.
    pub fn served_from(self, source: Source) -> LogPage {
        LogPage {
            total: self.total,
            source,
            data: self.data,
            next: self.next,
        }
    }
}

/// The page of a read that asked for one log more than `limit`: the first `limit` of
/// `logs`, and the cursor after them when there are more.
pub fn page_of(mut logs: Vec<StoredLog>, limit: u32) -> Result<CachedPage> {
    let more = logs.len() > limit as usize;
    logs.truncate(limit as usize);
    let next = logs.last().filter(|_| more).and_then(|last| {
        Some(
            Cursor {
                micros: logpipeline_core::codec::unix_micros(last.created_at?),
                id: last.id,
            }
            .encode(),
        )
    });
    let data = serde_json::value::to_raw_value(&logs)
        .map_err(|error| Error::Internal(error.to_string()))?;
    Ok(CachedPage {
        total: logs.len(),
        data,
        next,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let cursor = Cursor {
            micros: 1_795_308_807_997_201,
            id: 42,
        };
        assert_eq!(cursor.encode(), "1795308807997201.2a");
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        // Ids past i64::MAX in hexadecimal wrap as the database's bigint does.
        let negative = Cursor { micros: -5, id: -1 };
        assert_eq!(Cursor::decode(&negative.encode()), Some(negative));
        assert_eq!(parse_cursor(Some(&cursor.encode())).unwrap(), Some(cursor));
        for bad in [
            "nonsense",
            "",
            "12.FF",
            "123456789012345678.1",
            "1.12345678901234567",
        ] {
            assert!(parse_cursor(Some(bad)).is_err(), "{bad}");
        }
    }
}

//! How accepted logs travel through the Redis Stream, and the stable id of each log.
//!
//! One accepted request is one stream entry, whatever the number of logs it carries:
//! a single round trip to Redis per request, and one entry id that makes every log's id
//! stable across re-deliveries. An entry has three fields:
//!
//! | field  | value                                                    |
//! | ------ | -------------------------------------------------------- |
//! | `v`    | codec version, `1`                                       |
//! | `t`    | when the API received the request, µs since the epoch    |
//! | `logs` | a JSON array of [`LogRecord`]s                           |
//! | `n`    | the tenant the logs belong to; absent for `default`      |

use serde::Deserialize;
use time::OffsetDateTime;

use crate::record::LogRecord;
use crate::tenant::{DEFAULT_TENANT, Tenant};

/// The codec version this build writes and reads.
pub const VERSION: &str = "1";
/// Field names of a stream entry.
pub const FIELD_VERSION: &str = "v";
/// Field holding the receive time.
pub const FIELD_RECEIVED_AT: &str = "t";
/// Field holding the JSON array of logs.
pub const FIELD_LOGS: &str = "logs";
/// Field holding the tenant, written only for tenants other than the default one (so
/// entries of deployments without tenants are as they always were).
pub const FIELD_TENANT: &str = "n";

/// The id of log `index` of the `count` logs in stream entry `entry_id`: the entry id
/// itself when the entry holds one log (as in the seed, where every log was an entry),
/// else `<entry id>.<index>`.
pub fn log_id(entry_id: &str, index: usize, count: usize) -> String {
    if count == 1 {
        entry_id.to_owned()
    } else {
        format!("{entry_id}.{index}")
    }
}

/// Where log keys count their milliseconds from: 2024-01-01T00:00:00Z.
const KEY_EPOCH_MS: i64 = 1_704_067_200_000;
/// Bits of a log key below its milliseconds: 12 for the entry's sequence number within
/// its millisecond, 10 for the log's index in its entry (a batch holds at most 1000).
const KEY_SEQUENCE_BITS: u32 = 12;
const KEY_INDEX_BITS: u32 = 10;

/// The `id` column of log `index` of stream entry `entry_id` (`<ms>-<seq>`): the entry's
/// milliseconds since 2024 (41 bits, until September 2093), its sequence number (12 bits) and the
/// log's index (10 bits). Together with the log's receive time, which also comes from the
/// entry, it is the primary key that makes storing idempotent: a re-delivered entry
/// yields the same keys. A stream gets more than 4096 entries in one millisecond only past
/// what a Redis server can take (4 million a second); sequence numbers above that wrap,
/// and two logs would share a key only if their receive times were equal to the
/// microsecond too. None when `entry_id` is not a stream entry id.
pub fn log_key(entry_id: &str, index: usize) -> Option<i64> {
    let (ms, seq) = entry_id.split_once('-')?;
    let ms: i64 = ms.parse().ok()?;
    let seq: u64 = seq.parse().ok()?;
    let index = u64::try_from(index)
        .ok()
        .filter(|i| *i < 1 << KEY_INDEX_BITS)?;
    let low = ((seq % (1 << KEY_SEQUENCE_BITS)) << KEY_INDEX_BITS) | index;
    let since_epoch = ms.checked_sub(KEY_EPOCH_MS)?;
    let high = since_epoch.checked_mul(1 << (KEY_SEQUENCE_BITS + KEY_INDEX_BITS))?;
    Some(high | low as i64)
}

/// What [`log_key`] made `key` of: the entry's milliseconds since the Unix epoch, its
/// sequence number modulo 4096, and the log's index in the entry.
pub fn key_parts(key: i64) -> (i64, u64, u64) {
    let ms = (key >> (KEY_SEQUENCE_BITS + KEY_INDEX_BITS)) + KEY_EPOCH_MS;
    let seq = (key as u64 >> KEY_INDEX_BITS) & ((1 << KEY_SEQUENCE_BITS) - 1);
    let index = key as u64 & ((1 << KEY_INDEX_BITS) - 1);
    (ms, seq, index)
}

/// The ids of all logs in an entry, in order.
pub fn log_ids(entry_id: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| log_id(entry_id, i, count)).collect()
}

/// Microseconds since the Unix epoch, the precision the stream and PostgreSQL keep.
pub fn unix_micros(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1000) as i64
}

/// The fields to `XADD` for logs of `tenant` received at `received_at`, given as the
/// JSON text of an array of valid [`LogRecord`]s.
pub fn encode<'a>(
    received_at: OffsetDateTime,
    tenant: &'a Tenant,
    logs_json: &'a [u8],
) -> Vec<(&'static str, Field<'a>)> {
    let mut fields = vec![
        (FIELD_VERSION, Field::Text(VERSION.into())),
        (
            FIELD_RECEIVED_AT,
            Field::Text(unix_micros(received_at).to_string()),
        ),
        (FIELD_LOGS, Field::Bytes(logs_json)),
    ];
    if tenant.as_str() != DEFAULT_TENANT {
        fields.push((FIELD_TENANT, Field::Bytes(tenant.as_str().as_bytes())));
    }
    fields
}

/// A field value of an encoded entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field<'a> {
    /// Short text.
    Text(String),
    /// The logs, borrowed from the request body.
    Bytes(&'a [u8]),
}

impl Field<'_> {
    /// The value's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Text(text) => text.as_bytes(),
            Self::Bytes(bytes) => bytes,
        }
    }
}

/// A stream entry, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The tenant its logs belong to.
    pub tenant: Tenant,
    /// When the API received the request.
    pub received_at: OffsetDateTime,
    /// Its logs, at least one.
    pub logs: Vec<LogRecord>,
}

/// Why an entry could not be decoded. Decoding is deterministic, so such an entry can
/// never succeed and goes to the dead-letter stream at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A field is missing.
    #[error("the entry has no `{0}` field")]
    MissingField(&'static str),
    /// Written by a codec version this build does not read.
    #[error("the entry has codec version {0:?}; this build reads version {VERSION}")]
    UnknownVersion(String),
    /// The receive time is not a number of microseconds.
    #[error("the entry's receive time is not a valid timestamp")]
    BadTimestamp,
    /// The logs are not a JSON array of valid logs.
    #[error("the entry's logs are invalid: {0}")]
    BadLogs(String),
    /// The logs array is empty.
    #[error("the entry holds no logs")]
    NoLogs,
    /// The tenant is not a valid tenant name.
    #[error("the entry's tenant is invalid: {0}")]
    BadTenant(String),
}

/// Decodes an entry from its `(field, value)` pairs as Redis returns them.
pub fn decode<K: AsRef<[u8]>, V: AsRef<[u8]>>(fields: &[(K, V)]) -> Result<Entry, DecodeError> {
    let field = |name: &'static str| {
        fields
            .iter()
            .find(|(key, _)| key.as_ref() == name.as_bytes())
            .map(|(_, value)| value.as_ref())
            .ok_or(DecodeError::MissingField(name))
    };
    let version = field(FIELD_VERSION)?;
    if version != VERSION.as_bytes() {
        return Err(DecodeError::UnknownVersion(
            String::from_utf8_lossy(version).into_owned(),
        ));
    }
    let received_at = std::str::from_utf8(field(FIELD_RECEIVED_AT)?)
        .ok()
        .and_then(|micros| micros.parse::<i64>().ok())
        .and_then(|micros| {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000).ok()
        })
        .ok_or(DecodeError::BadTimestamp)?;
    let logs = Vec::<LogRecord>::deserialize(&mut serde_json::Deserializer::from_slice(field(
        FIELD_LOGS,
    )?))
    .map_err(|error| DecodeError::BadLogs(error.to_string()))?;
    if logs.is_empty() {
        return Err(DecodeError::NoLogs);
    }
    let tenant = match field(FIELD_TENANT) {
        Ok(name) => std::str::from_utf8(name)
            .ok()
            .and_then(|name| Tenant::parse(name).ok())
            .ok_or_else(|| DecodeError::BadTenant(String::from_utf8_lossy(name).into_owned()))?,
        Err(_) => Tenant::default(),
    };
    Ok(Entry {
        tenant,
        received_at,
        logs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::LogLevel;

    const LOGS: &str = r#"[{"device_id":"a","log_level":"INFO","message":"one"},
        {"device_id":"b","log_level":"ERROR","message":"two","log_data":{"k":1}}]"#;

    fn as_pairs(fields: &[(&'static str, Field<'_>)]) -> Vec<(Vec<u8>, Vec<u8>)> {
        fields
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn an_entry_round_trips() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_732_233_914_123_456_000).unwrap();
        let tenant = Tenant::default();
        let entry = decode(&as_pairs(&encode(at, &tenant, LOGS.as_bytes()))).unwrap();
        assert_eq!(entry.received_at, at);
        assert_eq!(entry.tenant, Tenant::default());
        assert_eq!(entry.logs.len(), 2);
        assert_eq!(entry.logs[1].log_level, LogLevel::Error);
        assert_eq!(
            entry.logs[1].log_data.as_ref().unwrap().as_json(),
            r#"{"k":1}"#
        );
    }

    #[test]
    fn log_keys_are_distinct_and_ordered_by_entry_then_index() {
        let keys: Vec<i64> = [
            ("1795308807997-0", 0),
            ("1795308807997-0", 1),
            ("1795308807997-0", 999),
            ("1795308807997-1", 0),
            ("1795308807997-4095", 999),
            ("1795308807998-0", 0),
        ]
        .iter()
        .map(|(id, index)| log_key(id, *index).unwrap())
        .collect();
        assert!(keys.windows(2).all(|pair| pair[0] < pair[1]), "{keys:?}");
        assert!(keys.iter().all(|key| *key > 0));
        // The last millisecond that fits, in September 2093, and the first that does not.
        assert!(log_key("3903090455551-4095", 1023).unwrap() > 0);
        assert_eq!(log_key("3903090455552-0", 0), None);
        assert_eq!(log_key("1795308807997-0", 1024), None);
        for bad in ["", "17953", "a-1", "1-b", "1795308807997"] {
            assert_eq!(log_key(bad, 0), None, "{bad}");
        }
    }

    #[test]
    fn a_key_tells_its_entry_and_index() {
        let key = log_key("1795308807997-4097", 7).unwrap();
        assert_eq!(key_parts(key), (1_795_308_807_997, 1, 7));
    }

    #[test]
    fn receive_times_keep_microseconds() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_732_233_914_123_456_789).unwrap();
        let tenant = Tenant::default();
        let entry = decode(&as_pairs(&encode(at, &tenant, LOGS.as_bytes()))).unwrap();
        assert_eq!(unix_micros(entry.received_at), 1_732_233_914_123_456);
    }

    #[test]
    fn log_ids_are_the_entry_id_for_one_log_and_indexed_for_many() {
        assert_eq!(log_ids("1-0", 1), ["1-0"]);
        assert_eq!(
            log_ids("1732233914123-7", 3),
            [
                "1732233914123-7.0",
                "1732233914123-7.1",
                "1732233914123-7.2"
            ]
        );
    }

    #[test]
    fn bad_entries_say_why() {
        let tenant = Tenant::default();
        let ok = as_pairs(&encode(
            OffsetDateTime::UNIX_EPOCH,
            &tenant,
            LOGS.as_bytes(),
        ));
        let without = |name: &str| -> Vec<(Vec<u8>, Vec<u8>)> {
            ok.iter()
                .filter(|(k, _)| k != name.as_bytes())
                .cloned()
                .collect()
        };
        let with = |name: &str, value: &str| -> Vec<(Vec<u8>, Vec<u8>)> {
            let mut fields = without(name);
            fields.push((name.as_bytes().to_vec(), value.as_bytes().to_vec()));
            fields
        };
        assert_eq!(
            decode(&without("logs")),
            Err(DecodeError::MissingField("logs"))
        );
        assert_eq!(
            decode(&with("v", "2")),
            Err(DecodeError::UnknownVersion("2".into()))
        );
        assert_eq!(decode(&with("t", "soon")), Err(DecodeError::BadTimestamp));
        assert_eq!(decode(&with("logs", "[]")), Err(DecodeError::NoLogs));
        let invalid = with(
            "logs",
            r#"[{"device_id":"","log_level":"INFO","message":"m"}]"#,
        );
        assert!(
            matches!(decode(&invalid), Err(DecodeError::BadLogs(m)) if m.contains("device_id must be"))
        );
        assert!(matches!(
            decode(&with("n", "Not A Tenant")),
            Err(DecodeError::BadTenant(_))
        ));
    }

    #[test]
    fn only_other_tenants_than_the_default_are_written() {
        let at = OffsetDateTime::UNIX_EPOCH;
        let tenant = Tenant::default();
        let default = encode(at, &tenant, LOGS.as_bytes());
        assert!(default.iter().all(|(name, _)| *name != FIELD_TENANT));
        let acme = Tenant::parse("acme").unwrap();
        let entry = decode(&as_pairs(&encode(at, &acme, LOGS.as_bytes()))).unwrap();
        assert_eq!(entry.tenant, acme);
    }
}

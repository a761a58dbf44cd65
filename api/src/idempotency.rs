//! Idempotency keys: retries that never store a log twice.
//!
//! A client that gets no answer cannot tell whether its request reached the stream (a
//! 504 `outcome_unknown`, a connection lost after sending, a proxy that dropped the
//! answer). With a key of its choosing (`Idempotency-Key` on HTTP, `idempotency_key` in
//! the gRPC request), it retries safely: the api records each accepted key, in the same
//! Redis script that adds the entry, for the idempotency window; a request whose key is
//! recorded is not accepted again, and its answer repeats the first one (the same ids,
//! the same receive time), marked as a duplicate. Keys are scoped to the API key's
//! tenant. A key sent again with other logs is refused (422): it names another request.

use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use logpipeline_core::tenant::Tenant;

/// The HTTP header that carries the key.
pub const HEADER: &str = "idempotency-key";

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 255;

/// A client's idempotency key: 1 to 255 visible ASCII characters (a UUID is a good one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Checks `text`; `field` names where it came from in the error.
    pub fn parse(field: &str, text: &str) -> Result<Self> {
        let valid = (1..=MAX_KEY_BYTES).contains(&text.len())
            && text.bytes().all(|byte| byte.is_ascii_graphic());
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(Error::InvalidLog(format!(
                "{field} must be 1 to {MAX_KEY_BYTES} visible ASCII characters"
            )))
        }
    }

    /// The key in `headers`, if there is one.
    pub fn from_headers(headers: &axum::http::HeaderMap) -> Result<Option<Self>> {
        headers
            .get(HEADER)
            .map(|value| {
                let text = value.to_str().map_err(|_| {
                    Error::InvalidLog(format!(
                        "Idempotency-Key must be 1 to {MAX_KEY_BYTES} visible ASCII characters"
                    ))
                })?;
                Self::parse("Idempotency-Key", text)
            })
            .transpose()
    }

    /// The Redis key of its record for `tenant` on `stream`: `<stream>:idempotency:
    /// <tenant>:<key>` (tenant names hold no `:`).
    pub fn redis_key(&self, stream: &str, tenant: &Tenant) -> String {
        format!("{stream}:idempotency:{tenant}:{}", self.0)
    }
}

/// What identifies a request's logs, to tell a retry from another request reusing its
/// key: the first 128 bits of the SHA-256 of the logs as the stream holds them, in
/// hexadecimal.
pub fn fingerprint(logs_json: &[u8]) -> String {
    Sha256::digest(logs_json)[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// What the api answered the first time a request came with its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstAnswer {
    /// The entry holding the logs.
    pub entry_id: String,
    /// When the api received them the first time.
    pub received_at: OffsetDateTime,
}

/// The first answer to a request repeated with its key, from the record
/// `<entry id> <receive time, µs> <fingerprint>`; refused when `fingerprint`, the
/// repeated request's, differs.
pub fn replay(record: &str, fingerprint: &str) -> Result<FirstAnswer> {
    let mut parts = record.split(' ');
    let (Some(entry_id), Some(micros), Some(first), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(unreadable(record));
    };
    let received_at = micros
        .parse::<i64>()
        .ok()
        .and_then(|micros| {
            OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000).ok()
        })
        .ok_or_else(|| unreadable(record))?;
    if first != fingerprint {
        return Err(Error::IdempotencyKeyReused);
    }
    Ok(FirstAnswer {
        entry_id: entry_id.to_owned(),
        received_at,
    })
}

fn unreadable(record: &str) -> Error {
    Error::Internal(format!("unreadable idempotency record {record:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_of_bounded_length() {
        assert!(IdempotencyKey::parse("k", "0b3f8e1c-4a9e-4b8e-9f1d-2c7a5e6d8f90").is_ok());
        assert!(IdempotencyKey::parse("k", &"k".repeat(255)).is_ok());
        for bad in ["", "a b", "é", "a\u{7f}"] {
            assert!(IdempotencyKey::parse("k", bad).is_err(), "{bad:?}");
        }
        let long = IdempotencyKey::parse("idempotency_key", &"k".repeat(256)).unwrap_err();
        assert!(
            long.to_string().starts_with("idempotency_key must be"),
            "{long}"
        );
        let key = IdempotencyKey::parse("k", "r-1").unwrap();
        assert_eq!(
            key.redis_key("logs:stream", &Tenant::parse("acme").unwrap()),
            "logs:stream:idempotency:acme:r-1"
        );
    }

    #[test]
    fn a_record_replays_the_first_answer_for_the_same_logs_only() {
        let print = fingerprint(b"[1]");
        assert_eq!(print.len(), 32);
        let record = format!("1795308807997-3 1795308807997201 {print}");
        let first = replay(&record, &print).unwrap();
        assert_eq!(first.entry_id, "1795308807997-3");
        assert_eq!(
            logpipeline_core::codec::unix_micros(first.received_at),
            1_795_308_807_997_201
        );
        assert!(matches!(
            replay(&record, &fingerprint(b"[2]")),
            Err(Error::IdempotencyKeyReused)
        ));
        assert!(matches!(replay("garbage", &print), Err(Error::Internal(_))));
    }
}

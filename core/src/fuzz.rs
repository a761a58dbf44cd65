//! The properties the fuzz targets (`fuzz/`) check on arbitrary input. They live here so
//! that the regression tests (`core/tests/fuzz_regressions.rs`) replay every input the
//! fuzzers kept on the very same code. Each function panics when its property breaks,
//! which is how a fuzzer learns of a failure.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;
use time::OffsetDateTime;

use crate::codec::{self, DecodeError, Entry};
use crate::otlp;
use crate::record::LogRecord;
use crate::tenant::Tenant;

/// Separates the fields of [`stream_entry`]'s input: a byte that never occurs in UTF-8.
pub const FIELD_SEPARATOR: u8 = 0xff;

/// A `POST /api/log` body: when the field rules accept it, the stream codec carries it to
/// the worker, which decodes the same log.
pub fn log_body(data: &[u8]) {
    let Ok(record) = serde_json::from_slice::<LogRecord>(data) else {
        return;
    };
    let mut logs = Vec::with_capacity(data.len() + 2);
    logs.push(b'[');
    logs.extend_from_slice(data);
    logs.push(b']');
    carried(&logs, &[record]);
}

/// The `logs` array of a `POST /api/logs/batch` body: the same as [`log_body`].
pub fn batch_body(data: &[u8]) {
    match serde_json::from_slice::<Vec<LogRecord>>(data) {
        Ok(records) if !records.is_empty() => carried(data, &records),
        _ => {}
    }
}

/// An OTLP/protobuf `ExportLogsServiceRequest`: decoding and mapping never panic, and
/// the records the mapping accepts are carried to the worker like the other bodies'.
pub fn otlp_logs(data: &[u8]) {
    let Ok(request) = ExportLogsServiceRequest::decode(data) else {
        return;
    };
    let export = otlp::records(request);
    if export.records.is_empty() {
        return;
    }
    match serde_json::to_vec(&export.records) {
        Ok(logs) => carried(&logs, &export.records),
        Err(error) => panic!("mapped records do not serialise: {error}"),
    }
}

/// The worker decodes `logs_json`, as the api put it on the stream, to `records`.
fn carried(logs_json: &[u8], records: &[LogRecord]) {
    match encoded_and_decoded(OffsetDateTime::UNIX_EPOCH, &Tenant::default(), logs_json) {
        Ok(entry) => assert_eq!(
            entry.logs, records,
            "the worker decoded other logs than the api accepted"
        ),
        Err(error) => panic!("the worker cannot decode logs the api accepted: {error}"),
    }
}

/// A stream entry as Redis returns it, its fields and values separated by
/// [`FIELD_SEPARATOR`]: decoding never panics, and an entry that decodes encodes back to
/// itself.
pub fn stream_entry(data: &[u8]) {
    let parts: Vec<&[u8]> = data.split(|&byte| byte == FIELD_SEPARATOR).collect();
    let fields: Vec<(&[u8], &[u8])> = parts
        .chunks_exact(2)
        .map(|pair| (pair[0], pair[1]))
        .collect();
    let Ok(entry) = codec::decode(&fields) else {
        return;
    };
    let logs = match serde_json::to_vec(&entry.logs) {
        Ok(logs) => logs,
        Err(error) => panic!("decoded logs do not serialise: {error}"),
    };
    assert_eq!(
        encoded_and_decoded(entry.received_at, &entry.tenant, &logs).as_ref(),
        Ok(&entry),
        "an entry did not survive encoding again"
    );
}

/// What the worker decodes from the entry the api encodes.
fn encoded_and_decoded(
    received_at: OffsetDateTime,
    tenant: &Tenant,
    logs_json: &[u8],
) -> Result<Entry, DecodeError> {
    let fields = codec::encode(received_at, tenant, logs_json);
    let pairs: Vec<(&str, &[u8])> = fields
        .iter()
        .map(|(name, value)| (*name, value.as_bytes()))
        .collect();
    codec::decode(&pairs)
}

//! The generations that keep the query cache from ever being stale.
//!
//! A cached query result is keyed by the generation of what it reads: a device, a
//! service or a trace of one tenant. The worker bumps the generations of everything a
//! commit holds logs of, after the commit and before acknowledging it, which retires
//! every cached result that could miss those logs. Each kind has its own Redis hash under
//! the cache prefix, its fields `<tenant>/<name>`:
//!
//! | hash                          | field                    | query                    |
//! | ----------------------------- | ------------------------ | ------------------------ |
//! | `<prefix>:generations`        | `<tenant>/<device>`      | `/api/logs/{device}`     |
//! | `<prefix>:generations:services` | `<tenant>/<service>`   | `/api/services/{name}/logs` |
//! | `<prefix>:generations:traces` | `<tenant>/<bucket>`      | `/api/traces/{id}/logs`  |
//!
//! Devices and services are as many as a fleet has. Trace ids are not bounded, so traces
//! share [`TRACE_BUCKETS`] generations per tenant by a hash of their id: a commit retires
//! the cached results of the other traces in its buckets too, which costs cache hits,
//! never freshness, and keeps the hash's size fixed.

use std::collections::BTreeSet;

use crate::record::LogRecord;
use crate::tenant::Tenant;

/// Generations shared by the traces of a tenant.
pub const TRACE_BUCKETS: u64 = 4096;

/// What a query reads, and so what its cached result depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A device's logs.
    Device,
    /// A service's logs.
    Service,
    /// A trace's logs.
    Trace,
}

/// The hashes of generations under a cache prefix.
#[derive(Debug, Clone)]
pub struct GenerationKeys {
    devices: String,
    services: String,
    traces: String,
}

impl GenerationKeys {
    /// The hashes under `cache_prefix`.
    pub fn new(cache_prefix: &str) -> Self {
        let devices = format!("{cache_prefix}:generations");
        Self {
            services: format!("{devices}:services"),
            traces: format!("{devices}:traces"),
            devices,
        }
    }

    /// The hash of `kind`'s generations.
    pub fn key(&self, kind: Kind) -> &str {
        match kind {
            Kind::Device => &self.devices,
            Kind::Service => &self.services,
            Kind::Trace => &self.traces,
        }
    }
}

/// The field of the generation that a query of `kind` for `name` (a device, a service or
/// a trace id) of `tenant` reads.
pub fn field(tenant: &Tenant, kind: Kind, name: &str) -> String {
    match kind {
        Kind::Device | Kind::Service => tenant.scope(name),
        Kind::Trace => tenant.scope(&trace_bucket(name).to_string()),
    }
}

/// The bucket of trace `id`: FNV-1a of its bytes, the same in every process and build.
pub fn trace_bucket(id: &str) -> u64 {
    fnv1a(id.bytes()) % TRACE_BUCKETS
}

/// FNV-1a of `bytes`: a hash that is the same in every process and build.
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.into_iter().fold(OFFSET, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    })
}

/// The generations a commit of `logs` of `tenant` retires: each `(kind, field)` once.
pub fn retired<'a>(
    tenant: &Tenant,
    logs: impl IntoIterator<Item = &'a LogRecord>,
    into: &mut BTreeSet<(Kind, String)>,
) {
    for log in logs {
        into.insert((
            Kind::Device,
            field(tenant, Kind::Device, log.device_id.as_str()),
        ));
        if let Some(service) = &log.service_name {
            into.insert((
                Kind::Service,
                field(tenant, Kind::Service, service.as_str()),
            ));
        }
        if let Some(trace) = &log.trace_id {
            into.insert((Kind::Trace, field(tenant, Kind::Trace, trace.as_str())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_buckets_are_stable_and_spread() {
        // Fixed values: api and worker of different builds must agree.
        assert_eq!(trace_bucket(""), 0xcbf2_9ce4_8422_2325 % TRACE_BUCKETS);
        assert_eq!(trace_bucket("a"), 0xaf63_dc4c_8601_ec8c % TRACE_BUCKETS);
        let buckets: BTreeSet<u64> = (0..1000)
            .map(|i| trace_bucket(&format!("{i:032x}")))
            .collect();
        assert!(buckets.len() > 850, "{}", buckets.len());
    }

    #[test]
    fn a_commit_retires_its_devices_services_and_traces_per_tenant() {
        let logs: Vec<LogRecord> = serde_json::from_str(
            r#"[{"device_id":"d1","log_level":"INFO","message":"m","service_name":"s","trace_id":"t"},
                {"device_id":"d1","log_level":"INFO","message":"m"}]"#,
        )
        .unwrap();
        let acme = Tenant::parse("acme").unwrap();
        let mut retired_fields = BTreeSet::new();
        retired(&acme, &logs, &mut retired_fields);
        let bucket = trace_bucket("t");
        assert_eq!(
            retired_fields,
            BTreeSet::from([
                (Kind::Device, "acme/d1".to_owned()),
                (Kind::Service, "acme/s".to_owned()),
                (Kind::Trace, format!("acme/{bucket}")),
            ])
        );
        let keys = GenerationKeys::new("cache");
        assert_eq!(keys.key(Kind::Device), "cache:generations");
        assert_eq!(keys.key(Kind::Trace), "cache:generations:traces");
    }
}

//! API keys for tests: new keys, and the keys file (`LOGPIPELINE_API_KEYS_FILE`, or the
//! Secret a LogPipeline names) that lists their hashes by tenant, written here from the
//! documented format rather than by the api's own code.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// A key the api hands out: its secret, and what it is for.
#[derive(Debug, Clone)]
pub struct ApiKey {
    /// The tenant it belongs to.
    pub tenant: String,
    /// Its name within the tenant.
    pub name: String,
    /// What clients send: `Authorization: Bearer <secret>` or `X-API-Key: <secret>`.
    pub secret: String,
    /// `write`, `read` or both.
    pub scopes: Vec<&'static str>,
}

impl ApiKey {
    /// A new random key of `tenant` named `name` with `scopes`.
    pub fn new(tenant: &str, name: &str, scopes: &[&'static str]) -> Self {
        Self {
            tenant: tenant.to_owned(),
            name: name.to_owned(),
            secret: format!(
                "lpk_{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            ),
            scopes: scopes.to_vec(),
        }
    }

    /// The `Authorization` header value.
    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.secret)
    }
}

#[derive(Serialize)]
struct KeysFile<'a> {
    tenants: BTreeMap<&'a str, TenantKeys<'a>>,
}

#[derive(Serialize, Default)]
struct TenantKeys<'a> {
    keys: Vec<KeyEntry<'a>>,
}

#[derive(Serialize)]
struct KeyEntry<'a> {
    name: &'a str,
    sha256: String,
    scopes: &'a [&'static str],
}

/// The keys file listing `keys`, as YAML.
pub fn keys_file(keys: &[&ApiKey]) -> String {
    let mut file = KeysFile {
        tenants: BTreeMap::new(),
    };
    for key in keys {
        file.tenants
            .entry(key.tenant.as_str())
            .or_default()
            .keys
            .push(KeyEntry {
                name: &key.name,
                sha256: sha256_hex(&key.secret),
                scopes: &key.scopes,
            });
    }
    serde_yaml::to_string(&file).unwrap_or_default()
}

fn sha256_hex(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

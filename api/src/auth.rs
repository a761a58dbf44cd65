//! Who may call the api: API keys, grouped by tenant.
//!
//! The keys file (`LOGPIPELINE_API_KEYS_FILE`, or `LOGPIPELINE_API_KEYS` inline) lists
//! each tenant's keys by the SHA-256 of their secret, never the secret itself:
//!
//! ```yaml
//! tenants:
//!   acme:
//!     keys:
//!       - name: gateway-2026-12
//!         sha256: 6d5f8c…   # printf %s "$KEY" | sha256sum
//!         scopes: [write]
//! ```
//!
//! Clients send `Authorization: Bearer <key>` or `X-API-Key: <key>`. Ingest needs the
//! `write` scope, queries and statistics `read`. A tenant has several keys so that they
//! can be rotated: add the new one, move the clients, remove the old one. The api re-reads
//! the file when it changes, without a restart; a file that does not parse is refused
//! whole and the keys read before stay in force.
//!
//! With authentication off (`LOGPIPELINE_AUTH=off`, for a local stack) every request
//! acts as tenant `default` with both scopes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use logpipeline_core::tenant::Tenant;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::error::{Error, Result};
use crate::limits::RateLimits;
pub use crate::scope::Scope;

/// Who a request acts for: a tenant, through one of its keys.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The tenant whose logs the request writes or reads.
    pub tenant: Tenant,
    /// `<tenant>/<key name>`, the key's identity for rate limits and logs; `-` without
    /// authentication.
    pub key: Arc<str>,
    write: bool,
    read: bool,
}

impl Principal {
    /// Anyone, when authentication is off: tenant `default`, both scopes.
    fn anonymous() -> Self {
        Self {
            tenant: Tenant::default(),
            key: "-".into(),
            write: true,
            read: true,
        }
    }

    fn allows(&self, scope: Scope) -> bool {
        match scope {
            Scope::Write => self.write,
            Scope::Read => self.read,
        }
    }
}

/// The keys file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysFile {
    tenants: BTreeMap<String, TenantKeys>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantKeys {
    keys: Vec<KeyEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    name: String,
    sha256: String,
    scopes: Vec<Scope>,
}

/// Why a keys file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The file cannot be read.
    #[error("cannot read the API keys file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The text is not a keys file.
    #[error("the API keys are invalid: {0}")]
    Invalid(String),
}

/// The keys in force, by the SHA-256 of their secret.
#[derive(Debug, Default)]
pub struct Keys {
    by_hash: HashMap<[u8; 32], Principal>,
}

impl Keys {
    /// Parses and checks a keys file: valid tenant names, 64 hex digits per hash, at
    /// least one scope per key, key names unique within a tenant, hashes unique overall.
    pub fn parse(text: &str) -> Result<Self, KeysError> {
        let file: KeysFile =
            serde_yaml::from_str(text).map_err(|error| KeysError::Invalid(error.to_string()))?;
        let mut by_hash = HashMap::new();
        for (name, tenant_keys) in file.tenants {
            let tenant =
                Tenant::parse(&name).map_err(|error| KeysError::Invalid(error.to_string()))?;
            let mut names = HashSet::new();
            for entry in tenant_keys.keys {
                let invalid = |why: &str| {
                    KeysError::Invalid(format!("tenant {tenant}, key {:?}: {why}", entry.name))
                };
                if entry.name.is_empty() || entry.name.len() > 128 {
                    return Err(invalid("the name must be 1 to 128 characters"));
                }
                if !names.insert(entry.name.clone()) {
                    return Err(invalid("the name is used twice"));
                }
                if entry.scopes.is_empty() {
                    return Err(invalid("scopes must list write, read or both"));
                }
                let hash = parse_sha256(&entry.sha256)
                    .ok_or_else(|| invalid("sha256 must be 64 hexadecimal digits"))?;
                let principal = Principal {
                    tenant: tenant.clone(),
                    key: format!("{tenant}/{}", entry.name).into(),
                    write: entry.scopes.contains(&Scope::Write),
                    read: entry.scopes.contains(&Scope::Read),
                };
                if by_hash.insert(hash, principal).is_some() {
                    return Err(invalid("the same key is listed twice"));
                }
            }
        }
        Ok(Self { by_hash })
    }

    /// Reads and parses the keys file at `path`.
    pub fn read(path: &Path) -> Result<Self, KeysError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeysError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The principal of `secret`, if it is a key in force.
    fn find(&self, secret: &str) -> Option<&Principal> {
        self.by_hash.get(&sha256(secret))
    }
}

fn sha256(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut hash = [0; 32];
    for (byte, pair) in hash.iter_mut().zip(hex.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(hash)
}

/// A new key: `lpk_` and 64 random hexadecimal digits (256 bits from the operating
/// system's generator), with its SHA-256 in hexadecimal.
pub fn generate_key() -> (String, String) {
    let secret = format!(
        "lpk_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let hash = sha256(&secret).iter().map(|b| format!("{b:02x}")).collect();
    (secret, hash)
}

/// How requests are authenticated.
#[derive(Clone)]
pub enum Auth {
    /// Every request acts as tenant `default` with both scopes.
    Off,
    /// Requests need a key in force.
    Keys(Arc<RwLock<Arc<Keys>>>),
}

impl Auth {
    /// Authentication with `keys`.
    pub fn with_keys(keys: Keys) -> Self {
        Self::Keys(Arc::new(RwLock::new(Arc::new(keys))))
    }

    /// Puts `keys` in force, for the requests that follow.
    pub fn replace(&self, keys: Keys) {
        if let Self::Keys(current) = self {
            let mut current = current
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            *current = Arc::new(keys);
        }
    }

    /// Who the request with `headers` acts for, if it may use `scope`.
    pub fn authenticate(&self, headers: &HeaderMap, scope: Scope) -> Result<Principal> {
        self.authenticate_with(
            |name| headers.get(name).and_then(|value| value.to_str().ok()),
            scope,
        )
    }

    /// Who a request acts for, if it may use `scope`, its headers (or gRPC metadata)
    /// read through `header`, which gets lowercase names.
    pub fn authenticate_with<'a>(
        &self,
        header: impl Fn(&str) -> Option<&'a str>,
        scope: Scope,
    ) -> Result<Principal> {
        let keys = match self {
            Self::Off => return Ok(Principal::anonymous()),
            Self::Keys(keys) => keys
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clone(),
        };
        let secret = presented_key(header).ok_or(Error::Unauthorized)?;
        let principal = keys.find(secret).ok_or(Error::Unauthorized)?;
        if !principal.allows(scope) {
            return Err(Error::Forbidden { scope });
        }
        Ok(principal.clone())
    }
}

/// The key a request presents: `Authorization: Bearer <key>`, else `X-API-Key`.
fn presented_key<'a>(header: impl Fn(&str) -> Option<&'a str>) -> Option<&'a str> {
    if let Some(value) = header("authorization") {
        let (kind, key) = value.split_once(' ')?;
        return kind
            .eq_ignore_ascii_case("bearer")
            .then(|| key.trim())
            .filter(|key| !key.is_empty());
    }
    header("x-api-key")
        .map(str::trim)
        .filter(|key| !key.is_empty())
}

/// Re-reads the keys file at `path` every `every` and puts its keys in force when its
/// text changed, until `shutdown`. A Kubernetes Secret mounted as a volume changes this
/// way, within about a minute of an update.
pub async fn watch(auth: Auth, path: PathBuf, every: Duration, shutdown: CancellationToken) {
    let mut last = std::fs::read_to_string(&path).ok();
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(text) => text,
            Err(error) => {
                error!(%error, path = %path.display(), "cannot read the API keys file; the keys read before stay in force");
                continue;
            }
        };
        if last.as_deref() == Some(text.as_str()) {
            continue;
        }
        match Keys::parse(&text) {
            // As at start-up: a file that lists no key would lock every client out.
            Ok(keys) if keys.is_empty() => {
                error!(path = %path.display(), "the API keys file changed and lists no key; the keys read before stay in force");
            }
            Ok(keys) => {
                info!(keys = keys.len(), path = %path.display(), "API keys reloaded");
                auth.replace(keys);
            }
            Err(error) => {
                error!(%error, path = %path.display(), "the API keys file changed and is invalid; the keys read before stay in force");
            }
        }
        last = Some(text);
    }
}

/// The state of [`require_write`] and [`require_read`].
#[derive(Clone)]
pub struct Guard {
    /// How requests are authenticated.
    pub auth: Auth,
    /// The request-rate limits.
    pub limits: RateLimits,
}

/// Admits requests that may write: within the address's rate, with a key of scope
/// `write`, within the key's rate. The [`Principal`] goes into the request's extensions.
pub async fn require_write(
    State(guard): State<Guard>,
    request: Request,
    next: Next,
) -> Result<Response> {
    admit(&guard, Scope::Write, request, next).await
}

/// As [`require_write`], for scope `read`.
pub async fn require_read(
    State(guard): State<Guard>,
    request: Request,
    next: Next,
) -> Result<Response> {
    admit(&guard, Scope::Read, request, next).await
}

async fn admit(guard: &Guard, scope: Scope, mut request: Request, next: Next) -> Result<Response> {
    guard.limits.check_address(&request)?;
    let principal = guard.auth.authenticate(request.headers(), scope)?;
    guard.limits.check_key(&principal.key)?;
    request.extensions_mut().insert(principal);
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    fn keys_for(entries: &[(&str, &str, &str, &str)]) -> String {
        let mut text = String::from("tenants:\n");
        let mut tenants: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for (tenant, name, secret, scopes) in entries {
            let hash: String = sha256(secret).iter().map(|b| format!("{b:02x}")).collect();
            tenants.entry(tenant).or_default().push(format!(
                "      - {{name: {name}, sha256: {hash}, scopes: [{scopes}]}}\n"
            ));
        }
        for (tenant, keys) in tenants {
            text.push_str(&format!("  {tenant}:\n    keys:\n"));
            text.extend(keys);
        }
        text
    }

    #[test]
    fn a_key_acts_for_its_tenant_within_its_scopes() {
        let keys = Keys::parse(&keys_for(&[
            ("acme", "writer", "w-secret", "write"),
            ("acme", "reader", "r-secret", "read"),
            ("globex", "both", "b-secret", "write, read"),
        ]))
        .unwrap();
        let auth = Auth::with_keys(keys);
        let writer = auth
            .authenticate(&headers("authorization", "Bearer w-secret"), Scope::Write)
            .unwrap();
        assert_eq!(
            (writer.tenant.as_str(), &*writer.key),
            ("acme", "acme/writer")
        );
        assert!(matches!(
            auth.authenticate(&headers("authorization", "Bearer w-secret"), Scope::Read),
            Err(Error::Forbidden { scope: Scope::Read })
        ));
        let both = auth
            .authenticate(&headers("x-api-key", "b-secret"), Scope::Read)
            .unwrap();
        assert_eq!(both.tenant.as_str(), "globex");
        for (name, value) in [
            ("authorization", "Bearer wrong"),
            ("authorization", "Basic w-secret"),
            ("authorization", "Bearer "),
            ("x-api-key", ""),
        ] {
            assert!(
                matches!(
                    auth.authenticate(&headers(name, value), Scope::Write),
                    Err(Error::Unauthorized)
                ),
                "{name}: {value}"
            );
        }
        assert!(matches!(
            auth.authenticate(&HeaderMap::new(), Scope::Write),
            Err(Error::Unauthorized)
        ));
    }

    #[test]
    fn replaced_keys_apply_to_the_next_request() {
        let auth =
            Auth::with_keys(Keys::parse(&keys_for(&[("a", "old", "old", "write")])).unwrap());
        auth.replace(Keys::parse(&keys_for(&[("a", "new", "new", "write")])).unwrap());
        let old = headers("authorization", "Bearer old");
        assert!(auth.authenticate(&old, Scope::Write).is_err());
        let new = headers("authorization", "Bearer new");
        assert!(auth.authenticate(&new, Scope::Write).is_ok());
    }

    #[test]
    fn without_authentication_everyone_is_the_default_tenant() {
        let principal = Auth::Off
            .authenticate(&HeaderMap::new(), Scope::Read)
            .unwrap();
        assert_eq!(principal.tenant, Tenant::default());
    }

    #[test]
    fn invalid_files_say_what_is_wrong() {
        let hash = "a".repeat(64);
        for (text, expected) in [
            ("tenants: [", "invalid"),
            ("tenant: {}", "unknown field"),
            (
                &format!(
                    "tenants: {{Acme: {{keys: [{{name: k, sha256: {hash}, scopes: [write]}}]}}}}"
                ),
                "tenant name",
            ),
            (
                "tenants: {a: {keys: [{name: k, sha256: abc, scopes: [write]}]}}",
                "64 hexadecimal",
            ),
            (
                &format!("tenants: {{a: {{keys: [{{name: k, sha256: {hash}, scopes: []}}]}}}}"),
                "scopes must list",
            ),
            (
                &format!(
                    "tenants: {{a: {{keys: [{{name: k, sha256: {hash}, scopes: [admin]}}]}}}}"
                ),
                "unknown variant",
            ),
            (
                &format!(
                    "tenants: {{a: {{keys: [{{name: k, sha256: {hash}, scopes: [read]}}, {{name: k, sha256: {}, scopes: [read]}}]}}}}",
                    "b".repeat(64)
                ),
                "used twice",
            ),
            (
                &format!(
                    "tenants: {{a: {{keys: [{{name: k, sha256: {hash}, scopes: [read]}}]}}, b: {{keys: [{{name: k, sha256: {hash}, scopes: [read]}}]}}}}"
                ),
                "listed twice",
            ),
        ] {
            let error = Keys::parse(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }

    #[test]
    fn generated_keys_are_random_and_hashed() {
        let (secret, hash) = generate_key();
        let (other, _) = generate_key();
        assert_ne!(secret, other);
        assert!(secret.starts_with("lpk_") && secret.len() == 68);
        assert_eq!(parse_sha256(&hash), Some(sha256(&secret)));
    }
}

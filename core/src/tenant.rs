//! Tenants: who a log belongs to. Every log, query, statistic, cache entry and
//! idempotency key is scoped to one; a deployment without authentication has only
//! [`Tenant::default`].

use std::fmt;
use std::sync::Arc;

/// A tenant's name: 1 to 63 lowercase letters, digits and `-`, starting with a letter
/// or digit (a DNS label, so it fits keys, labels and file names alike).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tenant(Arc<str>);

/// The tenant of a deployment without authentication, and of every log stored before
/// tenants existed.
pub const DEFAULT_TENANT: &str = "default";

/// Why a tenant name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "tenant name {0:?} must be 1 to 63 lowercase letters, digits and '-', starting with a letter or digit"
)]
pub struct InvalidTenant(pub String);

impl Tenant {
    /// Checks `name`.
    pub fn parse(name: &str) -> Result<Self, InvalidTenant> {
        let valid = (1..=63).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !name.starts_with('-');
        if valid {
            Ok(Self(name.into()))
        } else {
            Err(InvalidTenant(name.to_owned()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Device `device` of this tenant as one key, `<tenant>/<device>`: unambiguous, since
    /// tenant names hold no `/` (the field of a device's query-cache generation).
    pub fn scope(&self, device: &str) -> String {
        format!("{}/{device}", self.0)
    }
}

impl Default for Tenant {
    fn default() -> Self {
        Self(DEFAULT_TENANT.into())
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        for good in ["default", "acme", "a", "team-7", &"x".repeat(63)] {
            assert_eq!(Tenant::parse(good).unwrap().as_str(), good);
        }
        for bad in ["", "Acme", "-x", "a_b", "a.b", "a/b", &"x".repeat(64), "é"] {
            assert!(Tenant::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Tenant::default().as_str(), DEFAULT_TENANT);
    }
}

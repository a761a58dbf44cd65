//! What an API key allows: the scopes of the keys file.

use serde::Deserialize;

/// What a key allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Ingest logs.
    Write,
    /// Query logs and statistics.
    Read,
}

impl Scope {
    /// The scope's name in the keys file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Write => "write",
            Self::Read => "read",
        }
    }
}

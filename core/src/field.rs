//! Why a field of a log was refused, shared by the checks of every field.

/// Why a field was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FieldError(String);

impl FieldError {
    pub(crate) fn new(why: String) -> Self {
        Self(why)
    }
}

//! Why the worker cannot start or run.

/// The worker's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is invalid.
    #[error("invalid setting: {0}")]
    Config(String),

    /// Redis failed in a way retrying does not fix.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),

    /// PostgreSQL settings are invalid.
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),

    /// The metrics registry refused a metric.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),

    /// The metrics address cannot be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

//! Why the worker cannot start or run.

/// The worker's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Redis failed in a way retrying does not fix.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),

    /// PostgreSQL settings are invalid.
    #[error("PostgreSQL: {0}")]
    Database(#[from] sqlx::Error),

    /// The settings cannot work.
    #[error("{0}")]
    Config(#[from] logpipeline_core::config::ConfigError),

    /// A migration failed for a reason other than an unreachable database.
    #[error("cannot apply the schema: {0}")]
    Schema(#[from] sqlx::migrate::MigrateError),

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

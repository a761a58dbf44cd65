//! Settings the api and worker share, as `clap` argument groups: each is a flag with an
//! environment-variable fallback, so the same binary runs from flags locally and from
//! ConfigMaps and Secrets in Kubernetes.

use clap::{Args, ValueEnum};
use sqlx::postgres::PgConnectOptions;

use crate::generations::GenerationKeys;

/// Where Redis is: `REDIS_URL`, or else the seed system's `REDIS_HOST` and `REDIS_PORT`.
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis holding the stream and the query cache [default: redis://127.0.0.1:6379].
    /// Configure it with AOF persistence and an eviction policy that spares keys without
    /// a TTL (`noeviction` or `volatile-*`): the stream must never be evicted.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,

    /// Redis's host when `REDIS_URL` is unset, as a seed deployment configures it
    /// [default: localhost].
    #[arg(long, env = "REDIS_HOST")]
    pub redis_host: Option<String>,

    /// Redis's port when `REDIS_URL` is unset, as a seed deployment configures it
    /// [default: 6379].
    #[arg(long, env = "REDIS_PORT")]
    pub redis_port: Option<String>,
}

impl RedisArgs {
    /// The connection settings: `REDIS_URL` if set; else `REDIS_HOST` and `REDIS_PORT`
    /// (either may be missing); else Redis on this host.
    pub fn connection_info(&self) -> Result<redis::ConnectionInfo, ConfigError> {
        let url = match (&self.redis_url, &self.redis_host, &self.redis_port) {
            (Some(url), ..) => url.clone(),
            (None, None, None) => "redis://127.0.0.1:6379".to_owned(),
            (None, host, port) => {
                let host = host.as_deref().unwrap_or("localhost");
                let port = parse_port("REDIS_PORT", port.as_deref(), 6379)?;
                return redis::IntoConnectionInfo::into_connection_info((host, port))
                    .map_err(|error| ConfigError(format!("REDIS_HOST is invalid: {error}")));
            }
        };
        redis::IntoConnectionInfo::into_connection_info(url.as_str())
            .map_err(|error| ConfigError(format!("REDIS_URL is invalid: {error}")))
    }
}

/// Settings that cannot work together, or a value that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// A port number from setting `name`, `default` when unset.
fn parse_port(name: &str, value: Option<&str>, default: u16) -> Result<u16, ConfigError> {
    value.map_or(Ok(default), |value| {
        value
            .trim()
            .parse()
            .map_err(|_| ConfigError(format!("{name} must be a port number, got {value:?}")))
    })
}

/// Which stream and consumer group carry the logs.
#[derive(Debug, Clone, Args)]
pub struct StreamArgs {
    /// The Redis Stream accepted logs are queued on.
    #[arg(long, env = "LOGPIPELINE_STREAM", default_value = "logs:stream")]
    pub stream: String,

    /// The consumer group the workers read the stream through.
    #[arg(long, env = "LOGPIPELINE_GROUP", default_value = "log_workers")]
    pub group: String,
}

/// The query cache in Redis.
#[derive(Debug, Clone, Args)]
pub struct CacheArgs {
    /// Prefix of the query cache's Redis keys. The api caches query results under it;
    /// the worker bumps generations under it on every commit, which retires the cached
    /// results of the devices, services and traces the commit holds logs of.
    #[arg(long, env = "LOGPIPELINE_CACHE_PREFIX", default_value = "cache")]
    pub cache_prefix: String,
}

impl CacheArgs {
    /// The hashes of generations under the prefix.
    pub fn generation_keys(&self) -> GenerationKeys {
        GenerationKeys::new(&self.cache_prefix)
    }
}

/// Where PostgreSQL is: `DATABASE_URL`, or else the seed system's `POSTGRES_HOST`,
/// `POSTGRES_PORT`, `POSTGRES_USER`, `POSTGRES_PASSWORD` and `POSTGRES_DB`.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL database holding the `logs` table
    /// [default: postgres://postgres@127.0.0.1:5432/logs].
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// PostgreSQL's host when `DATABASE_URL` is unset, as a seed deployment configures it
    /// [default: localhost].
    #[arg(long, env = "POSTGRES_HOST")]
    pub postgres_host: Option<String>,

    /// Its port when `DATABASE_URL` is unset [default: 5432].
    #[arg(long, env = "POSTGRES_PORT")]
    pub postgres_port: Option<String>,

    /// Its user when `DATABASE_URL` is unset [default: loguser, the seed's].
    #[arg(long, env = "POSTGRES_USER")]
    pub postgres_user: Option<String>,

    /// Its password when `DATABASE_URL` is unset [default: logpass, the seed's].
    #[arg(long, env = "POSTGRES_PASSWORD", hide_env_values = true)]
    pub postgres_password: Option<String>,

    /// Its database when `DATABASE_URL` is unset [default: logsdb, the seed's].
    #[arg(long, env = "POSTGRES_DB")]
    pub postgres_db: Option<String>,

    /// Most connections this process opens to PostgreSQL.
    #[arg(long, env = "LOGPIPELINE_DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_max_connections: u32,
}

impl DatabaseArgs {
    /// The connection settings: `DATABASE_URL` if set; else the `POSTGRES_*` settings
    /// with the seed's defaults for those missing; else PostgreSQL on this host.
    pub fn connect_options(&self) -> Result<PgConnectOptions, ConfigError> {
        let seed = [
            &self.postgres_host,
            &self.postgres_port,
            &self.postgres_user,
            &self.postgres_password,
            &self.postgres_db,
        ];
        let url = match &self.database_url {
            Some(url) => url.as_str(),
            None if seed.iter().all(|value| value.is_none()) => {
                "postgres://postgres@127.0.0.1:5432/logs"
            }
            None => {
                let or = |value: &Option<String>, default: &str| {
                    value.clone().unwrap_or_else(|| default.to_owned())
                };
                let port = parse_port("POSTGRES_PORT", self.postgres_port.as_deref(), 5432)?;
                return Ok(PgConnectOptions::new_without_pgpass()
                    .host(&or(&self.postgres_host, "localhost"))
                    .port(port)
                    .username(&or(&self.postgres_user, "loguser"))
                    .password(&or(&self.postgres_password, "logpass"))
                    .database(&or(&self.postgres_db, "logsdb")));
            }
        };
        url.parse()
            .map_err(|error| ConfigError(format!("DATABASE_URL is invalid: {error}")))
    }
}

/// How the process reports on itself.
#[derive(Debug, Clone, Args)]
pub struct TelemetryArgs {
    /// Format of the process's own logs: `text` for people, `json` for log collectors.
    /// Levels and filters come from `RUST_LOG` (default `info`).
    #[arg(long, env = "LOGPIPELINE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Format of the process's own logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database(settings: &[(&str, &str)]) -> DatabaseArgs {
        let mut args = DatabaseArgs {
            database_url: None,
            postgres_host: None,
            postgres_port: None,
            postgres_user: None,
            postgres_password: None,
            postgres_db: None,
            db_max_connections: 1,
        };
        for (name, value) in settings {
            let value = Some((*value).to_owned());
            match *name {
                "url" => args.database_url = value,
                "host" => args.postgres_host = value,
                "port" => args.postgres_port = value,
                "user" => args.postgres_user = value,
                "password" => args.postgres_password = value,
                "db" => args.postgres_db = value,
                other => panic!("{other}"),
            }
        }
        args
    }

    #[test]
    fn the_database_url_wins_over_the_seed_settings() {
        let options = database(&[("url", "postgres://a:b@db:6000/x"), ("host", "seed")])
            .connect_options()
            .unwrap();
        assert_eq!((options.get_host(), options.get_port()), ("db", 6000));
        assert_eq!(options.get_database(), Some("x"));
    }

    #[test]
    fn seed_settings_fill_in_the_seed_defaults() {
        let options = database(&[("host", "postgres"), ("password", "p@ss/word")])
            .connect_options()
            .unwrap();
        assert_eq!((options.get_host(), options.get_port()), ("postgres", 5432));
        assert_eq!(options.get_username(), "loguser");
        assert_eq!(options.get_database(), Some("logsdb"));
        let error = database(&[("port", "tcp://10.0.0.1:5432")])
            .connect_options()
            .unwrap_err();
        assert!(
            error.0.contains("POSTGRES_PORT must be a port number"),
            "{error}"
        );
    }

    #[test]
    fn without_any_setting_postgres_is_local() {
        let options = database(&[]).connect_options().unwrap();
        assert_eq!(
            (options.get_host(), options.get_port()),
            ("127.0.0.1", 5432)
        );
        assert_eq!(options.get_database(), Some("logs"));
    }

    #[test]
    fn redis_comes_from_its_url_or_the_seed_host_and_port() {
        let redis = |url: Option<&str>, host: Option<&str>, port: Option<&str>| RedisArgs {
            redis_url: url.map(str::to_owned),
            redis_host: host.map(str::to_owned),
            redis_port: port.map(str::to_owned),
        };
        let addr = |args: RedisArgs| args.connection_info().map(|info| info.addr().to_string());
        assert_eq!(
            addr(redis(Some("redis://r:7000"), Some("seed"), None)).unwrap(),
            "r:7000"
        );
        assert_eq!(
            addr(redis(None, Some("redis"), None)).unwrap(),
            "redis:6379"
        );
        assert_eq!(
            addr(redis(None, None, Some("6380"))).unwrap(),
            "localhost:6380"
        );
        assert_eq!(addr(redis(None, None, None)).unwrap(), "127.0.0.1:6379");
        assert!(addr(redis(None, None, Some("tcp://10.0.0.1:6379"))).is_err());
    }
}

//! Settings the api and worker share, as `clap` argument groups: each is a flag with an
//! environment-variable fallback, so the same binary runs from flags locally and from
//! ConfigMaps and Secrets in Kubernetes.

use clap::{Args, ValueEnum};
use sqlx::postgres::PgConnectOptions;

use crate::generations::GenerationKeys;
use crate::stream::{MAX_SHARDS, Shards};

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

    /// Whether Redis is a Redis Cluster. `REDIS_URL` then names one or more of its nodes,
    /// comma-separated (`redis://r0:6379,redis://r1:6379`); the rest are found from them.
    #[arg(long, env = "LOGPIPELINE_REDIS_CLUSTER", default_value_t = false,
          action = clap::ArgAction::Set)]
    pub redis_cluster: bool,
}

impl RedisArgs {
    /// Redis (or a Redis Cluster, known by one or more of its nodes) at `url`, with
    /// every other setting unset.
    pub fn of_url(url: impl Into<String>, cluster: bool) -> Self {
        Self {
            redis_url: Some(url.into()),
            redis_host: None,
            redis_port: None,
            redis_cluster: cluster,
        }
    }

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

/// How durably Redis must hold an entry: for the api before it answers 200, for the
/// worker before it stores the entry.
#[derive(Debug, Clone, Args)]
pub struct DurabilityArgs {
    /// When an accepted log is answered 200: `primary` once the Redis primary holds it
    /// (in its append-only file within `appendfsync`'s second: a primary lost with its
    /// disk loses up to that second), `replicated` once `--redis-replicas` replicas hold
    /// it too (Redis `WAIT`), which survives the primary's loss (docs/operations.md).
    /// With `replicated` the worker too stores only entries the replicas hold, so an
    /// entry a failover loses was neither answered 200 nor stored.
    #[arg(long, env = "LOGPIPELINE_REDIS_DURABILITY", value_enum, default_value_t = Durability::Primary)]
    pub redis_durability: Durability,

    /// With `replicated` durability: how many replicas must hold an entry.
    #[arg(long, env = "LOGPIPELINE_REDIS_REPLICAS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=16))]
    pub redis_replicas: u32,

    /// With `replicated` durability: milliseconds to wait for the replicas; past it the
    /// answer is 504 `outcome_unknown` (the primary holds the logs; retry with the same
    /// `Idempotency-Key`).
    #[arg(long, env = "LOGPIPELINE_REDIS_REPLICA_TIMEOUT_MS", default_value_t = 1000,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub redis_replica_timeout_ms: u64,
}

impl DurabilityArgs {
    /// The replicas to wait for, if any.
    pub fn replication(&self) -> Option<Replication> {
        (self.redis_durability == Durability::Replicated).then(|| Replication {
            replicas: self.redis_replicas,
            timeout: std::time::Duration::from_millis(self.redis_replica_timeout_ms),
        })
    }
}

/// When Redis holds an accepted log durably enough to answer 200.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Durability {
    /// The primary holds it.
    Primary,
    /// The primary and the required number of replicas hold it.
    Replicated,
}

/// How many replicas must hold an entry, and for how long to wait for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replication {
    /// Replicas that must acknowledge the entry.
    pub replicas: u32,
    /// How long to wait for them.
    pub timeout: std::time::Duration,
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

    /// Streams the logs are spread over, 1 to 16 (see docs/operations.md). 1 is the
    /// stream alone. The api and the workers must agree; when it shrinks, the workers
    /// drain the shards that are gone.
    #[arg(long, env = "LOGPIPELINE_STREAM_SHARDS", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_SHARDS)))]
    pub stream_shards: u32,
}

impl StreamArgs {
    /// The keys of the stream's shards, on a Redis Cluster when `cluster`.
    pub fn shards(&self, cluster: bool) -> Shards {
        if cluster {
            Shards::on_cluster(&self.stream, self.stream_shards)
        } else {
            Shards::new(&self.stream, self.stream_shards)
        }
    }
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
    /// [default: postgres://postgres@127.0.0.1:5432/logs]. A primary and its standbys are
    /// named together, `postgres://user@primary:5432,standby:5432/logs`: the process
    /// then uses only the server that takes writes, and follows a promoted standby.
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
    /// PostgreSQL at `url` (a primary and its standbys named together, or one server),
    /// with at most `max_connections` connections and every other setting unset.
    pub fn of_url(url: impl Into<String>, max_connections: u32) -> Self {
        Self {
            database_url: Some(url.into()),
            postgres_host: None,
            postgres_port: None,
            postgres_user: None,
            postgres_password: None,
            postgres_db: None,
            db_max_connections: max_connections,
        }
    }

    /// Where PostgreSQL is: `DATABASE_URL` if set; else the `POSTGRES_*` settings with
    /// the seed's defaults for those missing; else PostgreSQL on this host.
    pub fn targets(&self) -> Result<DatabaseTargets, ConfigError> {
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
                return Ok(DatabaseTargets {
                    hosts: vec![
                        PgConnectOptions::new_without_pgpass()
                            .host(&or(&self.postgres_host, "localhost"))
                            .port(port)
                            .username(&or(&self.postgres_user, "loguser"))
                            .password(&or(&self.postgres_password, "logpass"))
                            .database(&or(&self.postgres_db, "logsdb")),
                    ],
                    session: TargetSession::Any,
                });
            }
        };
        DatabaseTargets::parse(url)
            .map_err(|error| ConfigError(format!("DATABASE_URL is invalid: {error}")))
    }
}

/// The servers a process may use, from a URL naming one host or several, as libpq's
/// multi-host URLs do: `postgres://user@primary:5432,standby:5432/logs?target_session_attrs=read-write`.
#[derive(Debug, Clone)]
pub struct DatabaseTargets {
    /// The hosts, in the URL's order, each with the URL's other settings.
    pub hosts: Vec<PgConnectOptions>,
    /// Which of them a connection may use.
    pub session: TargetSession,
}

/// Which servers a connection may use, as libpq's `target_session_attrs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSession {
    /// The first that answers.
    Any,
    /// Only one that accepts writes: the primary, never a standby.
    ReadWrite,
}

impl DatabaseTargets {
    /// Parses a PostgreSQL URL. `target_session_attrs` is `any` or `read-write`
    /// (`primary` is the same); it is `read-write` by default when the URL names
    /// several hosts, since LogPipeline writes, and `any` for one host.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .filter(|(scheme, _)| matches!(*scheme, "postgres" | "postgresql"))
            .ok_or("it must begin with postgres:// or postgresql://")?;
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path_and_query) = rest.split_at(authority_end);
        let (user, host_list) = match authority.rsplit_once('@') {
            Some((user, hosts)) => (format!("{user}@"), hosts),
            None => (String::new(), authority),
        };
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        let mut session = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            match pair.strip_prefix("target_session_attrs=") {
                Some("any") => session = Some(TargetSession::Any),
                Some("read-write" | "primary") => session = Some(TargetSession::ReadWrite),
                Some(other) => {
                    return Err(format!(
                        "target_session_attrs={other} is not supported: LogPipeline writes, so it takes read-write (or primary) or any"
                    ));
                }
                None => kept.push(pair),
            }
        }
        let query = if kept.is_empty() {
            String::new()
        } else {
            format!("?{}", kept.join("&"))
        };
        let hosts = host_list
            .split(',')
            .map(|host| {
                if host.is_empty() && host_list.contains(',') {
                    return Err("a host in the list is empty".to_owned());
                }
                format!("{scheme}://{user}{host}{path}{query}")
                    .parse::<PgConnectOptions>()
                    .map_err(|error| error.to_string())
            })
            .collect::<Result<Vec<_>, _>>()?;
        let session = session.unwrap_or(if hosts.len() > 1 {
            TargetSession::ReadWrite
        } else {
            TargetSession::Any
        });
        Ok(Self { hosts, session })
    }

    /// Whether the process must find the writable one among several servers (or make
    /// sure its one server is writable).
    pub fn follows_primary(&self) -> bool {
        self.hosts.len() > 1 || self.session == TargetSession::ReadWrite
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
            .targets()
            .unwrap();
        let options = &options.hosts[0];
        assert_eq!((options.get_host(), options.get_port()), ("db", 6000));
        assert_eq!(options.get_database(), Some("x"));
    }

    #[test]
    fn seed_settings_fill_in_the_seed_defaults() {
        let targets = database(&[("host", "postgres"), ("password", "p@ss/word")])
            .targets()
            .unwrap();
        let options = &targets.hosts[0];
        assert_eq!((options.get_host(), options.get_port()), ("postgres", 5432));
        assert_eq!(options.get_username(), "loguser");
        assert_eq!(options.get_database(), Some("logsdb"));
        let error = database(&[("port", "tcp://10.0.0.1:5432")])
            .targets()
            .unwrap_err();
        assert!(
            error.0.contains("POSTGRES_PORT must be a port number"),
            "{error}"
        );
    }

    #[test]
    fn without_any_setting_postgres_is_local() {
        let targets = database(&[]).targets().unwrap();
        let options = &targets.hosts[0];
        assert_eq!(
            (options.get_host(), options.get_port()),
            ("127.0.0.1", 5432)
        );
        assert_eq!(options.get_database(), Some("logs"));
    }

    #[test]
    fn a_url_may_name_several_hosts_and_then_takes_the_writable_one() {
        let hosts = |targets: &DatabaseTargets| -> Vec<(String, u16)> {
            targets
                .hosts
                .iter()
                .map(|host| (host.get_host().to_owned(), host.get_port()))
                .collect()
        };
        let targets = database(&[(
            "url",
            "postgres://a:p%40ss@primary:5432,standby:6000/logs?sslmode=disable&application_name=w",
        )])
        .targets()
        .unwrap();
        assert_eq!(
            hosts(&targets),
            [("primary".to_owned(), 5432), ("standby".to_owned(), 6000)]
        );
        assert_eq!(targets.session, TargetSession::ReadWrite);
        for host in &targets.hosts {
            assert_eq!(host.get_username(), "a");
            assert_eq!(host.get_database(), Some("logs"));
            assert_eq!(host.get_application_name(), Some("w"));
        }

        let explicit =
            DatabaseTargets::parse("postgresql://h1,h2:7000/logs?target_session_attrs=any")
                .unwrap();
        assert_eq!(
            hosts(&explicit),
            [("h1".to_owned(), 5432), ("h2".to_owned(), 7000)]
        );
        assert_eq!(explicit.session, TargetSession::Any);
        assert!(explicit.follows_primary());

        let one = DatabaseTargets::parse("postgres://db/logs").unwrap();
        assert_eq!(one.session, TargetSession::Any);
        assert!(!one.follows_primary());
        let one_primary =
            DatabaseTargets::parse("postgres://db/logs?target_session_attrs=primary").unwrap();
        assert_eq!(one_primary.session, TargetSession::ReadWrite);
        assert!(one_primary.follows_primary());

        for (url, message) in [
            (
                "postgres://a,b/logs?target_session_attrs=standby",
                "target_session_attrs=standby is not supported",
            ),
            ("postgres://a,,b/logs", "a host in the list is empty"),
            ("mysql://a/logs", "must begin with postgres://"),
        ] {
            let error = database(&[("url", url)]).targets().unwrap_err();
            assert!(error.0.contains(message), "{url}: {error}");
        }
    }

    #[test]
    fn redis_comes_from_its_url_or_the_seed_host_and_port() {
        let redis = |url: Option<&str>, host: Option<&str>, port: Option<&str>| RedisArgs {
            redis_url: url.map(str::to_owned),
            redis_host: host.map(str::to_owned),
            redis_port: port.map(str::to_owned),
            redis_cluster: false,
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

//! The PostgreSQL schema and connection pool.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::{Connection, PgPool};
use tokio::time::MissedTickBehavior;

use tokio_util::sync::CancellationToken;

use crate::config::{ConfigError, DatabaseArgs};
use crate::retry::until_done;
use crate::{indexes, storage};

/// The schema, from `migrations/`: applied at start-up, idempotent, never edited once
/// released (a change is a new migration).
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// How often a pool that follows the primary checks that its server still takes writes.
const CHECK_PRIMARY_EVERY: Duration = Duration::from_secs(1);

/// How long one check of a server may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// A pool that connects on first use, so a process starts while PostgreSQL is down.
///
/// When the settings name several hosts, or ask for a writable server, the pool uses
/// only a server that takes writes, and follows the primary across a failover: a task
/// checks every second that its server still takes writes and, when it does not, moves
/// the pool to the first of the hosts that does (the one in use first). Connections
/// opened before the move are closed instead of used, so nothing writes to, or reads
/// stale rows from, a server that has become a standby.
pub fn lazy_pool(args: &DatabaseArgs) -> Result<PgPool, ConfigError> {
    lazy_pool_of(args, args.db_max_connections)
}

/// [`lazy_pool`] of at most `max_connections` connections, as a pool kept for one kind
/// of work has.
pub fn lazy_pool_of(args: &DatabaseArgs, max_connections: u32) -> Result<PgPool, ConfigError> {
    let targets = args.targets()?;
    let options = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5));
    if !targets.follows_primary() {
        return Ok(options.connect_lazy_with(targets.hosts[0].clone()));
    }
    let moved = Arc::new(Mutex::new(Instant::now()));
    let pool = options
        .after_connect(|connection, _| {
            Box::pin(async move {
                if takes_writes(connection).await? {
                    Ok(())
                } else {
                    Err(sqlx::Error::Protocol(
                        "the server is read-only (a standby); target_session_attrs asks for read-write"
                            .into(),
                    ))
                }
            })
        })
        .before_acquire({
            let moved = moved.clone();
            move |_, metadata| {
                let opened_since_move = metadata.age <= lock(&moved).elapsed();
                Box::pin(async move { Ok(opened_since_move) })
            }
        })
        .connect_lazy_with(targets.hosts[0].clone());
    tokio::spawn(follow_primary(pool.clone(), targets.hosts, moved));
    Ok(pool)
}

/// Whether PostgreSQL answered its last check, made every [`CHECK_REACHABLE_EVERY`] on a
/// connection of its own: a pool whose connections are all in use is not an outage, and
/// a request need not wait out a pool's acquire timeout to learn of one.
#[derive(Debug, Clone)]
pub struct Reachability {
    up: Arc<AtomicBool>,
}

/// How often [`Reachability`] checks.
pub const CHECK_REACHABLE_EVERY: Duration = Duration::from_secs(1);

impl Reachability {
    /// Checks the servers of `args` until `shutdown`: reachable when one answers (and
    /// takes writes, where the settings ask for a writable server). Reachable until a
    /// check says otherwise.
    pub fn watch(args: &DatabaseArgs, shutdown: CancellationToken) -> Result<Self, ConfigError> {
        let targets = args.targets()?;
        let up = Arc::new(AtomicBool::new(true));
        tokio::spawn({
            let up = up.clone();
            async move {
                let mut kept: Option<PgConnection> = None;
                let mut ticks = tokio::time::interval(CHECK_REACHABLE_EVERY);
                ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
                while shutdown.run_until_cancelled(ticks.tick()).await.is_some() {
                    let answered = match kept.as_mut() {
                        Some(connection) => matches!(
                            tokio::time::timeout(CHECK_TIMEOUT, answers(connection, &targets))
                                .await,
                            Ok(Ok(true))
                        ),
                        None => false,
                    };
                    if !answered {
                        kept = connect_any(&targets).await;
                    }
                    up.store(answered || kept.is_some(), Ordering::Relaxed);
                }
            }
        });
        Ok(Self { up })
    }

    /// Reachability that is always up: for tools and tests that check nothing.
    pub fn assumed() -> Self {
        Self {
            up: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Whether PostgreSQL answered its last check.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}

/// Whether the server of `connection` answers as `targets` want.
async fn answers(
    connection: &mut PgConnection,
    targets: &crate::config::DatabaseTargets,
) -> Result<bool, sqlx::Error> {
    if targets.follows_primary() {
        takes_writes(connection).await
    } else {
        sqlx::query("select 1")
            .execute(connection)
            .await
            .map(|_| true)
    }
}

/// A connection to the first of `targets`' servers that answers as they want.
async fn connect_any(targets: &crate::config::DatabaseTargets) -> Option<PgConnection> {
    for host in &targets.hosts {
        let attempt = async {
            let mut connection = PgConnection::connect_with(host).await?;
            let wanted = answers(&mut connection, targets).await?;
            Ok::<_, sqlx::Error>(wanted.then_some(connection))
        };
        if let Ok(Ok(Some(connection))) = tokio::time::timeout(CHECK_TIMEOUT, attempt).await {
            return Some(connection);
        }
    }
    None
}

/// Whether the server of `connection` takes writes, as libpq's `read-write` check asks.
async fn takes_writes(connection: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let read_only: String = sqlx::query_scalar("show transaction_read_only")
        .fetch_one(connection)
        .await?;
    Ok(read_only == "off")
}

/// Whether the server at `host` answers and takes writes, on a connection of its own.
async fn host_takes_writes(host: &PgConnectOptions) -> bool {
    let check = async {
        let mut connection = PgConnection::connect_with(host).await?;
        let writable = takes_writes(&mut connection).await;
        connection.close().await?;
        writable
    };
    matches!(
        tokio::time::timeout(CHECK_TIMEOUT, check).await,
        Ok(Ok(true))
    )
}

/// Keeps `pool` on a server that takes writes, among `hosts`, until the pool closes.
async fn follow_primary(pool: PgPool, hosts: Vec<PgConnectOptions>, moved: Arc<Mutex<Instant>>) {
    let mut current = 0;
    let mut reported_none = false;
    let mut ticks = tokio::time::interval(CHECK_PRIMARY_EVERY);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let closed = pool.close_event();
    tokio::pin!(closed);
    loop {
        tokio::select! {
            () = &mut closed => return,
            _ = ticks.tick() => {}
        }
        let check = async {
            let mut connection = pool.acquire().await?;
            takes_writes(&mut connection).await
        };
        if let Ok(Ok(true)) = tokio::time::timeout(CHECK_TIMEOUT, check).await {
            reported_none = false;
            continue;
        }
        // The server in use first, then the others in the URL's order.
        let order = std::iter::once(current).chain((0..hosts.len()).filter(|&i| i != current));
        let mut found = None;
        for candidate in order {
            if host_takes_writes(&hosts[candidate]).await {
                found = Some(candidate);
                break;
            }
        }
        match found {
            Some(primary) if primary != current => {
                tracing::warn!(
                    from = %address(&hosts[current]),
                    to = %address(&hosts[primary]),
                    "PostgreSQL's primary moved; following it"
                );
                pool.set_connect_options(hosts[primary].clone());
                *lock(&moved) = Instant::now();
                current = primary;
                reported_none = false;
            }
            Some(_) => reported_none = false,
            None if !reported_none => {
                tracing::warn!(
                    hosts = %hosts.iter().map(address).collect::<Vec<_>>().join(","),
                    "no PostgreSQL server takes writes; checking again every second"
                );
                reported_none = true;
            }
            None => {}
        }
    }
}

fn address(host: &PgConnectOptions) -> String {
    format!("{}:{}", host.get_host(), host.get_port())
}

fn lock(moved: &Mutex<Instant>) -> std::sync::MutexGuard<'_, Instant> {
    moved
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The last migration that runs before `logs` is partitioned; later ones find it
/// partitioned.
pub const BEFORE_PARTITIONING: i64 = 4;

/// Applies the migrations not applied yet: those up to [`BEFORE_PARTITIONING`], then the
/// partitioning of `logs` ([`storage::partition_legacy`], a no-op once done), then the
/// rest, then builds the query indexes still missing ([`indexes::ensure_query_indexes`]).
pub async fn migrate(pool: &PgPool) -> Result<(), MigrateError> {
    MIGRATOR.run_to(BEFORE_PARTITIONING, pool).await?;
    storage::partition_legacy(pool)
        .await
        .map_err(MigrateError::Execute)?;
    MIGRATOR.run(pool).await?;
    indexes::ensure_query_indexes(pool)
        .await
        .map_err(MigrateError::Execute)
}

/// Whether [`migrate`] has finished on this database: every migration applied and every
/// query index valid. An error when PostgreSQL cannot say (or nothing was applied yet).
pub async fn is_migrated(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let applied: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations where success")
        .fetch_one(pool)
        .await?;
    if applied < MIGRATOR.iter().count() as i64 {
        return Ok(false);
    }
    indexes::all_valid(&mut *pool.acquire().await?).await
}

/// Applies the migrations, retrying with backoff while PostgreSQL cannot be reached.
/// Ok(false) when `shutdown` came first; an error when a migration itself fails, which
/// retrying would not fix.
pub async fn migrate_when_reachable(
    pool: &PgPool,
    shutdown: &CancellationToken,
) -> Result<bool, MigrateError> {
    let attempt = || async {
        match migrate(pool).await {
            Ok(()) => Ok(Ok(())),
            Err(error) if may_succeed_later(&error) => Err(error),
            Err(error) => Ok(Err(error)),
        }
    };
    match until_done("apply the schema", shutdown, attempt).await {
        None => Ok(false),
        Some(result) => result.map(|()| true),
    }
}

/// Whether a failed migration failed for want of a connection rather than for what it
/// runs.
fn may_succeed_later(error: &MigrateError) -> bool {
    match error {
        MigrateError::Execute(error) | MigrateError::ExecuteMigration(error, _) => {
            !matches!(error, sqlx::Error::Database(_))
        }
        _ => false,
    }
}

//! Indexes added to the partitioned `logs` table after it holds data, built online: the
//! index is declared on the parent alone (invalid, instant), built concurrently on each
//! partition while writers go on, and attached; once every partition's is attached,
//! PostgreSQL marks the parent's valid. Partitions made later get theirs when they are
//! attached. A `create index` on the parent would instead block every insert for as long
//! as the largest partition takes to index.

use sqlx::{PgConnection, PgPool};
use tracing::info;

use crate::storage::{self, ddl};

/// Advisory lock held while the indexes are built, so that processes starting together
/// do not build the same one twice.
const INDEX_LOCK: i64 = 0x6c70_0004;

/// An index of `logs` that queries of the api need.
struct QueryIndex {
    /// The parent's index; each partition's is `<partition>_<suffix>`.
    name: &'static str,
    suffix: &'static str,
    /// Columns and predicate, after `on <table>`.
    definition: &'static str,
}

/// The service query and the trace query (`GET /api/services/{name}/logs`,
/// `GET /api/traces/{id}/logs`): partial, so logs without a service or trace cost them
/// nothing.
const QUERY_INDEXES: [QueryIndex; 2] = [
    QueryIndex {
        name: "logs_tenant_service_created",
        suffix: "service",
        definition: "(tenant, service_name, created_at desc) where service_name is not null",
    },
    QueryIndex {
        name: "logs_tenant_trace_created",
        suffix: "trace",
        definition: "(tenant, trace_id, created_at desc) where trace_id is not null",
    },
];

/// Builds whichever query indexes are missing or unfinished (an interrupted build is
/// taken up again); a few catalog reads when all are there.
pub async fn ensure_query_indexes(pool: &PgPool) -> Result<(), sqlx::Error> {
    let mut connection = pool.acquire().await?;
    if all_valid(&mut connection).await? {
        return Ok(());
    }
    sqlx::query("select pg_advisory_lock($1)")
        .bind(INDEX_LOCK)
        .execute(&mut *connection)
        .await?;
    let result = build(&mut connection).await;
    let unlocked = sqlx::query("select pg_advisory_unlock($1)")
        .bind(INDEX_LOCK)
        .execute(&mut *connection)
        .await;
    result?;
    unlocked.map(drop)
}

pub(crate) async fn all_valid(connection: &mut PgConnection) -> Result<bool, sqlx::Error> {
    let names: Vec<&str> = QUERY_INDEXES.iter().map(|index| index.name).collect();
    let valid: i64 = sqlx::query_scalar(
        "select count(*) from pg_index x join pg_class i on i.oid = x.indexrelid \
         where i.relname = any($1) and x.indisvalid",
    )
    .bind(&names)
    .fetch_one(&mut *connection)
    .await?;
    Ok(valid == names.len() as i64)
}

async fn build(connection: &mut PgConnection) -> Result<(), sqlx::Error> {
    for index in &QUERY_INDEXES {
        let QueryIndex {
            name,
            suffix,
            definition,
        } = index;
        sqlx::query(ddl(format!(
            "create index if not exists {name} on only logs {definition}"
        )))
        .execute(&mut *connection)
        .await?;
        for partition in storage::partitions(&mut *connection).await? {
            let table = &partition.name;
            let child = format!("{table}_{suffix}");
            // Partitions attached after the parent's index was declared got theirs then.
            let attached: bool = sqlx::query_scalar(
                "select exists (select 1 from pg_inherits h \
                 join pg_index x on x.indexrelid = h.inhrelid \
                 where h.inhparent = to_regclass($1) and x.indrelid = to_regclass($2))",
            )
            .bind(name)
            .bind(table)
            .fetch_one(&mut *connection)
            .await?;
            if attached {
                continue;
            }
            // A build interrupted halfway leaves an invalid index that `if not exists`
            // would keep.
            let valid: Option<bool> = sqlx::query_scalar(
                "select indisvalid from pg_index where indexrelid = to_regclass($1)",
            )
            .bind(&child)
            .fetch_optional(&mut *connection)
            .await?;
            if valid == Some(false) {
                sqlx::query(ddl(format!("drop index concurrently {child}")))
                    .execute(&mut *connection)
                    .await?;
            }
            sqlx::query(ddl(format!(
                "create index concurrently if not exists {child} on {table} {definition}"
            )))
            .execute(&mut *connection)
            .await?;
            sqlx::query(ddl(format!("alter index {name} attach partition {child}")))
                .execute(&mut *connection)
                .await?;
            info!(index = %child, "index built");
        }
    }
    Ok(())
}

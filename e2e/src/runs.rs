//! Runs: the tag (`log_data.run`) a test puts on each log it sends, to find its logs
//! again among the others in PostgreSQL, count them, and check each was stored once.

use std::collections::HashSet;

use anyhow::Result;
use sqlx::PgPool;

use crate::devices;

/// A run tag unique to this call: `name` and a random suffix.
pub fn run_id(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

/// A query counting the rows of run `run` by containment (`log_data @> {"run": …}`),
/// which the GIN index on `log_data` serves, also for runs of many thousand rows.
pub fn count_query(run: &str) -> String {
    format!("select count(*) from logs where log_data @> '{{\"run\": \"{run}\"}}'")
}

/// Checks that the rows of `run` are exactly the logs accepted: as many, each id once,
/// each message once. Panics on a difference; fails if PostgreSQL cannot be read.
pub async fn assert_exactly_once(pool: &PgPool, run: &str, accepted: &[String]) -> Result<()> {
    let accepted_ids: HashSet<&str> = accepted.iter().map(String::as_str).collect();
    assert_eq!(
        accepted_ids.len(),
        accepted.len(),
        "the api gave an id twice"
    );
    let stored = devices::stored(pool, run, accepted).await?;
    assert_eq!(stored.rows, accepted.len(), "rows stored vs logs accepted");
    assert_eq!(stored.duplicate_ids, 0, "duplicate message ids");
    assert_eq!(stored.duplicate_messages, 0, "a log was stored twice");
    assert_eq!(
        (stored.missing, stored.unexpected),
        (0, 0),
        "stored ids differ from accepted ids"
    );
    Ok(())
}

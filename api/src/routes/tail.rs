//! `GET /api/logs/tail`: the logs the pipeline accepts, live, as Server-Sent Events
//! ([`crate::tail`] follows the stream and hands them out).

use std::convert::Infallible;

use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};

use crate::auth::Principal;
use crate::error::{ErrorBody, Result};
use crate::state::AppState;
use crate::tail::TailParams;

/// The key's tenant's logs as the pipeline accepts them, live, as Server-Sent Events:
/// an event `log` per log (JSON, as the queries return it, with its `message_id`), and
/// an event `missed` with how many logs went by while the subscriber read too slowly,
/// and an event `dropped` saying why before the end of a subscriber that stopped reading.
/// Read from the Redis Stream, never from PostgreSQL.
#[utoipa::path(
    get,
    path = "/api/logs/tail",
    tag = "query",
    params(TailParams),
    security(("bearer" = ["read"]), ("api_key" = ["read"])),
    responses(
        (status = 200, description = "A stream of events `log`, `missed` and, before the end of a subscriber that stopped reading, `dropped`", content_type = "text/event-stream", body = String),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 403, description = "The key lacks the `read` scope", body = ErrorBody),
        (status = 422, description = "An invalid parameter", body = ErrorBody),
        (status = 429, description = "The api has as many tail subscribers as it takes", body = ErrorBody),
    )
)]
pub async fn tail(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    RawQuery(query): RawQuery,
) -> Result<Sse<impl Stream<Item = std::result::Result<Event, Infallible>>>> {
    let events = state
        .tail
        .open(principal.tenant.as_str(), query.as_deref())
        .await?;
    Ok(Sse::new(events.map(Ok)).keep_alive(KeepAlive::default()))
}

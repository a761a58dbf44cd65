//! `POST /api/v1/logs/concurrent-test`: the seed's load test, in which the service
//! writes `count` test logs to itself with `max_workers` writers and reports how it went.
//!
//! On a production endpoint it lets one request make the api load itself, so it is off
//! unless `LOGPIPELINE_CONCURRENT_TEST=true` (404 otherwise), needs the `write` scope,
//! stores its logs under the caller's tenant, and refuses a `count` or `max_workers`
//! above its limits with 400, as the seed did.

use std::time::Instant;

use axum::extract::State;
use axum::{Extension, Json};
use futures::StreamExt;
use logpipeline_core::record::LogLevel;
use logpipeline_core::seed::{RawFields, SeedLog, raw_fields};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::accept::{accept_records, now};
use crate::auth::Principal;
use crate::error::{Error, Result};
use crate::extract::{JsonBody, parse};
use crate::metrics::Endpoint;
use crate::state::AppState;
use crate::v1::WriteLogResult;

/// Results and errors the answer shows, of each kind.
const SAMPLES: usize = 5;

/// The body of the concurrent test.
#[derive(Debug, Deserialize, ToSchema)]
pub struct ConcurrentTestBody {
    /// Logs to write, 1 to `LOGPIPELINE_CONCURRENT_TEST_MAX_COUNT` (10,000 by default).
    #[schema(minimum = 1, example = 10000)]
    pub count: u32,
    /// Writers at once, 1 to `LOGPIPELINE_CONCURRENT_TEST_MAX_WORKERS` (50 by default).
    #[serde(default = "default_workers")]
    #[schema(minimum = 1, example = 50)]
    pub max_workers: u32,
}

fn default_workers() -> u32 {
    50
}

/// What the test did, in the seed's shape.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ConcurrentTestResult {
    /// True when every log was accepted.
    pub success: bool,
    /// Logs the test wrote.
    pub total_count: u32,
    /// Logs accepted.
    pub success_count: u32,
    /// Logs refused.
    pub failed_count: u32,
    /// How long the test took.
    pub duration_seconds: f64,
    /// Accepted logs per second.
    pub logs_per_second: f64,
    /// Writers at once.
    pub max_workers: u32,
    /// The first results.
    pub sample_results: Vec<WriteLogResult>,
    /// The refusals.
    pub error_summary: ErrorSummary,
}

/// The refusals of a test.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorSummary {
    /// How many.
    pub total_errors: u32,
    /// The first ones.
    pub sample_errors: Vec<String>,
}

/// Writes test logs to this api and reports how it went; off unless enabled.
#[utoipa::path(
    post,
    path = "/api/v1/logs/concurrent-test",
    tag = "system B",
    request_body = ConcurrentTestBody,
    security(("bearer" = ["write"]), ("api_key" = ["write"])),
    responses(
        (status = 200, description = "The test ran", body = ConcurrentTestResult),
        (status = 400, description = "`count` or `max_workers` is above its limit", body = crate::v1::V1ErrorBody),
        (status = 401, description = "No valid API key", body = crate::v1::V1ErrorBody),
        (status = 403, description = "The key lacks the `write` scope", body = crate::v1::V1ErrorBody),
        (status = 404, description = "The concurrent test is off", body = crate::v1::V1ErrorBody),
        (status = 413, description = "The body is too large", body = crate::v1::V1ErrorBody),
        (status = 415, description = "The body is not JSON in UTF-8", body = crate::v1::V1ErrorBody),
        (status = 422, description = "The body breaks a rule", body = crate::v1::V1ErrorBody),
        (status = 429, description = "A rate limit is reached; retry after `Retry-After` seconds", body = crate::v1::V1ErrorBody),
    )
)]
pub async fn run(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    JsonBody(body): JsonBody,
) -> Result<Json<ConcurrentTestResult>> {
    let Some(limits) = state.front.concurrent_test else {
        return Err(Error::Disabled(
            "the concurrent test is off; LOGPIPELINE_CONCURRENT_TEST=true turns it on",
        ));
    };
    let body: ConcurrentTestBody = parse(&body)?;
    if !(1..=limits.max_count).contains(&body.count) {
        return Err(Error::LimitExceeded(format!(
            "count must be 1 to {}, got {}",
            limits.max_count, body.count
        )));
    }
    if !(1..=limits.max_workers).contains(&body.max_workers) {
        return Err(Error::LimitExceeded(format!(
            "max_workers must be 1 to {}, got {}",
            limits.max_workers, body.max_workers
        )));
    }
    let started = Instant::now();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let results: Vec<std::result::Result<String, String>> = futures::stream::iter(0..body.count)
        .map(|index| {
            let (state, principal, run) = (&state, &principal, &run);
            async move {
                let record = test_log(run, index).into_record()?;
                accept_records(
                    state,
                    principal,
                    now(),
                    std::slice::from_ref(&record),
                    Endpoint::V1ConcurrentTest,
                    None,
                )
                .await
                .map(|accepted| accepted.entry_id)
                .map_err(|error| error.to_string())
            }
        })
        .buffered(body.max_workers as usize)
        .collect()
        .await;
    let duration = started.elapsed().as_secs_f64();
    let success_count = results.iter().filter(|result| result.is_ok()).count() as u32;
    let errors: Vec<&String> = results
        .iter()
        .filter_map(|result| result.as_ref().err())
        .collect();
    Ok(Json(ConcurrentTestResult {
        success: errors.is_empty(),
        total_count: body.count,
        success_count,
        failed_count: errors.len() as u32,
        duration_seconds: duration,
        logs_per_second: f64::from(success_count) / duration.max(f64::EPSILON),
        max_workers: body.max_workers,
        sample_results: results
            .iter()
            .take(SAMPLES)
            .map(|result| match result {
                Ok(id) => WriteLogResult {
                    success: true,
                    log_id: id.clone(),
                    error_message: String::new(),
                    duplicate: false,
                },
                Err(why) => WriteLogResult {
                    success: false,
                    log_id: String::new(),
                    error_message: why.clone(),
                    duplicate: false,
                },
            })
            .collect(),
        error_summary: ErrorSummary {
            total_errors: errors.len() as u32,
            sample_errors: errors.into_iter().take(SAMPLES).cloned().collect(),
        },
    }))
}

/// Test log `index` of test `run`, with the fields of the seed's generated test data.
fn test_log(run: &str, index: u32) -> SeedLog {
    const MONITOR_TYPES: [&str; 3] = ["impression", "click", "conversion"];
    let level = LogLevel::ALL[index as usize % LogLevel::ALL.len()];
    let mut fields = Map::new();
    fields.insert("run".into(), run.into());
    fields.insert("adv_id".into(), (1_000_000 + index).into());
    fields.insert("aweme_id".into(), (900_000_000 + index).into());
    fields.insert("plan_id".into(), (10_000 + index % 1000).into());
    fields.insert(
        "monitor_type".into(),
        MONITOR_TYPES[index as usize % MONITOR_TYPES.len()].into(),
    );
    fields.insert("client_type".into(), Value::from("concurrent_test"));
    SeedLog {
        message: format!("concurrent test log {index}"),
        service_name: Some("concurrent-test".into()),
        level: Some(level.as_str().into()),
        trace_id: Some(format!("concurrent-trace-{index:06}")),
        span_id: Some(format!("concurrent-span-{index:06}")),
        device_id: None,
        fields: raw_fields(fields),
        shadowed: RawFields::new(),
    }
}

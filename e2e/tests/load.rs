//! The load generator against a real stack, in end-to-end mode: it sends, waits for the
//! workers, and finds every accepted log stored exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use logpipeline::load::Report;
use logpipeline_e2e::stack::{Stack, wait_for_schema};
use logpipeline_local::services::binaries_dir;

/// Runs `logpipeline load` against `stack` in end-to-end mode with `args`, and reads
/// the JSON report it writes.
fn load(stack: &Stack, dir: &Path, run: &str, args: &[&str]) -> Result<Report> {
    let json = dir.join(format!("{run}.json"));
    let output = Command::new(binaries_dir()?.join("logpipeline"))
        .arg("load")
        .args(["--url", &stack.api_url()?, "--run", run, "--quiet"])
        .args(["--database-url", stack.database_url()])
        .args(["--redis-url", &stack.redis.url()])
        .args(["--drain-timeout-secs", "60", "--threads", "2"])
        .arg("--json")
        .arg(&json)
        .args(args)
        .output()?;
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "logpipeline load failed:\n{printed}"
    );
    let report = serde_json::from_slice(&std::fs::read(&json)?)
        .with_context(|| format!("the JSON report does not parse; the run printed:\n{printed}"))?;
    Ok(report)
}

#[test]
fn every_log_the_generator_gets_accepted_is_stored_exactly_once() -> Result<()> {
    let stack = Stack::builder().api().workers(1).start()?;
    // The generator reads the logs table from the start; the worker creates it.
    tokio::runtime::Runtime::new()?
        .block_on(async { wait_for_schema(&stack.pool().await?).await })?;
    let dir = tempfile::tempdir()?;

    // Open loop, batches: 3 s at 5,000 logs/s is exactly 3,000 requests of 5 logs.
    let open = load(
        &stack,
        dir.path(),
        "open-batch",
        &[
            "--rate",
            "5000",
            "--duration-secs",
            "3",
            "--connections",
            "16",
        ],
    )?;
    assert_eq!((open.mode.as_str(), open.errors), ("open", 0));
    assert_eq!(open.accepted_logs, 15_000);
    assert_eq!(open.statuses.get(&200), Some(&3000));
    assert!(open.latency_ms.count == 3000 && open.latency_ms.p50 > 0.0);
    assert!(open.timeline.len() >= 3, "{:?}", open.timeline);
    let e2e = open.end_to_end.context("no end-to-end section")?;
    assert!(e2e.drained, "{e2e:?}");
    assert_eq!((e2e.lost, e2e.duplicated, e2e.stored_unsent), (0, 0, 0));
    assert_eq!((e2e.rows, e2e.persisted_logs), (15_000, 15_000));

    // Closed loop, one log per request, a fixed number of logs.
    let single = load(
        &stack,
        dir.path(),
        "closed-single",
        &[
            "--logs-per-request",
            "1",
            "--total-logs",
            "2000",
            "--connections",
            "8",
        ],
    )?;
    assert_eq!((single.mode.as_str(), single.errors), ("closed", 0));
    assert_eq!(single.accepted_logs, 2000);
    assert!(single.target.ends_with("/api/log"), "{}", single.target);
    let e2e = single.end_to_end.context("no end-to-end section")?;
    assert_eq!((e2e.lost, e2e.duplicated, e2e.stored_unsent), (0, 0, 0));
    assert_eq!(e2e.rows, 2000);
    Ok(())
}

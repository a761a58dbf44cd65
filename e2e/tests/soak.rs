//! `logpipeline bench soak`, short: every fault takes its turn under a careful writer,
//! and every log it got accepted is stored exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

use std::process::Command;

use anyhow::Result;
use logpipeline_local::services::binaries_dir;
use serde_json::Value;

#[test]
fn a_soak_through_every_fault_keeps_every_accepted_log_exactly_once() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let json = dir.path().join("soak.json");
    let output = Command::new(binaries_dir()?.join("logpipeline"))
        .args(["bench", "soak", "--minutes", "2", "--phase-secs", "24"])
        .args([
            "--faults",
            "none,worker-kill,redis-kill,reads,postgres-switchover",
        ])
        .args(["--rate", "500", "--storm-logs", "2000"])
        .args(["--storm-searches", "8", "--flood-subscribers", "50"])
        .args(["--stuck-subscribers", "2", "--quiet", "--json"])
        .arg(&json)
        .output()?;
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "the soak failed:\n{printed}");
    let soak: Value = serde_json::from_slice(&std::fs::read(&json)?)?;
    let faults: Vec<&str> = soak["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|phase| phase["fault"].as_str().unwrap())
        .collect();
    assert_eq!(
        faults,
        [
            "none",
            "worker-kill",
            "redis-kill",
            "reads",
            "postgres-switchover"
        ],
        "{printed}"
    );
    let load = &soak["load"];
    let e2e = &load["end_to_end"];
    assert_eq!(e2e["lost"], 0, "{printed}");
    assert_eq!(e2e["duplicated"], 0, "{printed}");
    assert_eq!(e2e["persisted_logs"], load["accepted_logs"], "{printed}");
    // Every request was accepted in the end: the faults cost retries, not logs.
    assert_eq!(load["errors"], 0, "{printed}");
    let phases = load["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 5, "{printed}");
    // Redis was down for 5 s of its phase: the writer retried there.
    assert!(phases[2]["retries"].as_u64().unwrap() > 0, "{printed}");
    // The storm met the search limits, and the flood was admitted.
    let reads = &soak["phases"][3]["reads"];
    assert!(
        reads["searches"]["429"].as_u64().unwrap_or(0) > 0,
        "{printed}"
    );
    assert_eq!(reads["subscribed"], 52, "{printed}");
    Ok(())
}

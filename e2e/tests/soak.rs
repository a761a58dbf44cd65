//! `logpipeline bench soak`, short: every fault takes its turn under a careful writer,
//! and every log it got accepted is stored exactly once — with a hot window of 5 s, most
//! of them in chunks by the final check.

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
        .args(["--stuck-subscribers", "2", "--hot-window", "5s"])
        .args(["--quiet", "--json"])
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
    // Most were in chunks by then, and were found there.
    let compacted = soak["compacted_logs"].as_u64().unwrap();
    assert!(
        compacted > load["accepted_logs"].as_u64().unwrap() / 2,
        "{printed}"
    );
    // Every request was accepted in the end: the faults cost retries, not logs.
    assert_eq!(load["errors"], 0, "{printed}");
    assert_eq!(load["phases"].as_array().unwrap().len(), 10, "{printed}");
    // Redis was down for 5 s of its phase's second half: the writer retried there.
    let redis_kill = &soak["phases"][2];
    assert!(
        redis_kill["during"]["retries"].as_u64().unwrap() > 0,
        "{printed}"
    );
    // The storm met the search limits, and the flood was admitted.
    let reads = &soak["phases"][3]["reads"];
    assert!(
        reads["searches"]["429"].as_u64().unwrap_or(0) > 0,
        "{printed}"
    );
    assert_eq!(reads["subscribed"], 52, "{printed}");
    Ok(())
}

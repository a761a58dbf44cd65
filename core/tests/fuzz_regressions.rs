//! Replays every input the fuzz targets start from (`fuzz/seeds/`) and every input that
//! once broke a property (`fuzz/regressions/`) on stable Rust, with each `cargo test`.
//!
//! The regressions so far are logs PostgreSQL cannot store that the api once accepted
//! with a 200 (a number beyond `numeric`, a NUL or a lone surrogate in a key, nesting
//! past 64 levels), alone or beside a valid log: besides the target's property, each must
//! now be refused by the field rules the api and the worker share.

use std::path::{Path, PathBuf};

use logpipeline_core::fuzz;
use logpipeline_core::record::LogRecord;

/// The files of `fuzz/<kind>/<target>/`; fails when the folder is missing or empty.
fn inputs(kind: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz")
        .join(kind)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        panic!("{} is missing", dir.display());
    };
    let mut found: Vec<(PathBuf, Vec<u8>)> = entries
        .map(|entry| {
            let path = entry.map(|entry| entry.path()).unwrap_or_default();
            let Ok(input) = std::fs::read(&path) else {
                panic!("cannot read {}", path.display());
            };
            (path, input)
        })
        .collect();
    assert!(!found.is_empty(), "{} is empty", dir.display());
    found.sort();
    found
}

/// Runs `property` on each seed of `target`; how many.
fn replay_seeds(target: &str, property: fn(&[u8])) -> usize {
    let seeds = inputs("seeds", target);
    for (path, input) in &seeds {
        println!("{}", path.display());
        property(input);
    }
    seeds.len()
}

/// Runs `property` on each regression of `target`, and checks `refused` holds for it.
fn replay_regressions(target: &str, property: fn(&[u8]), refused: fn(&[u8]) -> bool) -> usize {
    let regressions = inputs("regressions", target);
    for (path, input) in &regressions {
        println!("{}", path.display());
        property(input);
        assert!(refused(input), "{} is accepted", path.display());
    }
    regressions.len()
}

#[test]
fn log_bodies() {
    assert!(replay_seeds("log_body", fuzz::log_body) >= 4);
    let refused = |input: &[u8]| serde_json::from_slice::<LogRecord>(input).is_err();
    assert!(replay_regressions("log_body", fuzz::log_body, refused) >= 6);
}

#[test]
fn batch_bodies() {
    assert!(replay_seeds("batch_body", fuzz::batch_body) >= 2);
    let refused = |input: &[u8]| serde_json::from_slice::<Vec<LogRecord>>(input).is_err();
    assert!(replay_regressions("batch_body", fuzz::batch_body, refused) >= 2);
}

#[test]
fn stream_entries() {
    assert!(replay_seeds("stream_entry", fuzz::stream_entry) >= 2);
}

#[test]
fn otlp_exports() {
    assert!(replay_seeds("otlp_logs", fuzz::otlp_logs) >= 2);
}

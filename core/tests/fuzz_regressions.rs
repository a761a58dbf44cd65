//! Replays every input the fuzz targets start from (`fuzz/seeds/`) and every input that
//! once broke a property (`fuzz/regressions/`) on stable Rust, with each `cargo test`.

use std::path::Path;

use logpipeline_core::fuzz;

/// Runs `property` on each file of the target's seeds and regressions; how many.
fn replay(target: &str, property: fn(&[u8])) -> usize {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut replayed = 0;
    for kind in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(kind).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.map(|entry| entry.path()).unwrap_or_default();
            let Ok(input) = std::fs::read(&path) else {
                panic!("cannot read {}", path.display());
            };
            println!("{}", path.display());
            property(&input);
            replayed += 1;
        }
    }
    replayed
}

#[test]
fn log_bodies() {
    assert!(replay("log_body", fuzz::log_body) >= 4);
}

#[test]
fn batch_bodies() {
    assert!(replay("batch_body", fuzz::batch_body) >= 2);
}

#[test]
fn stream_entries() {
    assert!(replay("stream_entry", fuzz::stream_entry) >= 2);
}

#[test]
fn otlp_exports() {
    assert!(replay("otlp_logs", fuzz::otlp_logs) >= 2);
}

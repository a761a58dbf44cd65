//! No generated file is edited by hand or left stale.

#![allow(clippy::unwrap_used, clippy::expect_used)] // A failed step is a failed test.

#[test]
fn every_committed_generated_file_is_what_its_source_makes() {
    let root = xtask::repo_root();
    let generated = xtask::generated(&root).unwrap();
    assert!(generated.len() >= 10, "{generated:?}");
    let stale = xtask::stale(&root).unwrap();
    assert!(
        stale.is_empty(),
        "stale generated files (run `cargo xtask generate`): {stale:?}"
    );
}

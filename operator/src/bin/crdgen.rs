//! Writes the generated CRD: `crds/logpipeline.yaml` and the Helm chart's copy.
//!
//! `cargo run -p logpipeline-operator --bin crdgen` from anywhere in the repository.

use std::path::Path;
use std::process::ExitCode;

fn main() -> ExitCode {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    match logpipeline_operator::crdgen::write_all(&root) {
        Ok(paths) => {
            for path in paths {
                println!("wrote {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("crdgen: {error}");
            ExitCode::FAILURE
        }
    }
}

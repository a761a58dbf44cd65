//! Writes the chart's copies of the dashboards and alert rules and the plain manifests
//! under `manifests/monitoring/` from `monitoring/`:
//!
//! ```sh
//! cargo run -p logpipeline-e2e --bin monitoring-gen
//! ```

use anyhow::Result;
use logpipeline_e2e::kube::repo_root;
use logpipeline_e2e::monitoring;

fn main() -> Result<()> {
    for path in monitoring::write(&repo_root())? {
        println!("wrote {}", path.display());
    }
    Ok(())
}

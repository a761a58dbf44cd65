//! Every generated file of the repository, made from its source in one way: `cargo xtask
//! generate` writes them, `cargo xtask generate --check` (and the test beside this
//! crate) fails when a committed copy differs from what its source makes.
//!
//! | files | source |
//! | --- | --- |
//! | `crds/logpipeline.yaml`, `manifests/install/01-crd.yaml`, the chart's CRD template | the Rust types of `operator/src/crd.rs` |
//! | `docs/openapi.json` | the api's handlers and types (`utoipa`) |
//! | the chart's dashboards and rules, `manifests/monitoring/` | `monitoring/` |

pub mod monitoring;

use std::path::{Path, PathBuf};

use anyhow::Result;
use logpipeline_operator::crdgen;

/// A generated file: its path relative to the repository, and its contents.
pub type Generated = (PathBuf, String);

/// The repository this crate belongs to.
pub fn repo_root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

/// Every generated file, made from the sources under `root`.
pub fn generated(root: &Path) -> Result<Vec<Generated>> {
    let mut files = vec![
        (PathBuf::from(crdgen::CRD_PATH), crdgen::crd_yaml()?),
        (
            PathBuf::from(crdgen::MANIFEST_CRD_PATH),
            crdgen::crd_yaml()?,
        ),
        (
            PathBuf::from(crdgen::CHART_CRD_PATH),
            crdgen::chart_crd_template()?,
        ),
        (
            PathBuf::from("docs/openapi.json"),
            logpipeline_api::docs::openapi_json() + "\n",
        ),
    ];
    files.extend(monitoring::generated(root)?);
    Ok(files)
}

/// The generated files under `root` whose committed copy differs from what its source
/// makes (or is missing).
pub fn stale(root: &Path) -> Result<Vec<PathBuf>> {
    Ok(generated(root)?
        .into_iter()
        .filter(|(path, contents)| {
            std::fs::read_to_string(root.join(path)).ok().as_ref() != Some(contents)
        })
        .map(|(path, _)| path)
        .collect())
}

/// Writes every generated file under `root`; returns the paths whose contents changed.
pub fn write(root: &Path) -> Result<Vec<PathBuf>> {
    let mut changed = Vec::new();
    for (path, contents) in generated(root)? {
        let full = root.join(&path);
        if std::fs::read_to_string(&full).ok().as_ref() == Some(&contents) {
            continue;
        }
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&full, contents)?;
        changed.push(path);
    }
    Ok(changed)
}

//! The images the node runs, built here without a Docker engine or a registry, with
//! buildah in a storage of the node's own (nothing lands in this machine's image store):
//!
//! - LogPipeline's api, worker and operator, by `deploy/build.sh`, the users' recipe;
//! - the pod sandbox and the add-ons (CoreDNS, metrics-server, Traefik), each one static
//!   binary in a `FROM scratch` image;
//! - Redis and PostgreSQL from Debian's packages, on a `debootstrap` root file system
//!   (about 250 MB, built once and cached under `~/.cache/logpipeline/images`).
//!
//! Each is written as an OCI archive for `ctr images import`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::kube::{Tools, repo_root};
use crate::process::{output_of, run_visibly};

/// The version tag of the workspace, which `deploy/build.sh` tags the images with.
pub fn product_tag() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// The Redis and PostgreSQL image of the test fixtures.
pub const SERVICES_IMAGE: &str = "localhost/logpipeline-e2e/debian-services:bookworm";

/// Builds images into OCI archives in one directory.
#[derive(Debug)]
pub struct ImageBuilder {
    storage_conf: PathBuf,
    archives: PathBuf,
    work: PathBuf,
}

impl ImageBuilder {
    /// A builder keeping its image store and work files under `dir`, and writing
    /// archives to `dir/archives`.
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join("archives"))?;
        let storage_conf = dir.join("storage.conf");
        // vfs: plain directories, so an interrupted build leaves no mounts behind.
        std::fs::write(
            &storage_conf,
            format!(
                "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                dir.join("storage").display(),
                dir.join("run").display()
            ),
        )?;
        Ok(Self {
            storage_conf,
            archives: dir.join("archives"),
            work: dir.join("work"),
        })
    }

    /// LogPipeline's three images, by the recipe users run: `deploy/build.sh`, with
    /// buildah. They hold the binaries in `binaries` when given (a test run's, built
    /// already), or else release binaries, which `deploy/build.sh` builds first.
    pub fn product(&self, binaries: Option<&Path>) -> Result<Vec<PathBuf>> {
        let mut build = Command::new(repo_root().join("deploy/build.sh"));
        build
            .args(["--engine", "buildah", "--archive-dir"])
            .arg(&self.archives)
            .env("CONTAINERS_STORAGE_CONF", &self.storage_conf);
        if let Some(binaries) = binaries {
            build.arg("--binaries").arg(binaries);
        }
        run_visibly(build)?;
        Ok(["api", "worker", "operator"]
            .iter()
            .map(|component| self.archives.join(format!("logpipeline-{component}.tar")))
            .collect())
    }

    /// The pod sandbox image and the add-ons' images, from the tools.
    pub fn node_images(&self, tools: &Tools) -> Result<Vec<PathBuf>> {
        Ok(vec![
            self.scratch(
                super::containerd::PAUSE_IMAGE,
                &[(&tools.pause, "pause")],
                Some("/pause"),
            )?,
            self.scratch(
                &super::addons::image("coredns"),
                &[(&tools.coredns, "coredns")],
                None,
            )?,
            self.scratch(
                &super::addons::image("metrics-server"),
                &[(&tools.metrics_server, "metrics-server")],
                None,
            )?,
            self.scratch(
                &super::addons::image("traefik"),
                &[(&tools.traefik, "traefik")],
                None,
            )?,
        ])
    }

    /// An image of `files` (source, path in the image) and nothing else.
    fn scratch(
        &self,
        name: &str,
        files: &[(&Path, &str)],
        entrypoint: Option<&str>,
    ) -> Result<PathBuf> {
        let context = self.work.join(archive_name(name));
        let rootfs = context.join("rootfs");
        std::fs::create_dir_all(&rootfs)?;
        for (source, target) in files {
            std::fs::copy(source, rootfs.join(target))
                .with_context(|| format!("copying {}", source.display()))?;
        }
        let mut containerfile = String::from("FROM scratch\nCOPY rootfs/ /\n");
        if let Some(entrypoint) = entrypoint {
            containerfile.push_str(&format!("ENTRYPOINT [\"{entrypoint}\"]\n"));
        }
        std::fs::write(context.join("Containerfile"), containerfile)?;
        self.build(name, &context)
    }

    /// The Redis and PostgreSQL image, from the cache or built with debootstrap (a few
    /// minutes, once per machine and recipe).
    pub fn services(&self) -> Result<PathBuf> {
        let images = repo_root().join("local/k8s/images");
        let recipe = [
            std::fs::read(images.join("postgres-entrypoint"))?,
            std::fs::read(images.join("redis-entrypoint"))?,
            SERVICES_RECIPE.as_bytes().to_vec(),
        ]
        .concat();
        let cached = cache_dir()?.join(format!("debian-services-{:016x}.tar", fnv1a(&recipe)));
        if cached.is_file() {
            return Ok(cached);
        }
        let started = Instant::now();
        eprintln!(
            "building the Redis and PostgreSQL test image from Debian's packages with debootstrap (once; about 3 minutes)"
        );
        let context = self.work.join("debian-services");
        let rootfs = context.join("rootfs");
        std::fs::create_dir_all(&context)?;
        let mut debootstrap = Command::new("debootstrap");
        debootstrap
            .args(["--variant=minbase", "--include=redis-server,postgresql-15"])
            .arg("bookworm")
            .arg(&rootfs)
            .arg(debian_mirror());
        run_visibly(debootstrap)?;
        for unneeded in [
            "var/cache/apt/archives",
            "var/lib/apt/lists",
            "usr/share/doc",
            "usr/share/man",
            "usr/share/info",
        ] {
            let dir = rootfs.join(unneeded);
            if dir.is_dir() {
                std::fs::remove_dir_all(&dir)?;
                std::fs::create_dir_all(&dir)?;
            }
        }
        let bin = rootfs.join("usr/local/bin");
        for script in ["postgres-entrypoint", "redis-entrypoint"] {
            std::fs::copy(images.join(script), bin.join(script))?;
        }
        std::fs::write(context.join("Containerfile"), SERVICES_RECIPE)?;
        let archive = self.build(SERVICES_IMAGE, &context)?;
        std::fs::create_dir_all(cached.parent().context("no cache directory")?)?;
        let partial = cached.with_extension("tar.partial");
        std::fs::copy(&archive, &partial)?;
        std::fs::rename(&partial, &cached)?;
        eprintln!(
            "built {SERVICES_IMAGE} in {:.0?}; cached as {}",
            started.elapsed(),
            cached.display()
        );
        Ok(cached)
    }

    /// Builds `context/Containerfile` as `name` and writes it as an archive.
    fn build(&self, name: &str, context: &Path) -> Result<PathBuf> {
        let mut bud = Command::new("buildah");
        bud.args(["bud", "--quiet", "--layers=false", "-t", name])
            .arg(context)
            .env("CONTAINERS_STORAGE_CONF", &self.storage_conf);
        output_of(bud)?;
        let archive = self.archives.join(format!("{}.tar", archive_name(name)));
        let mut push = Command::new("buildah");
        push.args(["push", "--quiet", name])
            .arg(format!("oci-archive:{}:{name}", archive.display()))
            .env("CONTAINERS_STORAGE_CONF", &self.storage_conf);
        output_of(push)?;
        Ok(archive)
    }
}

/// The recipe of the services image; its root file system is what debootstrap made.
const SERVICES_RECIPE: &str = "FROM scratch
COPY rootfs/ /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
";

/// `~/.cache/logpipeline/images`.
fn cache_dir() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/logpipeline/images"))
}

/// The Debian mirror this machine's apt uses, or Debian's own.
fn debian_mirror() -> String {
    std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .ok()
        .and_then(|sources| {
            sources
                .lines()
                .find_map(|line| line.strip_prefix("URIs:"))
                .and_then(|uris| uris.split_whitespace().next())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "http://deb.debian.org/debian".to_owned())
}

/// `localhost/logpipeline-e2e/pause:3.10` → `pause-3.10`.
fn archive_name(image: &str) -> String {
    image.rsplit('/').next().unwrap_or(image).replace(':', "-")
}

/// A 64-bit FNV-1a hash: a cache key, not a security measure.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

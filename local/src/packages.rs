//! What the local servers need from the distribution: `redis-server` and PostgreSQL,
//! installed with apt-get (through sudo when not root) when missing.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::postgres::postgres_bindir;
use crate::process::find_on_path;

/// Installs `redis-server` and PostgreSQL from the distribution's packages when missing;
/// with `install` false, fails naming them instead.
pub fn ensure_installed(install: bool) -> Result<()> {
    let mut missing = Vec::new();
    if find_on_path("redis-server").is_none() {
        missing.push("redis-server");
    }
    if postgres_bindir().is_err() {
        missing.push("postgresql");
    }
    if missing.is_empty() {
        return Ok(());
    }
    if !install || find_on_path("apt-get").is_none() {
        bail!(
            "missing packages: {}; install them and run again",
            missing.join(" ")
        );
    }
    println!("installing {} with apt-get…", missing.join(" "));
    let sudo = !nix::unistd::Uid::effective().is_root();
    let apt = |apt_args: &[&str]| -> Result<()> {
        let mut command = if sudo {
            Command::new("sudo")
        } else {
            Command::new("apt-get")
        };
        if sudo {
            command.arg("apt-get");
        }
        let status = command
            .args(apt_args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", apt_args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-qq"])?;
    let mut install_args = vec!["install", "-y", "-qq"];
    install_args.extend(&missing);
    apt(&install_args)
}

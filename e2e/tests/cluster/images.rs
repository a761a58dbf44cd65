//! LogPipeline's images: small, non-root, without a shell, on a read-only root, built by
//! the users' recipe with buildah and with podman.

use std::process::Command;

use logpipeline_local::process::output_of;

use crate::support;

#[test]
fn the_images_are_small_run_as_nonroot_without_a_shell_on_a_read_only_root() {
    let (_turn, cluster, _) = support::start();
    // A podman of its own: its image store in a temporary directory, and the ulimits
    // this machine allows (its hard limits are below podman's defaults).
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("containers.conf");
    std::fs::write(
        &conf,
        "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n[engine]\nruntime = \"runc\"\n",
    )
    .unwrap();
    let storage = dir.path().join("storage.conf");
    std::fs::write(
        &storage,
        format!(
            "[storage]\ndriver = \"vfs\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
            dir.path().join("storage").display(),
            dir.path().join("run").display()
        ),
    )
    .unwrap();
    let with_podman = |mut command: Command| {
        command
            .env("CONTAINERS_CONF", &conf)
            .env("CONTAINERS_STORAGE_CONF", &storage);
        command
    };
    let podman = |args: &[&str]| {
        let mut command = Command::new("podman");
        command.args(args);
        with_podman(command)
    };
    let version = env!("CARGO_PKG_VERSION");
    // The images hold the binaries this test run built.
    let binaries = logpipeline_local::services::binaries_dir().unwrap();
    for binary in [
        "logpipeline-api",
        "logpipeline-worker",
        "logpipeline-operator",
    ] {
        let archive = cluster
            .info()
            .dir
            .join(format!("images/archives/{binary}.tar"));
        output_of(podman(&[
            "load",
            "--quiet",
            "--input",
            &archive.to_string_lossy(),
        ]))
        .unwrap();
        let image = format!("docker.io/library/{binary}:{version}");

        let printed = output_of(podman(&[
            "run",
            "--rm",
            "--read-only",
            "--network=none",
            &image,
            "--version",
        ]))
        .unwrap();
        assert_eq!(printed.trim(), format!("{binary} {version}"));

        let config = output_of(podman(&["image", "inspect", &image])).unwrap();
        let config: serde_json::Value = serde_json::from_str(&config).unwrap();
        let config = &config[0];
        assert_eq!(config["Config"]["User"], "65532:65532");
        let labels = &config["Config"]["Labels"];
        assert_eq!(labels["org.opencontainers.image.title"], binary);
        assert_eq!(labels["org.opencontainers.image.version"], version);
        assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
        // Small: the binary without debug sections, and besides it only its shared
        // libraries, CA certificates and a passwd file (a few MB in all).
        let size = config["Size"].as_u64().unwrap();
        let stripped = dir.path().join(format!("{binary}.stripped"));
        output_of({
            let mut strip = Command::new("strip");
            strip
                .arg("--strip-debug")
                .arg("-o")
                .arg(&stripped)
                .arg(binaries.join(binary));
            strip
        })
        .unwrap();
        let binary_size = std::fs::metadata(&stripped).unwrap().len();
        assert!(
            size <= binary_size + 5 * 1024 * 1024,
            "{binary}: the image is {size} bytes, its binary {binary_size}"
        );

        let shell = podman(&[
            "run",
            "--rm",
            "--network=none",
            "--entrypoint",
            "/bin/sh",
            &image,
        ])
        .output()
        .unwrap();
        assert!(!shell.status.success(), "{binary} has a shell");
        println!(
            "{image}: {:.1} MB, user 65532, no shell, `--version` on a read-only root",
            size as f64 / 1e6
        );
    }

    // The same recipe with podman (or docker) instead of buildah.
    let mut build = Command::new(logpipeline_local::kube::repo_root().join("deploy/build.sh"));
    build
        .args(["--engine", "podman", "--tag", "podman-build", "--binaries"])
        .arg(binaries)
        .arg("worker");
    output_of(with_podman(build)).unwrap();
    let printed = output_of(podman(&[
        "run",
        "--rm",
        "--read-only",
        "--network=none",
        "localhost/logpipeline-worker:podman-build",
        "--version",
    ]))
    .unwrap();
    assert_eq!(printed.trim(), format!("logpipeline-worker {version}"));
}

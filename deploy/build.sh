#!/usr/bin/env bash
# Builds LogPipeline's container images from deploy/Containerfile, with or without a
# Docker engine:
#
#   deploy/build.sh [options] [api] [worker] [operator]      (all three when none is named)
#
#   --engine buildah|podman|docker  the builder; the first of these found on PATH by default
#   --tag TAG                       image tag; the workspace version by default
#   --prefix PREFIX                 name prefix, e.g. registry.example.com/logs/ (none by default)
#   --archive-dir DIR               also write each image as an OCI archive DIR/<image>.tar, to
#                                   import into containerd (ctr -n k8s.io images import) or
#                                   kind (kind load image-archive)
#   --binaries DIR                  take the release binaries from DIR instead of building them
#
# Images are named <prefix>logpipeline-<component>:<tag>. Each holds one stripped release
# binary, the shared libraries it links, CA certificates and a passwd entry: no shell, no
# package manager, user 65532, fit for a read-only root filesystem. Building needs the
# Rust toolchain and binutils (strip) on this machine, not in a container: no base image
# is pulled, so it works offline.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
engine=
tag=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)
prefix=
archive_dir=
binaries=
components=()
while (($#)); do
    case $1 in
        --engine) engine=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        --prefix) prefix=$2; shift 2 ;;
        --archive-dir) archive_dir=$2; shift 2 ;;
        --binaries) binaries=$2; shift 2 ;;
        api | worker | operator) components+=("$1"); shift ;;
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
        *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
((${#components[@]})) || components=(api worker operator)
if [[ -z $engine ]]; then
    for candidate in buildah podman docker; do
        command -v "$candidate" >/dev/null && { engine=$candidate; break; }
    done
    [[ -n $engine ]] || { echo "build.sh: none of buildah, podman or docker is installed" >&2; exit 1; }
fi
log() { printf 'build.sh: %s\n' "$*" >&2; }

if [[ -z $binaries ]]; then
    packages=()
    for component in "${components[@]}"; do packages+=(-p "logpipeline-$component"); done
    log "building the release binaries (cargo build --release; a few minutes when cold)"
    (cd "$root" && cargo build --release --locked --bins "${packages[@]}")
    binaries=$(cd "$root" && cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release
fi
revision=$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)

staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
[[ -z $archive_dir ]] || mkdir -p "$archive_dir"

for component in "${components[@]}"; do
    name=logpipeline-$component
    image=$prefix$name:$tag
    context=$staging/$name
    rootfs=$context/rootfs
    mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs"
    # The binary without debug sections; symbols stay for readable panics.
    strip --strip-debug -o "$rootfs/usr/local/bin/$name" "$binaries/$name"
    # The shared libraries and the dynamic loader, at the paths the binary asks for.
    ldd "$binaries/$name" | grep -o '/[^ ]*' | while read -r library; do
        mkdir -p "$rootfs$(dirname "$library")"
        cp -L "$library" "$rootfs$library"
    done
    cp -L /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
    build_args=(-f "$root/deploy/Containerfile" --target "$name" --build-arg "VERSION=$tag" --build-arg "REVISION=$revision" -t "$image")
    log "building $image with $engine"
    case $engine in
        buildah) buildah bud --quiet --layers=false "${build_args[@]}" "$context" >/dev/null ;;
        podman | docker) "$engine" build --quiet "${build_args[@]}" "$context" >/dev/null ;;
        *) echo "build.sh: unknown engine $engine" >&2; exit 2 ;;
    esac
    if [[ -n $archive_dir ]]; then
        # Fully qualified inside the archive, as containerd and the kubelet name images.
        qualified=$image
        [[ $image == */* ]] || qualified=docker.io/library/$image
        case $engine in
            buildah) buildah push --quiet "$image" "oci-archive:$archive_dir/$name.tar:$qualified" ;;
            podman) podman push --quiet "$image" "oci-archive:$archive_dir/$name.tar:$qualified" ;;
            docker) docker tag "$image" "$qualified" && docker save -o "$archive_dir/$name.tar" "$qualified" ;;
        esac
    fi
    log "built $image ($(du -sh "$rootfs" | cut -f1) unpacked)"
done

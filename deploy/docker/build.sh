#!/usr/bin/env bash
# Builds the api, worker and operator images from the repository root with BuildKit.
#   deploy/docker/build.sh [TAG]      (TAG defaults to the workspace version)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
tag=${1:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)}
for binary in logpipeline-api logpipeline-worker logpipeline-operator; do
    DOCKER_BUILDKIT=1 docker build -f "$root/deploy/docker/Dockerfile" \
        --build-arg "BINARY=$binary" -t "$binary:$tag" "$root"
done

#!/usr/bin/env bash
# LogPipeline's benchmark: builds the release binaries, starts Redis (append-only file),
# a durable PostgreSQL, a worker and the api on this machine, runs the seed profile, the
# single-log profile and the open-loop sustained profile in end-to-end mode, and prints
# a table beside the seed system's published figures. Arguments go to
# logpipeline-bench (`e2e/bench/run.sh --help`), e.g.
#   e2e/bench/run.sh --profiles seed --runs 1 --worker-concurrency 8 --json-dir /tmp/bench
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
if ((${#missing[@]})); then
    echo "installing ${missing[*]} with apt-get…" >&2
    sudo=()
    [[ $(id -u) == 0 ]] || sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq "${missing[@]}"
fi

# The api and worker alone, as the harness builds them (so its own build is a no-op).
cargo build --release --quiet -p logpipeline-api -p logpipeline-worker
cargo build --release --quiet -p logpipeline-e2e --bin logpipeline-bench
exec "${CARGO_TARGET_DIR:-target}/release/logpipeline-bench" "$@"

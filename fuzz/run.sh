#!/usr/bin/env bash
# Fuzzes the ingest bodies (JSON and OTLP/protobuf) and the stream codec for a fixed time:
#
#   fuzz/run.sh [seconds per target, default 60] [target ...]
#
# Targets: log_body, batch_body, stream_entry, otlp_logs (fuzz/fuzz_targets/; the properties they
# check are in core/src/fuzz.rs). Needs the nightly toolchain and cargo-fuzz
# (`rustup toolchain install nightly`, `cargo install cargo-fuzz`).
#
# Each target starts from fuzz/seeds/<target> and fuzz/regressions/<target>, and keeps
# what it learns in fuzz/corpus/<target> (not committed). An input that breaks a property
# is written to fuzz/artifacts/<target>/; copy it to fuzz/regressions/<target>/ under a
# name that says what it broke, and fix the code: `cargo test -p logpipeline-core --test
# fuzz_regressions` replays it on stable Rust from then on.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-60}
shift || true
targets=("$@")
((${#targets[@]})) || targets=(log_body batch_body stream_entry otlp_logs)
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target" "fuzz/regressions/$target"
    printf '\n== %s for %s s\n' "$target" "$seconds" >&2
    cargo +nightly fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" \
        "fuzz/regressions/$target" -- -max_total_time="$seconds" -max_len=65536 -timeout=10
done

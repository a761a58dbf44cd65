#!/usr/bin/env bash
# LogPipeline's test command: sets up what the tests need on a fresh machine, then runs
# every test.
#
#   e2e/test.sh            every test, in three phases, each timed
#   e2e/test.sh --quick    the quick tier: unit and in-process tests, no root, no
#                          Kubernetes (phase 1 alone, about 5 minutes warm)
#   e2e/test.sh [arguments for cargo test, e.g. --test cluster]
#
# Set-up, each step skipped when its result is already there (a second run does none):
#   1. Debian packages: Redis, PostgreSQL, the container tools of the node cluster
#      (containerd, runc, CNI plugins, buildah, podman, debootstrap, iptables),
#      Prometheus, and Chromium with its chromedriver (the explorer's tests), with
#      apt-get (as root, or through sudo).
#   2. Python test tools (openapi-spec-validator, schemathesis, and OpenTelemetry's SDK
#      with its OTLP exporters over HTTP and gRPC), with pip.
#   3. The Kubernetes tools, built from the Go module proxy into ~/.cache/logpipeline
#      (local/k8s/build-tools.sh; about 20 minutes the first time).
# Then the tests, in phases:
#   1. every crate but e2e: unit tests and in-process tests on real Redis and PostgreSQL;
#   2. e2e's tests of the services as processes, and of the operator and the chart on a
#      bare control plane;
#   3. e2e's tests on the one-node cluster (root).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

started=$SECONDS
step() { printf '\n== [%4d s] %s\n' "$((SECONDS - started))" "$*" >&2; }
as_root() { if ((EUID == 0)); then "$@"; else sudo "$@"; fi; }

# Program (or file) -> the Debian package that provides it.
declare -A packages=(
    [redis-server]=redis-server
    [cc]=build-essential
    [strip]=binutils
    [containerd]=containerd
    [runc]=runc
    [/usr/lib/cni/bridge]=containernetworking-plugins
    [buildah]=buildah
    [podman]=podman
    [debootstrap]=debootstrap
    [iptables]=iptables
    [conntrack]=conntrack
    [nsenter]=util-linux
    [ip]=iproute2
    [promtool]=prometheus
    [chromium]=chromium
    [chromedriver]=chromium-driver
)
missing=()
for need in "${!packages[@]}"; do
    if [[ $need == /* ]]; then [[ -e $need ]]; else command -v "$need" >/dev/null; fi ||
        missing+=("${packages[$need]}")
done
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
quick=false
if [[ ${1:-} == --quick ]]; then
    quick=true
    shift
fi
if ((${#missing[@]})); then
    step "installing Debian packages: ${missing[*]} (a minute or two)"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
for tool in go kubectl cargo; do
    command -v "$tool" >/dev/null || { echo "test.sh: $tool is required and cannot be installed from here" >&2; exit 1; }
done

python_tools=(openapi-spec-validator schemathesis opentelemetry-sdk
    opentelemetry-exporter-otlp-proto-http opentelemetry-exporter-otlp-proto-grpc)
python_modules=(openapi_spec_validator schemathesis opentelemetry.sdk
    opentelemetry.exporter.otlp.proto.http opentelemetry.exporter.otlp.proto.grpc)
missing=()
for i in "${!python_modules[@]}"; do
    python3 -c "import ${python_modules[$i]}" 2>/dev/null || missing+=("${python_tools[$i]}")
done
if ((${#missing[@]})); then
    step "installing Python test tools: ${missing[*]}"
    # Debian marks its own Python as externally managed (PEP 668); these are test tools.
    python3 -m pip install --quiet "${missing[@]}" 2>/dev/null ||
        python3 -m pip install --quiet --break-system-packages "${missing[@]}"
fi

if ! $quick && ! local/k8s/build-tools.sh --check; then
    step "building the Kubernetes tools from the Go module proxy (about 20 minutes when cold)"
    local/k8s/build-tools.sh
fi

failed=()
phase() {
    local name=$1 begun=$SECONDS
    shift
    step "$name: cargo test --locked --no-fail-fast $*"
    cargo test --locked --no-fail-fast "$@" || failed+=("$name")
    timings+=("$(printf '%-32s %5d s' "$name" "$((SECONDS - begun))")")
}
timings=()
if (($#)); then
    phase "cargo test $*" --workspace "$@"
else
    phase "1. unit and in-process" --workspace --exclude logpipeline-e2e
    if ! $quick; then
        services=()
        for file in e2e/tests/*.rs; do
            services+=(--test "$(basename "$file" .rs)")
        done
        # Phases 2 and 3 run side by side: the cluster's tests spend most of their time
        # waiting for Kubernetes (pods, rollouts, the autoscalers' windows), and every
        # test waits for conditions, never for fixed times. Both are built first, so
        # that neither waits for the other's build; phase 3 prints when both are done.
        step "building phases 2 and 3: cargo test --locked --no-run -p logpipeline-e2e"
        cargo test --locked --no-run -p logpipeline-e2e --lib "${services[@]}" --test cluster
        cluster_log=$(mktemp)
        # Phase 3 in a process group of its own (job control on while it starts), which
        # an early exit of this script stops (its cluster is torn down as its tests die).
        set -m
        (
            failed=() timings=()
            phase "3. one-node cluster" -p logpipeline-e2e --test cluster
            printf '%s\n' "${timings[0]}" >"$cluster_log.timing"
            ((${#failed[@]} == 0))
        ) >"$cluster_log" 2>&1 &
        cluster_phase=$!
        set +m
        trap 'kill -TERM -- -"$cluster_phase" 2>/dev/null || true; rm -f "$cluster_log" "$cluster_log.timing"' EXIT
        phase "2. services, control plane" -p logpipeline-e2e --lib "${services[@]}"
        step "3. one-node cluster, run beside phase 2: its output"
        wait "$cluster_phase" || failed+=("3. one-node cluster")
        cat "$cluster_log" >&2
        timings+=("$(cat "$cluster_log.timing" 2>/dev/null || echo "3. one-node cluster: no timing")")
    fi
fi
# A test process's shared servers (its PostgreSQL, control plane and node cluster) are
# statics that are never dropped: they stop with the process, and their directories,
# which name their owner, are removed here (the harness does it too, the next time it
# starts a server of the same kind).
for dir in "${TMPDIR:-/tmp}"/logpipeline-*/; do
    if owner=$(cat "$dir/owner.pid" 2>/dev/null) && ! kill -0 "$owner" 2>/dev/null; then
        rm -rf --one-file-system "$dir"
    fi
done
step "phases"
printf '   %s\n' "${timings[@]}" >&2
if ((${#failed[@]})); then
    step "failed: ${failed[*]}"
    exit 1
fi
step "all tests passed"

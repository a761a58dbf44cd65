#!/usr/bin/env bash
# LogPipeline's test command: sets up what the tests need on a fresh machine, then runs
# every test.
#
#   e2e/test.sh [arguments for cargo test, e.g. --test cluster]
#
# Set-up, each step skipped when its result is already there (a second run does none):
#   1. Debian packages: Redis, PostgreSQL, the container tools of the node cluster
#      (containerd, runc, CNI plugins, buildah, podman, debootstrap, iptables) and
#      Prometheus, with apt-get (as root, or through sudo).
#   2. Python test tools (openapi-spec-validator, schemathesis, and OpenTelemetry's SDK
#      with its OTLP exporters over HTTP and gRPC), with pip.
#   3. The Kubernetes tools, built from the Go module proxy into ~/.cache/logpipeline
#      (local/k8s/build-tools.sh; about 20 minutes the first time).
# Then `cargo test --workspace --locked`. The node cluster's tests need root.
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
)
missing=()
for need in "${!packages[@]}"; do
    if [[ $need == /* ]]; then [[ -e $need ]]; else command -v "$need" >/dev/null; fi ||
        missing+=("${packages[$need]}")
done
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
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

if ! local/k8s/build-tools.sh --check; then
    step "building the Kubernetes tools from the Go module proxy (about 20 minutes when cold)"
    local/k8s/build-tools.sh
fi

step "cargo test --workspace --locked --no-fail-fast $*"
cargo test --workspace --locked --no-fail-fast "$@"
step "all tests passed"

#!/usr/bin/env bash
# Builds the tools the Kubernetes end-to-end tests run, from the Go module proxy with the
# local Go toolchain (and the pause binary from its C source with gcc):
#
#   control plane   etcd, kube-apiserver, kube-controller-manager, kube-scheduler
#   node            kubelet, kube-proxy, pause (the pod sandbox's process)
#   add-ons         coredns, metrics-server, traefik (the ingress controller)
#   clients         helm
#   CRDs            the Prometheus Operator's PodMonitor and PrometheusRule (crds/)
#
#   local/k8s/build-tools.sh              build what is missing (a no-op when all are there)
#   local/k8s/build-tools.sh --check      exit 0 when every tool is there, 1 otherwise
#   local/k8s/build-tools.sh --print-dir  print where the tools are (or go)
#
# The binaries go to $LOGPIPELINE_TOOLS_DIR, by default ~/.cache/logpipeline/tools/<hash
# of versions.env>, outside the repository; the tests look there. Versions are pinned in
# versions.env beside this script.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

key=$(sha256sum "$here/versions.env" | cut -c1-16)
tools_dir=${LOGPIPELINE_TOOLS_DIR:-$HOME/.cache/logpipeline/tools/$key}
if [[ ${1:-} == --print-dir ]]; then
    echo "$tools_dir"
    exit 0
fi

all=(etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy pause
    coredns metrics-server traefik helm)
crds=(monitoring.coreos.com_podmonitors.yaml monitoring.coreos.com_prometheusrules.yaml)
missing=()
for tool in "${all[@]}"; do
    [[ -x $tools_dir/$tool ]] || missing+=("$tool")
done
for crd in "${crds[@]}"; do
    [[ -f $tools_dir/crds/$crd ]] || { missing+=(crds); break; }
done
((${#missing[@]})) || exit 0
[[ ${1:-} != --check ]] || exit 1

log() { printf 'build-tools.sh: %s\n' "$*" >&2; }
needs() { [[ " ${missing[*]} " == *" $1 "* ]]; }

command -v go >/dev/null || { log "the Go toolchain (go) is required"; exit 1; }
command -v gcc >/dev/null || { log "gcc is required (for the pause binary)"; exit 1; }
mkdir -p "$tools_dir"
log "building ${missing[*]} into $tools_dir"
log "cold, on 2 cores, this takes about 20 minutes (the Go module and build caches make later builds quick)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export CGO_ENABLED=0 GOFLAGS=-mod=mod

# Runs "$@" (a build of $1) and says how long it took.
step() {
    local what=$1 started=$SECONDS
    shift
    log "$what: started"
    "$@"
    log "$what: done in $((SECONDS - started)) s"
}

# Builds binaries into the tools directory inside a throwaway module whose go.mod body is
# $1, with linker flags $2; each further argument is <binary>=<main package>.
build_in_module() {
    local gomod=$1 ldflags=$2
    shift 2
    local dir
    dir=$(mktemp -d "$work/module.XXXX")
    printf '%s\n' "$gomod" >"$dir/go.mod"
    (cd "$dir" && go mod tidy)
    for target in "$@"; do
        (cd "$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$tools_dir/${target%%=*}.tmp" "${target#*=}")
        mv "$tools_dir/${target%%=*}.tmp" "$tools_dir/${target%%=*}"
    done
}

# The module path's directory in the module cache, downloading it if needed.
module_dir() {
    (cd "$work" && go mod download -json "$1" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
}

if needs etcd; then
    # The server module's own replace directives point into the etcd repository and
    # are ignored for a dependency; its requirements name the published modules.
    step "etcd $ETCD_VERSION (about 1 minute cold)" build_in_module "module logpipeline.local/build/etcd

go 1.24.0

require go.etcd.io/etcd/server/v3 $ETCD_VERSION

tool go.etcd.io/etcd/server/v3" "" etcd=go.etcd.io/etcd/server/v3
fi

kubernetes=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
kubernetes_missing=()
for binary in "${kubernetes[@]}"; do
    needs "$binary" && kubernetes_missing+=("$binary=k8s.io/kubernetes/cmd/$binary")
done
if ((${#kubernetes_missing[@]})); then
    # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with
    # directories of its own repository; pin each to its published release instead.
    kubernetes_mod=$(cd "$work" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
    replaces=$(sed -n 's#^\t\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\t\1 => \1 '"$STAGING_VERSION"'#p' "$kubernetes_mod")
    [[ -n $replaces ]] || { log "no staging modules found in $kubernetes_mod"; exit 1; }
    version_pkg=k8s.io/component-base/version
    minor=${KUBERNETES_VERSION#v1.}
    minor=${minor%%.*}
    tools=$(printf 'tool %s\n' "${kubernetes_missing[@]#*=}")
    # Without these the binaries report v0.0.0-master, and kubelets refuse to register
    # with an API server that is older than themselves.
    version_flags="-X $version_pkg.gitVersion=$KUBERNETES_VERSION -X $version_pkg.gitMajor=1 -X $version_pkg.gitMinor=$minor -X $version_pkg.gitTreeState=clean -X $version_pkg.buildDate=1970-01-01T00:00:00Z"
    step "${kubernetes_missing[*]%%=*} $KUBERNETES_VERSION (about 5 minutes cold)" build_in_module "module logpipeline.local/build/kubernetes

go 1.24.0

godebug default=go1.24

require k8s.io/kubernetes $KUBERNETES_VERSION

replace (
$replaces
)

$tools" "$version_flags" "${kubernetes_missing[@]}"
fi

if needs pause; then
    # The pod sandbox's process, from the source Kubernetes builds its pause image from.
    source=$(module_dir "k8s.io/kubernetes@$KUBERNETES_VERSION")/build/pause/linux/pause.c
    step "pause" gcc -Os -static -Wall -Werror -DVERSION="$KUBERNETES_VERSION" -o "$tools_dir/pause" "$source"
fi

if needs coredns; then
    step "coredns $COREDNS_VERSION (about 2 minutes cold)" build_in_module "module logpipeline.local/build/coredns

go 1.24.0

require github.com/coredns/coredns $COREDNS_VERSION

tool github.com/coredns/coredns" "-X github.com/coredns/coredns/coremain.GitCommit=$COREDNS_VERSION" coredns=github.com/coredns/coredns
fi

if needs metrics-server; then
    step "metrics-server $METRICS_SERVER_VERSION (about 2 minutes cold)" build_in_module "module logpipeline.local/build/metrics-server

go 1.24.4

require sigs.k8s.io/metrics-server $METRICS_SERVER_VERSION

tool sigs.k8s.io/metrics-server/cmd/metrics-server" "" metrics-server=sigs.k8s.io/metrics-server/cmd/metrics-server
fi

if needs traefik; then
    # Traefik's own replace directives are ignored for a dependency: repeat them.
    traefik_mod=$(cd "$work" && go mod download -json "github.com/traefik/traefik/v3@$TRAEFIK_VERSION" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
    traefik_replaces=$(sed -n '/^replace (/,/^)/{/^replace (/d;/^)/d;p}' "$traefik_mod")
    step "traefik $TRAEFIK_VERSION (about 7 minutes cold)" build_in_module "module logpipeline.local/build/traefik

go 1.25.0

require github.com/traefik/traefik/v3 $TRAEFIK_VERSION

replace (
$traefik_replaces
)

tool github.com/traefik/traefik/v3/cmd/traefik" "-X github.com/traefik/traefik/v3/pkg/version.Version=$TRAEFIK_VERSION" traefik=github.com/traefik/traefik/v3/cmd/traefik
fi

if needs helm; then
    # As helm's Makefile does: its version, and the Kubernetes version that `helm
    # template` and `helm lint` assume without a cluster (that of its client-go).
    helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
        helm_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$HELM_KUBERNETES_MINOR"
    done
    step "helm $HELM_VERSION (about 2 minutes cold)" env GOBIN="$work/helm-bin" go install -trimpath -ldflags "$helm_ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    mv "$work/helm-bin/helm" "$tools_dir/helm"
fi

# Copies the CRDs from the Prometheus Operator's module.
copy_crds() {
    local source_dir
    source_dir=$(module_dir "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")/example/prometheus-operator-crd
    mkdir -p "$tools_dir/crds"
    for crd in "${crds[@]}"; do
        cp "$source_dir/$crd" "$tools_dir/crds/$crd"
    done
}
if needs crds; then
    step "Prometheus Operator CRDs $PROMETHEUS_OPERATOR_VERSION" copy_crds
fi

log "tools ready in $tools_dir"

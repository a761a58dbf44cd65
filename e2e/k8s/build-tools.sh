#!/usr/bin/env bash
# Builds the control-plane tools the Kubernetes end-to-end tests run: etcd,
# kube-apiserver and helm, from the Go module proxy with the local Go toolchain.
#
#   e2e/k8s/build-tools.sh            build what is missing (a no-op when all are there)
#   e2e/k8s/build-tools.sh --print-dir
#
# The binaries go to $LOGPIPELINE_TOOLS_DIR, by default
# ~/.cache/logpipeline/tools/<versions>, outside the repository; the tests look
# there. Versions are pinned in versions.env beside this script.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"

tools_dir=${LOGPIPELINE_TOOLS_DIR:-$HOME/.cache/logpipeline/tools/kubernetes-$KUBERNETES_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION-r$TOOLS_REVISION}
if [[ ${1:-} == --print-dir ]]; then
    echo "$tools_dir"
    exit 0
fi

command -v go >/dev/null || { echo "build-tools.sh: the Go toolchain (go) is required" >&2; exit 1; }
mkdir -p "$tools_dir"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export CGO_ENABLED=0 GOFLAGS=-mod=mod

log() { echo "build-tools.sh: $*" >&2; }

# Builds package $2 as binary $1 inside a throwaway module whose go.mod body is $3.
build_in_module() {
    local binary=$1 package=$2 gomod=$3 ldflags=${4:-}
    local dir="$work/$binary"
    mkdir -p "$dir"
    printf '%s\n' "$gomod" >"$dir/go.mod"
    log "building $binary from $package"
    (cd "$dir" && go mod tidy && go build -trimpath -ldflags "-s -w $ldflags" -o "$tools_dir/$binary.tmp" "$package")
    mv "$tools_dir/$binary.tmp" "$tools_dir/$binary"
}

if [[ ! -x $tools_dir/etcd ]]; then
    # The server module's own replace directives point into the etcd repository and
    # are ignored for a dependency; its requirements name the published modules.
    build_in_module etcd go.etcd.io/etcd/server/v3 "module logpipeline.local/build/etcd

go 1.24.0

require go.etcd.io/etcd/server/v3 $ETCD_VERSION

tool go.etcd.io/etcd/server/v3"
fi

if [[ ! -x $tools_dir/kube-apiserver ]]; then
    # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with
    # directories of its own repository; pin each to its published release instead.
    kubernetes_mod=$(cd "$work" && go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
    replaces=$(sed -n 's#^\t\(k8s\.io/[a-z0-9-]*\) => \./staging/.*#\t\1 => \1 '"$STAGING_VERSION"'#p' "$kubernetes_mod")
    [[ -n $replaces ]] || { log "no staging modules found in $kubernetes_mod"; exit 1; }
    version_pkg=k8s.io/component-base/version
    minor=${KUBERNETES_VERSION#v1.}
    minor=${minor%%.*}
    build_in_module kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "module logpipeline.local/build/kube-apiserver

go 1.24.0

godebug default=go1.24

require k8s.io/kubernetes $KUBERNETES_VERSION

replace (
$replaces
)

tool k8s.io/kubernetes/cmd/kube-apiserver" \
        "-X $version_pkg.gitVersion=$KUBERNETES_VERSION -X $version_pkg.gitMajor=1 -X $version_pkg.gitMinor=$minor -X $version_pkg.gitTreeState=clean -X $version_pkg.buildDate=1970-01-01T00:00:00Z"
fi

if [[ ! -x $tools_dir/helm ]]; then
    log "building helm $HELM_VERSION"
    # As helm's Makefile does: its version, and the Kubernetes version that `helm
    # template` and `helm lint` assume without a cluster (that of its client-go).
    helm_ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
    for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
        helm_ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$HELM_KUBERNETES_MINOR"
    done
    GOBIN="$work/helm-bin" go install -trimpath -ldflags "$helm_ldflags" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    mv "$work/helm-bin/helm" "$tools_dir/helm"
fi

log "tools ready in $tools_dir"

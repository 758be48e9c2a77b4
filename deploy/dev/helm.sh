#!/usr/bin/env bash
# Helm, built from its official Go module (helm.sh/helm/v3) and cached, for the chart's
# tests (tests/deploy/test_helm_chart.py) and docs/deploy.md:
#
#   deploy/dev/helm.sh build      # build the pinned version once (cached); prints nothing
#   deploy/dev/helm.sh built      # exit 0 iff it is built
#   deploy/dev/helm.sh path       # print the path of the helm binary (exit 1 if not built)
#   deploy/dev/helm.sh ARGS...    # run that helm with ARGS (builds it first if needed)
#
# Version pinned here: HELM_VERSION; the binary goes to
# ${CONTINUUM_CACHE:-~/.cache/continuum}/helm/<version>/helm. Needs Go (the one that builds
# the Kubernetes test bed); the first build takes a few minutes on 2 cores.
set -euo pipefail

die() { echo "helm.sh: $*" >&2; exit 1; }

HELM_VERSION=v3.19.5
K8S_MINOR=34   # helm v3.19.5 is built on k8s.io/client-go v0.34: its default Kubernetes version
CACHE=${CONTINUUM_CACHE:-$HOME/.cache/continuum}/helm
BIN=$CACHE/$HELM_VERSION

built() { [ -x "$BIN/helm" ]; }

build() {
  built && return 0
  command -v go >/dev/null 2>&1 || die "Go is not installed (https://go.dev/dl/ builds helm)"
  mkdir -p "$CACHE"
  (
    flock 9
    built && exit 0
    local t0 tmp
    t0=$(date +%s)
    echo "helm.sh: building helm $HELM_VERSION into $BIN (go install; a few minutes the first time) ..." >&2
    tmp=$(mktemp -d "$CACHE/build.XXXXXX")
    # the -X flags of helm's Makefile: its version, and the Kubernetes version `helm
    # template` and `helm lint` assume without a cluster (else 1.20)
    local x=helm.sh/helm/v3
    GOBIN=$tmp CGO_ENABLED=0 go install -ldflags "-s -w -X $x/internal/version.version=$HELM_VERSION
      -X $x/pkg/lint/rules.k8sVersionMajor=1 -X $x/pkg/lint/rules.k8sVersionMinor=$K8S_MINOR
      -X $x/pkg/chartutil.k8sVersionMajor=1 -X $x/pkg/chartutil.k8sVersionMinor=$K8S_MINOR" \
      "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" || { rm -rf "$tmp"; die "building helm failed"; }
    chmod 755 "$tmp"; rm -rf "$BIN"; mv "$tmp" "$BIN"
    echo "helm.sh: built helm $HELM_VERSION in $(( $(date +%s) - t0 )) s" >&2
  ) 9>"$CACHE/.lock"
}

case "${1:-}" in
  build) build ;;
  built) built || die "not built yet: run deploy/dev/helm.sh build (or make test-deps)" ;;
  path) built || die "not built yet: run deploy/dev/helm.sh build (or make test-deps)"; echo "$BIN/helm" ;;
  "") die "usage: $0 build | built | path | HELM-ARGS..." ;;
  *) build; exec "$BIN/helm" "$@" ;;
esac

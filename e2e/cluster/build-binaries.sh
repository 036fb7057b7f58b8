#!/usr/bin/env bash
# Builds what the local world needs into a cache outside the work tree, keyed by version,
# and only what is missing: Kubernetes (apiserver, controller-manager, kube-proxy, kubectl),
# etcd, CoreDNS, helm, and a pyspark venv that stands in for the Spark image. Prints each build's time.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.36.3}
COREDNS_VERSION=${COREDNS_VERSION:-v1.15.0}
PYSPARK_VERSION=${PYSPARK_VERSION:-4.3.0}
HELM_VERSION=${HELM_VERSION:-v3.21.4}
CACHE=${SCO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/spark-connect-operator}
K8S_BIN=$CACHE/k8s-$K8S_VERSION/bin
DNS_BIN=$CACHE/coredns-$COREDNS_VERSION/bin
VENV=$CACHE/pyspark-$PYSPARK_VERSION/venv
HELM_BIN=$CACHE/helm-$HELM_VERSION/bin
# The e2e suite's policy engine behind Envoy's ext_authz API (OPA's rego), keyed by its sources.
OPA_AUTHZ_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../opa-authz" && pwd)
OPA_AUTHZ_BIN=$CACHE/opa-authz-$(cat "$OPA_AUTHZ_SRC"/go.mod "$OPA_AUTHZ_SRC"/go.sum "$OPA_AUTHZ_SRC"/main.go | sha256sum | cut -c1-12)

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

timed() { # timed <label> <command...>
  local label=$1 start; shift; start=$(date +%s)
  echo "build: $label ..."
  "$@"
  echo "build: $label done in $(( $(date +%s) - start ))s"
}

need_packages() {
  local missing=()
  command -v nft >/dev/null || missing+=(nftables)
  command -v nsenter >/dev/null || missing+=(util-linux)
  command -v ip >/dev/null || missing+=(iproute2)
  command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" = 0 ]; then
    timed "apt packages ${missing[*]}" bash -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${missing[*]} >/dev/null"
  else
    echo "missing packages; run: sudo apt-get install -y ${missing[*]}" >&2; exit 1
  fi
}

build_k8s() {
  local work; work=$(mktemp -d "$CACHE/k8s-build.XXXXXX")
  (
    cd "$work"
    go mod init local/k8sbuild >/dev/null 2>&1
    gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
    minor=${K8S_VERSION#v1.}; staging="v0.$minor"
    for mod in $(sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$gomod"); do
      go mod edit "-replace=$mod=$mod@$staging"
    done
    go get "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION" "k8s.io/kubernetes/cmd/kube-controller-manager@$K8S_VERSION" \
      "k8s.io/kubernetes/cmd/kubectl@$K8S_VERSION" "k8s.io/kubernetes/cmd/kube-proxy@$K8S_VERSION" >/dev/null 2>&1
    go get go.etcd.io/etcd/server/v3 >/dev/null 2>&1 || true
    ld="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ld="$ld -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor%%.*} -X $pkg.gitTreeState=clean"
    done
    mkdir -p "$K8S_BIN.tmp"
    for cmd in kube-apiserver kube-controller-manager kubectl kube-proxy; do
      go build -trimpath -ldflags "$ld" -o "$K8S_BIN.tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd"
    done
    go build -trimpath -ldflags "-s -w" -o "$K8S_BIN.tmp/etcd" go.etcd.io/etcd/server/v3
  )
  rm -rf "$work" "$K8S_BIN"; mv "$K8S_BIN.tmp" "$K8S_BIN"
}

build_coredns() {
  mkdir -p "$DNS_BIN.tmp"
  GOBIN="$DNS_BIN.tmp" go install "github.com/coredns/coredns@$COREDNS_VERSION"
  rm -rf "$DNS_BIN"; mv "$DNS_BIN.tmp" "$DNS_BIN"
}

build_helm() {
  mkdir -p "$HELM_BIN.tmp"
  GOBIN="$HELM_BIN.tmp" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  rm -rf "$HELM_BIN"; mv "$HELM_BIN.tmp" "$HELM_BIN"
}

build_opa_authz() {
  mkdir -p "$OPA_AUTHZ_BIN.tmp"
  (cd "$OPA_AUTHZ_SRC" && go build -trimpath -ldflags "-s -w" -o "$OPA_AUTHZ_BIN.tmp/sco-opa-authz" .)
  rm -rf "$OPA_AUTHZ_BIN"; mv "$OPA_AUTHZ_BIN.tmp" "$OPA_AUTHZ_BIN"
}

build_venv() {
  # A venv records its own path, so it is built in place; `.complete` marks a finished one.
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "pyspark[connect]==$PYSPARK_VERSION" "pandas<3"
  touch "$VENV/.complete"
}

mkdir -p "$CACHE"
need_packages
what=${1:-all}
if [[ $what == all || $what == k8s ]]; then
  if [ -x "$K8S_BIN/kube-apiserver" ] && [ -x "$K8S_BIN/etcd" ]; then echo "build: kubernetes $K8S_VERSION cached"; else timed "kubernetes $K8S_VERSION + etcd" build_k8s; fi
fi
if [[ $what == all || $what == coredns ]]; then
  if [ -x "$DNS_BIN/coredns" ]; then echo "build: coredns $COREDNS_VERSION cached"; else timed "coredns $COREDNS_VERSION" build_coredns; fi
fi
if [[ $what == all || $what == helm ]]; then
  if [ -x "$HELM_BIN/helm" ]; then echo "build: helm $HELM_VERSION cached"; else timed "helm $HELM_VERSION" build_helm; fi
fi
if [[ $what == all || $what == opa-authz ]]; then
  if [ -x "$OPA_AUTHZ_BIN/sco-opa-authz" ]; then echo "build: opa-authz cached"; else timed "opa-authz (OPA rego behind ext_authz)" build_opa_authz; fi
fi
if [[ $what == all || $what == pyspark ]]; then
  if [ -x "$VENV/bin/python" ] && [ -d "$VENV/lib" ] && [ -f "$VENV/.complete" ]; then echo "build: pyspark $PYSPARK_VERSION venv cached"; else timed "pyspark $PYSPARK_VERSION venv" build_venv; fi
fi

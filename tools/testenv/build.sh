#!/usr/bin/env bash
# Build the local control plane binaries from Go modules (no Docker, no download sites) and cache
# them outside the repository, keyed by versions. Prints the bin directory on stdout.
#   build.sh                      every component (the test tiers)
#   build.sh etcd kube            only these (the demo: no kwok, helm, promtool or prometheus)
# Components: etcd, kube (kube-apiserver, -controller-manager, -scheduler, kubectl), kubelet (the
# real node: tools/node), kwok, helm, promtool, prometheus (the server, without the web UI assets:
# the dashboards are evaluated against it through its HTTP API). Each is built once into the shared
# bin directory and marked done on its own.
# cyclonus (not a control plane binary): the NetworkPolicy evaluator of the chart's policy test
# (tests/packaging/test_network_policy.py). Its marker names its version, which is not in the key.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache_root="${DTJ_TESTENV_CACHE:-$HOME/.cache/dtj-testenv}"
key="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}_prom-${PROMETHEUS_VERSION}"
bin_dir="$cache_root/bin/$key"
work_dir="$cache_root/work/$key"
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0

log() { echo "[testenv-build $(date +%H:%M:%S)] $*" >&2; }

build_k8s() {  # commands...: from k8s.io/kubernetes/cmd
  local mod="$work_dir/k8s" minor="${K8S_VERSION#v1.}"
  minor="${minor%%.*}"
  local staging_version="v0.${K8S_VERSION#v1.}"
  mkdir -p "$mod" && cd "$mod"
  [ -f go.mod ] || go mod init testenv.local/k8sbin >/dev/null 2>&1
  local upstream
  upstream="$(go mod download -json "k8s.io/kubernetes@${K8S_VERSION}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  go mod edit -go="$(awk '$1=="go"{print $2; exit}' "$upstream")"
  local godebug
  godebug="$(awk '$1=="godebug"{print $2; exit}' "$upstream")"
  [ -z "$godebug" ] || go mod edit -godebug="$godebug"
  # Each staging module is replaced upstream by a relative path; point it at the published module.
  grep -oE '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$upstream" | awk '{print $1}' | while read -r m; do
    go mod edit -replace="$m=$m@$staging_version"
  done
  local tools=("$@")
  go get -tool $(printf "k8s.io/kubernetes/cmd/%s@${K8S_VERSION} " "${tools[@]}") >&2
  local ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=${K8S_VERSION} -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor}"
    ldflags+=" -X $pkg.gitTreeState=clean"
  done
  for t in "${tools[@]}"; do
    log "building $t"
    go build -ldflags "$ldflags" -o "$bin_dir.tmp/$t" "k8s.io/kubernetes/cmd/$t"
  done
}

build_etcd() {
  local mod="$work_dir/etcd"
  mkdir -p "$mod" && cd "$mod"
  [ -f go.mod ] || go mod init testenv.local/etcdbin >/dev/null 2>&1
  go get -tool "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" >&2
  log "building etcd"
  go build -ldflags "-s -w" -o "$bin_dir.tmp/etcd" go.etcd.io/etcd/server/v3
}

build_install() {  # name module version [ldflags]
  local name="$1" module="$2" version="$3" ldflags="${4:-}"
  log "building $name"
  GOBIN="$bin_dir.tmp" go install -ldflags "-s -w $ldflags" "$module@$version"
}

copy_kwok_stages() {
  local src
  src="$(go env GOMODCACHE)/sigs.k8s.io/kwok@${KWOK_VERSION}/kustomize/stage"
  mkdir -p "$bin_dir.tmp/kwok-stages"
  cp -r "$src/." "$bin_dir.tmp/kwok-stages/"
  chmod -R u+w "$bin_dir.tmp/kwok-stages"
}

build_component() {  # name
  case "$1" in
    etcd) build_etcd ;;
    kube) build_k8s kube-apiserver kube-controller-manager kube-scheduler kubectl ;;
    kubelet) build_k8s kubelet ;;
    kwok) build_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION" && copy_kwok_stages ;;
    helm) build_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" \
      "-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" ;;
    promtool) build_install promtool github.com/prometheus/prometheus/cmd/promtool \
      "$PROMETHEUS_VERSION" ;;
    prometheus) build_install prometheus github.com/prometheus/prometheus/cmd/prometheus \
      "$PROMETHEUS_VERSION" ;;
    cyclonus) build_install cyclonus github.com/mattfenwick/cyclonus/cmd/cyclonus \
      "$CYCLONUS_VERSION" ;;
    *) echo "unknown component $1 (etcd, kube, kubelet, kwok, helm, promtool, prometheus, cyclonus)" >&2
      exit 2 ;;
  esac
}

marker() {  # component: the file that marks it built
  case "$1" in
    cyclonus) echo "$bin_dir/.built-cyclonus-${CYCLONUS_VERSION}" ;;
    *) echo "$bin_dir/.built-$1" ;;
  esac
}

build_missing() {  # components...
  local component
  for component in "$@"; do
    [ -f "$(marker "$component")" ] && continue
    local start_s
    start_s=$(date +%s)
    rm -rf "$bin_dir.tmp" && mkdir -p "$bin_dir.tmp" "$work_dir" "$bin_dir"
    ( build_component "$component" )
    cp -r "$bin_dir.tmp/." "$bin_dir/" && rm -rf "$bin_dir.tmp"
    touch "$(marker "$component")"
    log "built $component in $(( $(date +%s) - start_s ))s"
  done
}

components=("$@")
[ "${#components[@]}" -gt 0 ] || components=(etcd kwok helm promtool prometheus cyclonus kube kubelet)
all_built() {
  local component
  for component in "$@"; do [ -f "$(marker "$component")" ] || return 1; done
}
# Built already: no lock, so that a long build of another component holds no one else up.
if all_built "${components[@]}"; then echo "$bin_dir"; exit 0; fi
mkdir -p "$cache_root"
exec 9>"$cache_root/build.lock"
flock 9
# A directory built before components were marked one by one holds all of them.
if [ -f "$bin_dir/.complete" ]; then
  for component in etcd kube kwok helm promtool; do touch "$bin_dir/.built-$component"; done
fi
build_missing "${components[@]}"
echo "$bin_dir"

#!/usr/bin/env bash
# Build the test control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl), KWOK and Helm from their upstream Go modules into a
# version-keyed cache folder outside the repo. Reuses the folder when complete.
# Prints the bin folder on stdout.
#
# `build.sh node` builds the real node's kubelet and kube-proxy instead (module
# node/, the same Kubernetes release and replace block) into a folder of their
# own, so adding or changing them never invalidates the control plane's cache.
#
# `build.sh prometheus` builds Prometheus (module prometheus/) with only the Kubernetes
# service discovery (Debian's has none), for the tests that find pods through the API.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"
target="${1:-control-plane}"

# The cache key covers every input that changes the binaries: the pinned
# versions and the go.mod/go.sum files of the build modules.
if [[ $target == prometheus ]]; then
  # The version is the one prometheus/go.mod pins (v0.316.0 is Prometheus 3.16.0).
  PROMETHEUS_VERSION="$(awk '$1 == "github.com/prometheus/prometheus" {print $2}' "$here/prometheus/go.mod")"
  key="prometheus-${PROMETHEUS_VERSION}-$(cat "$here"/prometheus/go.* | sha256sum | cut -c1-12)"
elif [[ $target == node ]]; then
  key="node-${KUBE_VERSION}-$(cat "$here"/node/go.* | sha256sum | cut -c1-12)"
else
  key="k8s-${KUBE_VERSION}-kwok-${KWOK_VERSION}-helm-${HELM_VERSION}-$(
    cat "$here/go.mod" "$here/go.sum" "$here"/kwok/go.* "$here"/helm/go.* | sha256sum | cut -c1-12)"
fi
cache_root="${AGENTPOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentpool}/testcluster"
bin="$cache_root/$key/bin"
stamp="$bin/.complete"

if [[ -f "$stamp" ]]; then
  echo "$bin"
  exit 0
fi

mkdir -p "$bin"
# One build per cache folder at a time: a second caller (CI beside a test that needs the same
# binaries) waits here, then finds the folder complete instead of racing on the .tmp files.
exec 9>"$bin/.lock"
flock 9
if [[ -f "$stamp" ]]; then
  echo "$bin"
  exit 0
fi
export CGO_ENABLED=0 GOFLAGS="-buildvcs=false -trimpath" GOTOOLCHAIN=local

minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
ldflags="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  ldflags+=" -X '$pkg.gitVersion=$KUBE_VERSION' -X '$pkg.gitMajor=1' -X '$pkg.gitMinor=$minor'"
  ldflags+=" -X '$pkg.gitTreeState=clean' -X '$pkg.buildDate=1970-01-01T00:00:00Z'"
done

start=$(date +%s)
log() { echo "[build $(( $(date +%s) - start ))s] $*" >&2; }

if [[ $target == prometheus ]]; then
  # Its build tags drop every service discovery but Kubernetes' (plugins/plugin_*.go): fewer
  # modules to download and compile (no cloud SDKs). The web UI's assets are not embedded
  # (no `builtinassets`): the tests use the HTTP API only.
  if [[ ! -x "$bin/prometheus" ]]; then
    log "building prometheus $PROMETHEUS_VERSION"
    dir="$(cd "$here/prometheus" && go list -m -f '{{.Dir}}' github.com/prometheus/prometheus 2>/dev/null || true)"
    if [[ -z $dir || ! -f $dir/VERSION ]]; then
      (cd "$here/prometheus" && go mod download github.com/prometheus/prometheus)
      dir="$(cd "$here/prometheus" && go list -m -f '{{.Dir}}' github.com/prometheus/prometheus)"
    fi
    pv=github.com/prometheus/common/version
    (cd "$here/prometheus" && go build -pgo=off -tags remove_all_sd,enable_kubernetes_sd \
       -ldflags "-s -w -X '$pv.Version=$(cat "$dir/VERSION")' -X '$pv.Revision=$PROMETHEUS_VERSION' -X '$pv.Branch=module' -X '$pv.BuildUser=agentpool' -X '$pv.BuildDate=19700101-00:00:00'" \
       -o "$bin/prometheus.tmp" github.com/prometheus/prometheus/cmd/prometheus)
    mv "$bin/prometheus.tmp" "$bin/prometheus"
  fi
  touch "$stamp"
  log "done"
  echo "$bin"
  exit 0
fi

if [[ $target == node ]]; then
  # CGO off like upstream's static builds: the kubelet then uses Go's resolver and no libc,
  # and runc (Debian's, with seccomp) is what touches the kernel's container features.
  for tool in kubelet kube-proxy; do
    if [[ ! -x "$bin/$tool" ]]; then
      log "building $tool $KUBE_VERSION"
      (cd "$here/node" && go build -pgo=off -ldflags "$ldflags" -o "$bin/$tool.tmp" "k8s.io/kubernetes/cmd/$tool")
      mv "$bin/$tool.tmp" "$bin/$tool"
    fi
  done
  touch "$stamp"
  log "done"
  echo "$bin"
  exit 0
fi

# Build one at a time: parallel links of these binaries need several GiB each.
for tool in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  if [[ ! -x "$bin/$tool" ]]; then
    log "building $tool $KUBE_VERSION"
    (cd "$here" && go build -pgo=off -ldflags "$ldflags" -o "$bin/$tool.tmp" "k8s.io/kubernetes/cmd/$tool")
    mv "$bin/$tool.tmp" "$bin/$tool"
  fi
done
if [[ ! -x "$bin/etcd" ]]; then
  log "building etcd"
  (cd "$here" && go build -ldflags "-s -w" -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$bin/etcd.tmp" "$bin/etcd"
fi
if [[ ! -x "$bin/kwok" ]]; then
  log "building kwok $KWOK_VERSION"
  (cd "$here/kwok" && go build -ldflags "-s -w -X 'sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION'" \
     -o "$bin/kwok.tmp" sigs.k8s.io/kwok/cmd/kwok)
  mv "$bin/kwok.tmp" "$bin/kwok"
fi
if [[ ! -x "$bin/helm" ]]; then
  log "building helm $HELM_VERSION"
  (cd "$here/helm" && go build -ldflags "-s -w -X 'helm.sh/helm/v3/internal/version.version=$HELM_VERSION'" \
     -o "$bin/helm.tmp" helm.sh/helm/v3/cmd/helm)
  mv "$bin/helm.tmp" "$bin/helm"
fi
touch "$stamp"
log "done"
echo "$bin"

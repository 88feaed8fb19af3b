#!/usr/bin/env bash
# Install what real nodes and local image builds need, from Debian packages:
# containerd, runc, the CNI plugins, nftables (kube-proxy's backend) and iptables (the
# kubelet's canary chains; both only ever touch the nodes' own network namespaces), buildah
# (builds the Dockerfiles), mmdebstrap (Debian root file systems for base images), and gcc
# with the static C library (upstream's pause.c is compiled here).
#
# Only binaries are wanted: the harness runs a private containerd per node. The package's
# own containerd service is kept from starting and disabled. Idempotent: when every binary is
# already present, apt is not touched.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
  exec sudo --preserve-env=DEBIAN_FRONTEND "$0" "$@"
fi

declare -A binary_of=(
  [containerd]=/usr/bin/containerd
  [runc]=/usr/sbin/runc
  [containernetworking-plugins]=/usr/lib/cni/bridge
  [nftables]=/usr/sbin/nft
  [iptables]=/usr/sbin/iptables
  [buildah]=/usr/bin/buildah
  [mmdebstrap]=/usr/bin/mmdebstrap
  [gcc]=/usr/bin/gcc
  [libc6-dev]=/usr/lib/x86_64-linux-gnu/libc.a
)

missing=()
for pkg in "${!binary_of[@]}"; do
  [[ -e ${binary_of[$pkg]} ]] || missing+=("$pkg")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-nodes: all binaries present, nothing to install"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\n# added by agentpool hack/install-nodes.sh\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi

echo "install-nodes: installing ${missing[*]}"
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"

# A containerd the package started anyway would own /run/containerd: stop it, keep it off.
if [[ " ${missing[*]} " == *" containerd "* ]]; then
  if [[ -d /run/systemd/system ]]; then
    systemctl disable --now containerd >/dev/null 2>&1 || true
  elif [[ -x /etc/init.d/containerd ]]; then
    service containerd stop >/dev/null 2>&1 || true
    update-rc.d containerd disable >/dev/null 2>&1 || true
  fi
fi
echo "install-nodes: done"
containerd --version
runc --version | head -1

#!/usr/bin/env bash
# Install the real services the tests run against: PostgreSQL, Redis, PgBouncer, Prometheus.
#
# Only the binaries are wanted: `python -m agentpool_dev services up` runs private
# instances on loopback with non-default ports. So any distro-default server that a
# package's postinst would start (5432, 6379, 6432, 9090) is prevented or stopped and
# disabled. Idempotent: when every binary is already present, apt is not touched.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
  exec sudo --preserve-env=DEBIAN_FRONTEND "$0" "$@"
fi

# package -> a binary it provides (PostgreSQL's server binary lives in a versioned dir).
declare -A binary_of=(
  [postgresql]="/usr/lib/postgresql/*/bin/postgres"
  [postgresql-client]=/usr/bin/psql
  [redis-server]=/usr/bin/redis-server
  [redis-tools]=/usr/bin/redis-cli
  [pgbouncer]=/usr/sbin/pgbouncer
  [prometheus]=/usr/bin/prometheus
)

missing=()
for pkg in "${!binary_of[@]}"; do
  # shellcheck disable=SC2086  # the glob must expand
  if ! compgen -G ${binary_of[$pkg]} >/dev/null; then
    missing+=("$pkg")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-services: all binaries present, nothing to install"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive

# Refuse service starts during the install (invoke-rc.d and deb-systemd-invoke both ask
# policy-rc.d). Docker images often already ship one; only add ours if there is none.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\n# added by agentpool hack/install-services.sh\nexit 101\n' >"$policy"
  chmod 0755 "$policy"
  trap 'rm -f "$policy"' EXIT
fi

echo "install-services: installing ${missing[*]}"
apt-get update -q
# No recommends: prometheus recommends prometheus-node-exporter, yet another daemon.
apt-get install -y -q --no-install-recommends "${missing[@]}"

# Belt and braces for hosts where something started anyway (e.g. policy-rc.d allowed it):
# stop the default instances and keep them from coming back at boot. Only for packages
# installed just now: a server the person already had is theirs to manage.
for unit in "${missing[@]}"; do
  [[ $unit == *-client || $unit == *-tools ]] && continue
  if [[ -d /run/systemd/system ]]; then
    systemctl disable --now "$unit" >/dev/null 2>&1 || true
  elif [[ -x /etc/init.d/$unit ]]; then
    if service "$unit" status >/dev/null 2>&1; then
      echo "install-services: stopping distro-default $unit"
      service "$unit" stop || true
    fi
    update-rc.d "$unit" disable >/dev/null 2>&1 || true
  fi
done

echo "install-services: done"
postgres_bin=$(compgen -G "/usr/lib/postgresql/*/bin/postgres" | sort -V | tail -1)
"$postgres_bin" --version
redis-server --version
/usr/sbin/pgbouncer --version | head -1
prometheus --version 2>&1 | head -1

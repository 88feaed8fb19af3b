#!/usr/bin/env bash
# Refresh the lock files in requirements/ from pyproject.toml (`make lock`).
#
# Every install (the Makefile's venv, .ci/run, the runtime and operator images) installs from
# these files with --require-hashes, so a fresh machine gets exactly the versions tested here.
# The lock is universal (any Python >= 3.11, any platform): the images' Python may differ from
# the developer's. runtime.txt and operator.txt (each image's) are constrained by dev.txt, so
# all pin the same versions.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
UV_VERSION=0.13.9
tools="${XDG_CACHE_HOME:-$HOME/.cache}/agentpool/uv-$UV_VERSION"
if [[ ! -x "$tools/bin/uv" ]]; then
  python3 -m venv "$tools"
  "$tools/bin/pip" install --quiet "uv==$UV_VERSION"
fi
# --keep: re-resolve without upgrading what is pinned already (after reshaping pyproject.toml).
upgrade=(--upgrade)
[[ "${1:-}" == "--keep" ]] && upgrade=()
uv=("$tools/bin/uv" pip compile --quiet --universal --python-version 3.11 --generate-hashes
    --no-header "${upgrade[@]}")
"${uv[@]}" pyproject.toml --extra dev --extra bench -o requirements/dev.txt
"${uv[@]}" pyproject.toml --extra runtime -c requirements/dev.txt -o requirements/runtime.txt
"${uv[@]}" pyproject.toml --extra operator -c requirements/dev.txt -o requirements/operator.txt
"${uv[@]}" requirements/bench-arq.in --no-deps -o requirements/bench-arq.txt
# The images' wheelhouse: runtime.txt and operator.txt evaluated for the images' Python.
PATH="$tools/bin:$PATH" PYTHONPATH=hack "${PYTHON:-.venv/bin/python}" -m agentpool_dev images lock
echo "lock: refreshed requirements/{dev,runtime,operator,bench-arq}.txt and hack/images/python-requirements.lock"

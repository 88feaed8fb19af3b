# Entry points for people and CI. `make up` runs the main job locally; `make test` runs the tests.
# Both work on a fresh machine: they install what is missing first (Python venv, Debian
# services, and the control plane built from Go modules into a version-keyed cache).

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)/hack:$(CURDIR)/operator:$(CURDIR)
DEV := $(PY) -m agentpool_dev

.PHONY: deps venv lock services-install nodes-install binaries images up up-kwok down crds chart-generate chart-check test-chart bench cluster-up cluster-down kubeconfig \
        services-up services-down lint typecheck test test-fast clean

deps: venv services-install nodes-install binaries

venv: $(VENV)/.installed
# Dependencies come from the lock (requirements/, refreshed by `make lock`) with their hashes,
# so a fresh machine installs exactly the versions tested; the project itself goes in last.
$(VENV)/.installed: pyproject.toml requirements/dev.txt requirements/bench-arq.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet 'pip==26.3'
	$(PY) -m pip install --quiet --require-hashes -r requirements/dev.txt
	# arq pins redis<6 but runs on the runtime's redis 8: install it without that pin.
	$(PY) -m pip install --quiet --require-hashes --no-deps -r requirements/bench-arq.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

# Re-resolve the lock files from pyproject.toml (newest versions it allows), and the images'
# wheelhouse lock from them; commit the result.
lock:
	bash hack/lock.sh

services-install:
	bash hack/install-services.sh

# containerd, runc, CNI plugins, nftables, buildah, mmdebstrap: real nodes and image builds.
nodes-install:
	bash hack/install-nodes.sh

# The first build takes 15-30 minutes on 2 cores; later runs reuse the cache and take a second.
# Prometheus (with Kubernetes service discovery, for the real-pod tests) is cached the same way.
binaries:
	bash hack/testcluster/build.sh
	bash hack/testcluster/build.sh node
	bash hack/testcluster/build.sh prometheus

# Container images for real nodes, built locally (no registry) and cached by content hash.
images: venv
	$(DEV) images build

cluster-up: venv binaries
	$(DEV) cluster up

cluster-down: venv
	$(DEV) cluster down

kubeconfig: venv
	@$(DEV) cluster kubeconfig

services-up: venv services-install
	$(DEV) services up

services-down: venv
	$(DEV) services down

# The main job: control plane with a real node, images, services, CRD, operator, the example
# AgentPool running in a real pod, and a batch of tasks processed by it.
up: deps
	$(DEV) up

# API-only: the same with KWOK's simulated pods (no images, no containers, no tasks).
up-kwok: deps
	$(DEV) up --kwok

down: venv
	$(DEV) down

# Generated files: the CRD from the pydantic models, and the chart's dashboards, alert rules,
# adapter rules and CRD template from the monitoring code. Tests fail when they are stale.
crds: venv
	$(PY) -m agentpool_tools.gen_crd

chart-generate: crds
	$(PY) -m agentpool_tools.monitoring

chart-check: venv
	$(PY) -m agentpool_tools.gen_crd --check
	$(PY) -m agentpool_tools.monitoring --check

# The chart alone: lint, render, strict validation, install/upgrade/uninstall, promtool, PromQL.
test-chart: deps
	$(VENV)/bin/pytest tests/chart

lint: venv
	$(VENV)/bin/ruff check .

typecheck: venv
	$(VENV)/bin/mypy

# The suite in stages (tests/plugins/stages.py), each only once the one before passed: lint and
# types, unit, integration (real services), e2e (the real control plane and real pods).
TEST_STAGES := lint unit integration e2e
test: deps
	@for stage in $(TEST_STAGES); do \
	  echo "test: stage $$stage"; $(VENV)/bin/pytest -m $$stage || exit $$?; \
	done

# Pure unit tests only (tests/unit): no ruff or mypy, no services, no cluster.
test-fast: venv
	$(VENV)/bin/pytest tests/unit

# Benchmarks against Celery, RQ, arq and per-task processes, and the operator at scale
# (figures: bench/RESULTS.md). Not part of `make test`, which runs their smoke mode.
bench: venv services-up binaries
	$(PY) -m bench all

clean: down
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

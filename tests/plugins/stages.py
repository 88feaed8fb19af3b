"""The suite's stages, in the order `make test` runs them; each test belongs to exactly one.

    lint         ruff, mypy --strict and the import rules (tests/lint/)
    unit         pure: no services, no cluster (`make test-fast` runs tests/unit/)
    integration  real PostgreSQL, Redis, PgBouncer, Prometheus (marked `services`)
    e2e          the real Kubernetes control plane, and real pods (marked `cluster`)

A test's stage is its folder (tests/lint, tests/unit, tests/integration, tests/e2e); elsewhere
(tests/chart, tests/bench) it follows what the test needs, from the `services` and `cluster`
markers its module already carries. No test declares its stage by hand and none is left out,
so `pytest -m unit` selects exactly the unit stage; a unit test that needs services or a
cluster is an error.
"""

from __future__ import annotations

from pathlib import Path

import pytest

STAGES = ("lint", "unit", "integration", "e2e")
TESTS_DIR = Path(__file__).resolve().parents[1]
NEEDS = {"lint": set(), "unit": set(), "integration": {"services"},
         "e2e": {"services", "cluster"}}


def stage_of(path: Path, markers: set[str]) -> str:
    for stage in STAGES:
        if path.is_relative_to(TESTS_DIR / stage):
            return stage
    if "cluster" in markers:
        return "e2e"
    if "services" in markers:
        return "integration"
    return "unit"


def pytest_configure(config: pytest.Config) -> None:
    for stage in STAGES:
        config.addinivalue_line("markers", f"{stage}: the {stage} stage (tests/plugins/stages.py)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        markers = {mark.name for mark in item.iter_markers()}
        if declared := markers & set(STAGES):
            raise pytest.UsageError(f"{item.nodeid}: stages are derived, not declared {declared}")
        stage = stage_of(item.path, markers)
        if beyond := markers & {"services", "cluster"} - NEEDS[stage]:
            raise pytest.UsageError(f"{item.nodeid}: the {stage} stage runs without {beyond}")
        item.add_marker(getattr(pytest.mark, stage))

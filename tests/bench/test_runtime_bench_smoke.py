"""Smoke mode of the runtime benchmarks against peers, so they cannot rot (numbers:
bench/RESULTS.md). Each runs at a tiny size with real workers on the harness Redis."""

from __future__ import annotations

import asyncio

import pytest

from agentpool_dev.services import ServiceSettings
from bench import runtime_throughput

pytestmark = [
    pytest.mark.services, pytest.mark.slow,
    # arq (built for redis<6) passes retry_on_timeout, which redis 6+ deprecates.
    pytest.mark.filterwarnings("ignore:Call to '__init__' function with deprecated usage"
                               ":DeprecationWarning"),
]


def test_throughput_smoke_measures_every_system(services: ServiceSettings) -> None:
    results = asyncio.run(
        runtime_throughput.run(list(runtime_throughput.SYSTEMS), tasks=200, reps=1, within=60))
    report = runtime_throughput.report(results)
    print(report)
    assert {r.system for r in results} == set(runtime_throughput.SYSTEMS)
    assert all(r.median > 0 for r in results)
    assert "agentpool / system" in report

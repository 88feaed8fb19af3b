"""Smoke mode of the tracing overhead benchmark, so it cannot rot (numbers: bench/RESULTS.md)."""

from __future__ import annotations

import asyncio

import pytest

from agentpool_dev.services import ServiceSettings
from bench import tracing_overhead

pytestmark = [pytest.mark.services, pytest.mark.slow]


def test_tracing_benchmark_measures_every_mode_and_exports_when_on(
        services: ServiceSettings) -> None:
    costs, modes, found = asyncio.run(tracing_overhead.run(tasks=200, reps=1))
    print(tracing_overhead.report(costs, modes, found))
    assert [len(mode.result.rates) for mode in modes] == [1, 1, 1, 1]
    assert all(mode.result.median > 0 for mode in modes)
    assert costs.exports > 0
    assert found.exports > 0
    assert costs.worker_off_ns < costs.worker_on_ns

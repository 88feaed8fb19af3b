"""Smoke mode of the operator scale benchmark, so it cannot rot (numbers: bench/RESULTS.md)."""

from __future__ import annotations

import pytest

from bench.operator_scale import run, table

pytestmark = pytest.mark.cluster


def test_operator_scale_benchmark_runs_and_reports_a_quiet_steady_state() -> None:
    results = run([5], steady_seconds=5, timeout=120)
    print(table(results))
    [result] = results
    assert result.pools == 5
    assert result.floor_seconds > 0
    assert result.operator_seconds > 0
    assert result.operator_peak_rss_bytes > 0
    assert result.steady_writes_per_minute == 0

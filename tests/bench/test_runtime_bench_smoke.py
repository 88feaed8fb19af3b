"""Smoke mode of the runtime benchmarks against peers, so they cannot rot (numbers:
bench/RESULTS.md). Each runs at a tiny size with real workers on the harness Redis."""

from __future__ import annotations

import asyncio

import pytest

from agentpool_dev.services import ServiceSettings, pgbouncer_supports_prepared_statements
from bench import (
    budget_limiter,
    db_statement_cache,
    runtime_crash,
    runtime_latency,
    runtime_throughput,
    runtime_warmcold,
)

pytestmark = [
    pytest.mark.services, pytest.mark.slow,
    # arq (built for redis<6) passes retry_on_timeout, which redis 6+ deprecates.
    pytest.mark.filterwarnings("ignore:Call to '__init__' function with deprecated usage"
                               ":DeprecationWarning"),
]


def test_throughput_smoke_measures_every_system_in_both_submit_modes(
        services: ServiceSettings) -> None:
    outcome = asyncio.run(
        runtime_throughput.run(list(runtime_throughput.SYSTEMS), tasks=200, reps=1, within=60))
    report = runtime_throughput.report(outcome)
    print(report)
    assert "floor" in runtime_throughput.SYSTEMS
    assert {(r.system, r.mode) for r in outcome.results} == {
        (system, mode) for system in runtime_throughput.SYSTEMS for mode in ("batch", "single")}
    assert all(r.median > 0 for r in outcome.results)
    # A table per mode, each with AgentPool's ratio to every system and to the floor.
    assert report.count("agentpool / system") == 2
    assert report.count("agentpool / floor: ") == 2
    assert report.index("### submit: batch") < report.index("### submit: single")


def test_latency_smoke_reports_percentiles(services: ServiceSettings) -> None:
    results = asyncio.run(runtime_latency.run(["agentpool", "celery", "floor"], [50],
                                              tasks=200, max_seconds=5, rates=[40]))
    report = runtime_latency.report(results)
    print(report)
    # Each system at half its own maximum, then both at the same offered load.
    assert [(r.system, r.load) for r in results] == [
        ("agentpool", "50%"), ("agentpool", "40/s"), ("celery", "50%"), ("celery", "40/s"),
        ("floor", "50%"), ("floor", "40/s")]
    assert all(r.latencies and r.q(99) > 0 for r in results)
    assert "system p99 / agentpool p99" in report
    # AgentPool's results carry their timestamps: its latency is split into phases.
    split = [r for r in results if r.phases]
    assert [r.system for r in split] == ["agentpool", "agentpool"]
    assert all(len(r.phases["queued"]) == len(r.latencies) for r in split)


def test_warm_cold_smoke_times_the_first_heavy_task(services: ServiceSettings) -> None:
    results = asyncio.run(runtime_warmcold.run(["agentpool", "fork"], reps=1))
    report = runtime_warmcold.report(results)
    print(report)
    assert all(r.heavy and r.heavy[0] > 0 for r in results)
    assert "system / agentpool" in report


def test_crash_smoke_loses_no_agentpool_task(services: ServiceSettings) -> None:
    [result] = asyncio.run(runtime_crash.run(["agentpool"], tasks=200, interval=0.3, drain=60))
    print(runtime_crash.report([result]))
    assert result.lost == 0
    assert result.kills >= 1
    assert result.concurrent == 0  # killed workers never leave a task running twice


def test_budget_limiter_smoke_reports_its_cost_against_redis(services: ServiceSettings) -> None:
    results = asyncio.run(budget_limiter.run(ops=300, callers=8))
    report = budget_limiter.report(results)
    print(report)
    assert results[0][0] == "INCR (Redis round trip)"
    assert all(latencies and rate > 0 for _, latencies, rate in results)
    assert "of INCR's ops/s" in report


def test_db_statement_cache_smoke_runs_or_says_why_not(services: ServiceSettings) -> None:
    results = asyncio.run(db_statement_cache.run(services.pgbouncer_dsn, tasks=100, reps=1,
                                                 within=60, warm_up=20))
    report = db_statement_cache.report(results)
    print(report)
    off, on = results
    assert off.rates[0] > 0
    assert (off.failed, len(off.db_ms)) == (0, 100)
    if pgbouncer_supports_prepared_statements():
        assert on.rates[0] > 0
        assert on.failed == 0
    else:  # Debian's PgBouncer 1.18: the cached mode cannot even warm a worker up
        assert not on.rates
        assert any("prepared statement" in error for error in on.errors), on.errors

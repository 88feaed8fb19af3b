"""Handler loading and calling; the supervisor's registry and worker metric deltas; cgroup
memory figures."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent_runtime.config import RuntimeConfig
from agent_runtime.errors import HandlerError
from agent_runtime.ipc.messages import MetricDelta
from agent_runtime.supervisor.memory import read_container_memory
from agent_runtime.supervisor.pod_metrics import RuntimeMetrics
from agent_runtime.worker.stats import WorkerStats
from agent_runtime.worker.task_handlers import Handler, HandlerRegistry, load_ref


def payload_only(payload: dict[str, int]) -> int:
    return payload["x"] + 1


def in_thread(payload: object, ctx: object) -> str:
    return threading.current_thread().name


async def async_with_ctx(payload: object, ctx: object) -> object:
    return ctx


NOT_CALLABLE = 42


class Agent:
    @staticmethod
    def run(payload: object) -> object:
        return {"ran": payload}


def test_a_handler_may_be_an_attribute_path() -> None:
    # The CRD accepts `module:Class.method`; a worker must be able to import it.
    assert load_ref(f"{__name__}:Agent.run")("x") == {"ran": "x"}


@pytest.mark.parametrize(("ref", "message"), [
    ("no_such_module_xyz:run", "cannot import handler module 'no_such_module_xyz'"),
    (f"{__name__}:missing", "has no attribute 'missing'"),
    (f"{__name__}:Agent.missing", "has no attribute 'Agent.missing'"),
    (f"{__name__}:NOT_CALLABLE", "'NOT_CALLABLE' in module .* is not callable"),
])
def test_bad_handler_references_say_what_failed(ref: str, message: str) -> None:
    with pytest.raises(HandlerError, match=message):
        load_ref(ref)


async def test_handlers_get_the_context_only_when_they_take_it() -> None:
    sync = Handler.from_ref("s", f"{__name__}:payload_only")
    assert (sync.is_async, sync.wants_context) == (False, False)
    assert await sync({"x": 1}, "ctx") == 2
    coro = Handler.from_ref("a", f"{__name__}:async_with_ctx")
    assert (coro.is_async, coro.wants_context) == (True, True)
    assert await coro({}, "ctx") == "ctx"


async def test_sync_handlers_run_off_the_event_loop() -> None:
    handler = Handler.from_ref("t", f"{__name__}:in_thread")
    assert await handler({}, None) != threading.current_thread().name


def test_registry_resolves_names_and_configured_references_only() -> None:
    config = RuntimeConfig(pool="p", handler=f"{__name__}:payload_only",
                           handlers={"ctx": f"{__name__}:async_with_ctx"})
    registry = HandlerRegistry.load(config)
    assert registry.names == ["ctx", "default"]
    assert registry.resolve("default") is registry.resolve(f"{__name__}:payload_only")
    assert registry.resolve("ctx") is not None
    assert registry.resolve("os:system") is None  # never import what the queue names


def _samples(metrics: RuntimeMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = metrics.render().decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_metric_names_follow_the_catalogue() -> None:
    metrics = RuntimeMetrics(["default"])
    names = {family.name for family in text_string_to_metric_families(metrics.render().decode())}
    for expected in ("agentpool_tasks_processed", "agentpool_task_duration_seconds",
                     "agentpool_task_queue_duration_seconds", "agentpool_workers",
                     "agentpool_worker_restarts", "agentpool_cache_requests",
                     "agentpool_external_request_duration_seconds",
                     "agentpool_db_pool_connections"):
        assert expected in names
    samples = _samples(metrics)
    # Pre-initialised at zero, so the first failure shows up in rate().
    assert samples[("agentpool_tasks_processed_total",
                    frozenset({("task_type", "default"), ("outcome", "failure")}))] == 0


def test_task_events_and_worker_deltas_land_in_the_registry() -> None:
    metrics = RuntimeMetrics(["default"])
    metrics.task_started("default", queue_wait=0.5)
    metrics.task_finished("default", "failure", 1.5, retried=True, dead_reason=None,
                          finished_at=10.0)
    stats = WorkerStats()
    stats.inc("agentpool_cache_requests_total", {"cache": "llm", "result": "hit"}, 2)
    stats.observe("agentpool_external_request_duration_seconds",
                  {"api": "search", "operation": "GET", "outcome": "success"}, 0.2)
    stats.inc("agentpool_tasks_processed_total", {"task_type": "x", "outcome": "success"})
    metrics.apply_worker_stats([*stats.drain(), MetricDelta("c", "bogus", {}, 1),
                                MetricDelta("h", "agentpool_cache_requests_total", {}, 1),
                                MetricDelta("c", "agentpool_cache_requests_total",
                                            {"wrong": "label"}, 1)])
    assert stats.drain() == []  # drained means reset

    samples = _samples(metrics)
    assert samples[("agentpool_task_retries_total", frozenset({("task_type", "default")}))] == 1
    assert samples[("agentpool_cache_requests_total",
                    frozenset({("cache", "llm"), ("result", "hit")}))] == 2
    assert samples[("agentpool_external_request_duration_seconds_count",
                    frozenset({("api", "search"), ("operation", "GET"),
                               ("outcome", "success")}))] == 1
    # Workers cannot write task metrics directly (those come from task events only).
    assert ("agentpool_tasks_processed_total",
            frozenset({("task_type", "x"), ("outcome", "success")})) not in samples


def test_cgroup_v2_working_set_excludes_inactive_file_cache(tmp_path: Path) -> None:
    (tmp_path / "memory.current").write_text("1000\n")
    (tmp_path / "memory.max").write_text("4000\n")
    (tmp_path / "memory.stat").write_text("anon 600\ninactive_file 300\n")
    memory = read_container_memory(tmp_path)
    assert memory is not None
    assert (memory.working_set, memory.limit) == (700, 4000)
    (tmp_path / "memory.max").write_text("max\n")
    assert read_container_memory(tmp_path).limit is None  # type: ignore[union-attr]


def test_cgroup_v1_and_unlimited(tmp_path: Path) -> None:
    v1 = tmp_path / "memory"
    v1.mkdir()
    (v1 / "memory.usage_in_bytes").write_text("5000")
    (v1 / "memory.limit_in_bytes").write_text(str(1 << 62))
    (v1 / "memory.stat").write_text("total_inactive_file 1000\n")
    memory = read_container_memory(tmp_path)
    assert memory is not None
    assert (memory.working_set, memory.limit) == (4000, None)
    assert read_container_memory(tmp_path / "nowhere") is None

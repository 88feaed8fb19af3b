"""Pure policies: the memory breaker, the in-process LRU, partition arithmetic, worker state."""

from __future__ import annotations

import datetime as dt
import multiprocessing
import signal
from unittest.mock import Mock

from agent_runtime.db.migrations import (
    add_months,
    create_partition_sql,
    expired_partitions,
    parse_partition_name,
    partition_name,
    wanted_partitions,
)
from agent_runtime.ipc.exits import EXIT_LEASES_LAPSING, EXIT_SUPERVISOR_GONE, describe_exit
from agent_runtime.ipc.messages import DbPoolSizes, Heartbeat, RunningEntry
from agent_runtime.sdk.cache import LruCache
from agent_runtime.supervisor.breaker import BreakerAction, MemoryBreaker
from agent_runtime.supervisor.slots import Slot
from agent_runtime.supervisor.worker_handle import WorkerHandle


def test_breaker_opens_closes_with_hysteresis_and_kills_near_the_limit() -> None:
    breaker = MemoryBreaker(open_ratio=0.9, close_ratio=0.8, kill_ratio=0.95)
    assert breaker.update(850, 1000) is BreakerAction.NONE
    assert breaker.update(900, 1000) is BreakerAction.OPEN
    assert breaker.update(850, 1000) is BreakerAction.NONE  # still open between the ratios
    assert breaker.is_open
    assert breaker.update(800, 1000) is BreakerAction.CLOSE
    assert breaker.update(960, 1000) is BreakerAction.KILL_LARGEST
    assert breaker.is_open


def test_breaker_without_a_limit_never_opens() -> None:
    breaker = MemoryBreaker(0.9, 0.8, 0.95)
    assert breaker.update(10**12, None) is BreakerAction.NONE
    breaker.is_open = True
    assert breaker.update(10**12, None) is BreakerAction.CLOSE


def test_lru_evicts_the_least_recently_used_and_expires() -> None:
    now = [0.0]
    lru = LruCache(size=2, ttl=10, clock=lambda: now[0])
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # a is now the most recent
    lru.put("c", 3)
    assert "b" not in lru
    assert len(lru) == 2
    assert lru.get("a") == 1
    now[0] = 11
    assert "a" not in lru
    disabled = LruCache(size=0, ttl=10)
    disabled.put("x", 1)
    assert "x" not in disabled


def test_month_arithmetic_and_partition_names() -> None:
    assert add_months(dt.date(2026, 11, 1), 3) == dt.date(2027, 2, 1)
    assert add_months(dt.date(2026, 1, 1), -1) == dt.date(2025, 12, 1)
    assert partition_name(dt.date(2026, 2, 1)) == "agentpool_task_events_y2026m02"
    assert parse_partition_name("agentpool_task_events_y2026m02") == dt.date(2026, 2, 1)
    assert parse_partition_name("agentpool_task_events_default") is None
    assert wanted_partitions(dt.date(2026, 12, 15), ahead=2) == [
        dt.date(2026, 12, 1), dt.date(2027, 1, 1), dt.date(2027, 2, 1)]
    assert create_partition_sql(dt.date(2026, 12, 1)).endswith(
        "FOR VALUES FROM ('2026-12-01') TO ('2027-01-01')")


def test_retention_keeps_the_most_recent_months() -> None:
    names = [partition_name(dt.date(2026, m, 1)) for m in range(1, 13)] + ["other_table"]
    expired = expired_partitions(names, dt.date(2026, 11, 20), keep_months=3)
    assert expired == [partition_name(dt.date(2026, m, 1)) for m in range(1, 9)]


def _handle() -> WorkerHandle:
    process = Mock(spec=multiprocessing.Process)
    return WorkerHandle(slot=0, generation=1, consumer="c", process=process, conn=Mock(),
                        max_tasks=None)


def test_worker_state_follows_what_it_reports() -> None:
    handle = _handle()
    assert handle.state == "starting"
    handle.ready = True
    assert handle.state == "idle"
    handle.apply_heartbeat(Heartbeat(running=(RunningEntry("1-0", "t", "h", 100.0),), stats=(),
                                     db=DbPoolSizes(2, 1, 4), redis_ok=True, draining=False))
    assert handle.state == "busy"
    assert handle.task_ids(["1-0", "2-0"]) == ["t"]
    assert handle.db_pool == (2, 1, 4)
    handle.retiring = "memory"
    assert handle.state == "draining"
    handle.kill_reason = "timeout"
    assert handle.state == "unhealthy"


def test_exit_descriptions() -> None:
    assert describe_exit(-signal.SIGKILL) == "signal 9 (SIGKILL)"
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(None) == "no exit status"
    # A worker that stopped itself says why (see lifeline.py).
    assert describe_exit(EXIT_SUPERVISOR_GONE) == "exit code 4 (its supervisor was gone)"
    assert describe_exit(EXIT_LEASES_LAPSING) == ("exit code 5 (the pod's leases could not be "
                                                  "confirmed)")


def test_a_slot_whose_workers_die_cold_backs_off_and_a_warm_worker_resets_it() -> None:
    slot = Slot(0)
    assert slot.due(now=0.0)
    backoffs = []
    for _ in range(8):
        slot.worker = _handle()
        slot.died_cold()
        backoffs.append(slot.vacate(now=100.0))
    assert backoffs == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert not slot.due(now=129.9)
    assert slot.due(now=130.0)
    slot.warmed_up()
    slot.worker = _handle()
    assert slot.vacate(now=200.0) == 0.0  # a worker that was warm is replaced at once
    assert [slot.next_generation(), slot.next_generation()] == [1, 2]

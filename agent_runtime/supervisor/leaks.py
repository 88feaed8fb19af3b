"""What grew in a worker recycled for its memory: the report, from the supervisor's side.

Always on and cheap: the memory guard samples each warm worker's USS every half second
(`MemoryTrend.sample`); the growth between two samples is put down to the handlers whose tasks
ran in between, in proportion to the time each ran (memory grows while the code that keeps it
runs). So
a report says how much the worker grew since its warm-up, over how many tasks, and which
handler the growth came with. With `tracemalloc_frames` the worker adds the source lines whose
held allocations grew most (`worker/leaks.py`).

A report is published twice (`publish`): a JSON log line (`"event": "memory_report"`), and an
entry of the pool's capped Redis stream (`contract.memory_reports_key`) that the operator turns
into a Kubernetes Event on the AgentPool - pods have no right to post Events, and need none.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from agent_runtime.ipc.messages import MemoryReport

log = logging.getLogger(__name__)
MIB = 1 << 20


@dataclass
class MemoryTrend:
    """One worker's USS since its warm-up, and which handlers the growth came with: the growth
    between two samples is shared among the handlers by the time their tasks ran in between."""

    at_warmup: int | None = None
    last: int | None = None
    tasks: Counter[str] = field(default_factory=Counter)
    growth: dict[str, float] = field(default_factory=dict)
    _last_at: float = 0.0
    _ended: list[tuple[str, float, float]] = field(default_factory=list)  # handler, start, end

    def task_done(self, handler: str, duration: float, ended_at: float) -> None:
        self.tasks[handler] += 1
        self._ended.append((handler, ended_at - max(duration, 0.0), ended_at))

    def sample(self, uss: int, running: list[tuple[str, float]], now: float) -> None:
        """`running`: (handler, Unix start) of the tasks running now; `now`: Unix time."""
        ended, self._ended = self._ended, []
        since, self._last_at = self._last_at, now
        if self.at_warmup is None or self.last is None:
            self.at_warmup = self.last = uss
            return
        grown, self.last = uss - self.last, uss
        if grown <= 0:
            return
        busy: dict[str, float] = {}
        for handler, start, end in [*ended, *((h, start, now) for h, start in running)]:
            busy[handler] = busy.get(handler, 0.0) + max(0.0, min(end, now) - max(start, since))
        total = sum(busy.values())
        for handler, seconds in busy.items():
            if seconds > 0:
                self.growth[handler] = self.growth.get(handler, 0.0) + grown * seconds / total


def build_report(*, pod: str, worker: str, slot: int, pid: int | None, action: str,
                 detail: str, uss: int | None, trend: MemoryTrend) -> dict[str, Any]:
    tasks = sum(trend.tasks.values())
    growth = (uss - trend.at_warmup) if uss is not None and trend.at_warmup is not None else None
    rows = sorted(((int(trend.growth.get(name, 0.0)), trend.tasks.get(name, 0), name)
                   for name in set(trend.tasks) | set(trend.growth)), reverse=True)
    handlers = [{"handler": name, "tasks": count, "growth_bytes": grown}
                for grown, count, name in rows]
    return {"pod": pod, "worker": worker, "slot": slot, "pid": pid, "action": action,
            "detail": detail, "uss_bytes": uss, "uss_at_warmup_bytes": trend.at_warmup,
            "growth_bytes": growth, "tasks": tasks,
            "growth_per_task_bytes": int(growth / tasks) if growth is not None and tasks else None,
            "handlers": handlers, "top_allocations": [], "traced_bytes": None,
            "at": time.time()}


def add_allocations(report: dict[str, Any], answer: MemoryReport) -> None:
    report["top_allocations"] = [{"where": line.where, "size_bytes": line.size_bytes,
                                  "blocks": line.blocks} for line in answer.top]
    report["traced_bytes"] = answer.traced_bytes or None


def _mib(value: float) -> str:
    return f"{value / MIB:.1f} MiB"


def summary(report: dict[str, Any]) -> str:
    """One paragraph a person reads in `kubectl describe agentpool` (no payload, no secret:
    only sizes, counts, handler names and source lines)."""
    parts = [f"worker {report['worker']} {report['action']} for memory ({report['detail']})"]
    if report["growth_bytes"] is not None:
        per_task = report["growth_per_task_bytes"]
        parts.append(f"USS {_mib(report['uss_bytes'])}, {_mib(report['growth_bytes'])} more "
                     f"than after warm-up over {report['tasks']} task(s)"
                     + (f" ({_mib(per_task)} per task)" if per_task is not None else ""))
    growing = [row for row in report["handlers"] if row["growth_bytes"] > 0]
    if growing:
        parts.append("growth came with " + ", ".join(
            f"handler {row['handler']} ({_mib(row['growth_bytes'])} over {row['tasks']} "
            "task(s))" for row in growing[:3]))
    if report["top_allocations"]:
        parts.append("held allocations grown most at " + ", ".join(
            f"{line['where']} (+{_mib(line['size_bytes'])} in {line['blocks']} block(s))"
            for line in report["top_allocations"][:3]))
    return "; ".join(parts)


def log_report(report: dict[str, Any]) -> str:
    text = summary(report)
    top = report["handlers"][0]["handler"] if report["handlers"] else None
    log.warning("memory report: %s", text, extra={
        "event": "memory_report", "worker": report["worker"], "action": report["action"],
        "uss_bytes": report["uss_bytes"], "growth_bytes": report["growth_bytes"],
        "tasks": report["tasks"], "growth_per_task_bytes": report["growth_per_task_bytes"],
        "top_handler": top, "report": json.dumps(report)})
    return text

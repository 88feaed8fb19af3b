"""Leak diagnostics inside a worker: which source lines hold more memory than at warm-up.

Off unless `tracemalloc_frames` is above 0 (tracemalloc slows every allocation; see the
README for the measured cost). When on, tracing starts at the end of the warm-up, with a
baseline snapshot then; when the supervisor recycles the worker for its memory it asks
(`ReportMemory`), and the worker answers with the lines whose held allocations grew most
(`MemoryReport`), innermost frame first - for a leaking handler, the line that allocates
what it keeps.
"""

from __future__ import annotations

import tracemalloc

from agent_runtime.ipc.messages import AllocationGrowth, MemoryReport

TOP_LINES = 10
# Not what the tracer itself or the import machinery allocates.
_IGNORED = (tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap_external>"),
            tracemalloc.Filter(False, "<unknown>"))


class AllocationTracer:
    def __init__(self, frames: int) -> None:
        self._frames = frames
        self._baseline: tracemalloc.Snapshot | None = None

    def start(self) -> None:
        tracemalloc.start(self._frames)
        self._baseline = tracemalloc.take_snapshot().filter_traces(_IGNORED)

    def report(self, top: int = TOP_LINES) -> MemoryReport:
        if self._baseline is None or not tracemalloc.is_tracing():
            return MemoryReport((), 0)
        snapshot = tracemalloc.take_snapshot().filter_traces(_IGNORED)
        grown = [stat for stat in snapshot.compare_to(self._baseline, "lineno")
                 if stat.size_diff > 0][:top]
        lines = tuple(AllocationGrowth(f"{stat.traceback[0].filename}:"
                                       f"{stat.traceback[0].lineno}",
                                       stat.size_diff, max(stat.count_diff, 0))
                      for stat in grown)
        return MemoryReport(lines, tracemalloc.get_traced_memory()[0])

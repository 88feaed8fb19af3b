"""The pod's worker slots: `workers` positions, each with its current worker process.

Owned by `supervisor.py`. A slot outlives its workers: it numbers them (the generation names
each one's Redis consumer, `contract.consumer_name`), and it remembers how many in a row died
before they were warm, so a handler that cannot even load is retried with backoff instead of
in a tight loop. A worker being retired has left its slot (its replacement already holds it)
and is tracked by the supervisor until it exits.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent_runtime.supervisor.worker_handle import WorkerHandle

FIRST_BACKOFF_SECONDS = 0.5
MAX_SPAWN_BACKOFF_SECONDS = 30.0
START_FAILED_BACKOFF_SECONDS = 1.0


@dataclass
class Slot:
    index: int
    worker: WorkerHandle | None = None
    generation: int = 0  # workers started in this slot so far
    failures: int = 0  # workers in a row that died before they were warm
    spawn_after: float = 0.0  # monotonic: no new worker before this

    def holds(self, handle: WorkerHandle) -> bool:
        return self.worker is handle

    def next_generation(self) -> int:
        self.generation += 1
        return self.generation

    def due(self, now: float) -> bool:
        """Empty, and past its backoff: a worker should start here now."""
        return self.worker is None and now >= self.spawn_after

    def warmed_up(self) -> None:
        self.failures = 0

    def start_failed(self, now: float) -> None:
        """The process could not even be started (out of PIDs or memory): try again soon."""
        self.spawn_after = now + START_FAILED_BACKOFF_SECONDS

    def died_cold(self) -> None:
        """A worker of this slot died before it was warm: the next one waits longer."""
        self.failures += 1

    def vacate(self, now: float) -> float:
        """Its worker is gone. Returns the backoff before the next one (0: start it now)."""
        self.worker = None
        backoff = (min(FIRST_BACKOFF_SECONDS * 2 ** (self.failures - 1),
                       MAX_SPAWN_BACKOFF_SECONDS) if self.failures else 0.0)
        self.spawn_after = now + backoff
        return backoff

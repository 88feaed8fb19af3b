"""Writing an AgentBudget's status: the pools using it and its Ready condition, written only
when it changed.

Run by the operator's second work queue (keyed by budget), which the watches feed: a budget
created or changed, a pool referencing one created, changed or deleted. The users come from
the store's pool bodies (the pools that reference the budget and may use it), so the status
is known only once the first list of pools is in: until then the budget waits.

With a usage reader, a budget some pool uses is looked at again every `SATURATION_SECONDS`:
its keys' usage is read from the Redis of the pools using it (`budget_usage.py`) and turned
into `status.keys` and the Saturated condition (`budget_saturation.py`). Reading costs no
write: the status is patched only when a key's saturation or a condition flips.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent_runtime.queue.backlog import redacted
from agentpool_operator.api import AgentBudgetSpec
from agentpool_operator.budget_saturation import Saturation, ServerReading, saturation
from agentpool_operator.budget_usage import BudgetUsageReader
from agentpool_operator.budgets import BudgetId, budget_status, parse_budget, users
from agentpool_operator.k8s import Kube
from agentpool_operator.queues import QueueRegistry
from agentpool_operator.status import status_changed
from agentpool_operator.store import PoolStore
from agentpool_operator.workqueue import Requeue

WAIT_FOR_POOLS_SECONDS = 1.0
QUEUES_PENDING_SECONDS = 10.0
SATURATION_SECONDS = 30.0


@dataclass
class BudgetStatusWriter:
    kube: Kube
    store: PoolStore
    pools_listed: Callable[[], bool]
    """Whether the store holds every served pool (the resync's first list is in)."""
    queues: QueueRegistry | None = None
    """The pools' queues (Redis URLs), to tell a budget whose pools queue on two servers."""
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    usage: BudgetUsageReader | None = None
    """Reads the keys' usage for their saturation; None: the status has no saturation."""

    async def __call__(self, budget_id: BudgetId) -> None:
        if not self.pools_listed():
            raise Requeue(WAIT_FOR_POOLS_SECONDS, "waiting for the first list of pools")
        budget = self.store.budgets.get(budget_id)
        if budget is None or budget["metadata"].get("deletionTimestamp"):
            return
        spec = parse_budget(budget)
        using = users(budget_id, spec, self.store.pool_bodies())
        current = budget.get("status") or {}
        servers = self._servers()
        now = self.clock()
        saturated = await self._saturation(budget_id, budget, spec, using, current, now)
        desired = budget_status(budget, using, current, now, servers, saturated)
        if status_changed(current, desired):
            written = await self.kube.patch_budget_status(*budget_id, desired)
            if written is not None:
                self.store.budgets.put(budget_id, written, watched=False)
        if self.queues is not None and any(pool not in servers for pool in using):
            # A pool's queue is recorded by its reconcile, which may come after this: look
            # again (in memory; nothing is written unless the status changes).
            raise Requeue(QUEUES_PENDING_SECONDS, "waiting for the queues of its pools")
        if saturated is not None and using:
            raise Requeue(SATURATION_SECONDS, "looking at the keys' saturation again")

    async def _saturation(self, budget_id: BudgetId, budget: dict[str, Any],
                          spec: AgentBudgetSpec | None, using: list[str],
                          current: dict[str, Any], now: dt.datetime) -> Saturation | None:
        if self.usage is None or self.queues is None or spec is None:
            return None
        readings: list[ServerReading] | None = None
        if using:
            users_ = set(using)
            key_ids = {key.name: f"{budget_id[0]}/{budget_id[1]}/{key.name}"
                       for key in spec.keys}
            urls = sorted({entry.redis_url for (namespace, name), entry
                           in self.queues.entries().items() if f"{namespace}/{name}" in users_})
            readings = [await self.usage.read(url, key_ids) for url in urls]
        generation = int(budget["metadata"].get("generation") or 0)
        return saturation(spec, readings, current, generation, now)

    def _servers(self) -> dict[str, str]:
        if self.queues is None:
            return {}
        return {f"{namespace}/{name}": redacted(entry.redis_url)
                for (namespace, name), entry in self.queues.entries().items()}

"""Writing an AgentBudget's status: the pools using it and its Ready condition, written only
when it changed.

Run by the operator's second work queue (keyed by budget), which the watches feed: a budget
created or changed, a pool referencing one created, changed or deleted. The users come from
the store's pool bodies (the pools that reference the budget and may use it), so the status
is known only once the first list of pools is in: until then the budget waits.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from agent_runtime.queue.backlog import redacted
from agentpool_operator.budgets import BudgetId, budget_status, parse_budget, users
from agentpool_operator.k8s import Kube
from agentpool_operator.queues import QueueRegistry
from agentpool_operator.status import status_changed
from agentpool_operator.store import PoolStore
from agentpool_operator.workqueue import Requeue

WAIT_FOR_POOLS_SECONDS = 1.0
QUEUES_PENDING_SECONDS = 10.0


@dataclass
class BudgetStatusWriter:
    kube: Kube
    store: PoolStore
    pools_listed: Callable[[], bool]
    """Whether the store holds every served pool (the resync's first list is in)."""
    queues: QueueRegistry | None = None
    """The pools' queues (Redis URLs), to tell a budget whose pools queue on two servers."""
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)

    async def __call__(self, budget_id: BudgetId) -> None:
        if not self.pools_listed():
            raise Requeue(WAIT_FOR_POOLS_SECONDS, "waiting for the first list of pools")
        budget = self.store.budgets.get(budget_id)
        if budget is None or budget["metadata"].get("deletionTimestamp"):
            return
        using = users(budget_id, parse_budget(budget), self.store.pool_bodies())
        current = budget.get("status") or {}
        servers = self._servers()
        desired = budget_status(budget, using, current, self.clock(), servers)
        if status_changed(current, desired):
            written = await self.kube.patch_budget_status(*budget_id, desired)
            if written is not None:
                self.store.budgets.put(budget_id, written, watched=False)
        if self.queues is not None and any(pool not in servers for pool in using):
            # A pool's queue is recorded by its reconcile, which may come after this: look
            # again (in memory; nothing is written unless the status changes).
            raise Requeue(QUEUES_PENDING_SECONDS, "waiting for the queues of its pools")

    def _servers(self) -> dict[str, str]:
        if self.queues is None:
            return {}
        return {f"{namespace}/{name}": redacted(entry.redis_url)
                for (namespace, name), entry in self.queues.entries().items()}

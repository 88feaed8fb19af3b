"""How a reconcile step ends other than by finishing: the two outcomes the reconcile turns
into status and into what the work queue does next.

`Blocked`: the pool cannot be acted on now (a missing Secret, a conflict, an invalid spec);
its problem goes into status, and the pool is looked at again after `retry_after` seconds, or
only when something changes when that is None. `Refused`: the API server refused a request
for good; reported, counted as an error, not retried until something changes.
"""

from __future__ import annotations

from agentpool_operator.status import Problem


class Blocked(Exception):
    def __init__(self, problem: Problem, retry_after: float | None = None) -> None:
        super().__init__(problem.message)
        self.problem = problem
        self.retry_after = retry_after


class Refused(Exception):
    """The reconcile ended in a failure that is reported and not retried (it would fail the
    same way): counted as an error, nothing for the work queue to do."""

"""What the builders know about one AgentPool: its identity, its parsed spec, and observed inputs.

Built by `reconcile.py` from the live object, the Secrets and the AgentBudgets it references
(`budgets.py` resolves those); consumed by the pure
builders in this package, which turn it into the desired child objects. Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, TypeVar, cast

from agent_runtime.contract import BudgetKeyConfig
from agentpool_operator.api import AgentPoolSpec
from agentpool_operator.builders.dsn import DatabaseDsn, parse_database_dsn


@dataclass(frozen=True)
class SecretValues:
    """Decoded values of the Secret keys the spec references (never logged or put in status)."""

    redis_url: str
    """queue.redis.urlSecretRef's value."""
    cache_redis_url: str | None = None
    """cache.redis.urlSecretRef's value, when a separate cache Redis is configured."""
    database_dsn: str | None = None
    """database.dsnSecretRef's value, when a database is configured."""


@dataclass(frozen=True)
class ResolvedBudgetKey:
    """One budget key the pool's handlers may use, as resolved from its AgentBudget."""

    config: BudgetKeyConfig
    """The key's limits, rendered into the runtime's config."""
    api_key: tuple[str, str] | None = None
    """(Secret, key) in the pool's namespace holding the key's API key, passed to the
    runtime by reference (`secretKeyRef`); None: no API key for this budget key."""


T = TypeVar("T")


@dataclass(frozen=True)
class PoolContext:
    """One AgentPool as the builders see it."""

    name: str
    namespace: str
    uid: str
    spec: AgentPoolSpec
    secrets: SecretValues
    pod_monitor_api: bool = False
    """Whether the cluster serves monitoring.coreos.com/v1 PodMonitor."""
    keda_api: bool = False
    """Whether the cluster serves keda.sh/v1alpha1 ScaledObject (KEDA is installed)."""
    budgets: tuple[ResolvedBudgetKey, ...] = ()
    """The keys of the AgentBudgets the pool references (resolved by the reconcile)."""
    _memo: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def once(self, name: str, compute: Callable[[], T]) -> T:
        """`compute()` the first time `name` is asked for on this context, then that value:
        inputs several builders share (the runtime config, the ConfigMap's data) are built
        once per reconcile, not once per builder."""
        if name not in self._memo:
            self._memo[name] = compute()
        return cast(T, self._memo[name])

    @cached_property
    def database_dsn(self) -> DatabaseDsn | None:
        """The parsed `database.dsnSecretRef` value (parsed once per reconcile, not per
        builder), or None without a database. Raises `InvalidDatabaseDsn`."""
        if self.spec.database is None:
            return None
        return parse_database_dsn(self.secrets.database_dsn)

    @property
    def uses_keda(self) -> bool:
        """Autoscaled by a KEDA ScaledObject rather than the HPA: asked for and possible."""
        autoscaling = self.spec.autoscaling
        return autoscaling.enabled and autoscaling.provider == "keda" and self.keda_api

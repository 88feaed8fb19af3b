"""Redis key names of one budget key (pure).

Every key carries the budget key's hash tag, so the Lua scripts' multi-key steps work on Redis
Cluster. Budget ids are `namespace/budget/key`: Kubernetes names, which never hold braces.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BudgetKeys:
    prefix: str

    @classmethod
    def for_id(cls, budget_id: str) -> BudgetKeys:
        if not budget_id or "{" in budget_id or "}" in budget_id:
            raise ValueError(f"budget id {budget_id!r} must be non-empty and hold no braces")
        return cls(prefix=f"agentpool:budget:{{{budget_id}}}")

    @property
    def requests(self) -> str:
        """Sorted set: every granted request (score: grant time, Redis clock, ms)."""
        return f"{self.prefix}:requests"

    @property
    def tokens(self) -> str:
        """Sorted set: the grants that reserved tokens (score: grant time, ms)."""
        return f"{self.prefix}:tokens"

    @property
    def token_counts(self) -> str:
        """Hash: tokens per grant in `tokens` (estimate, then the settled count), and `_total`."""
        return f"{self.prefix}:token-counts"

    @property
    def leases(self) -> str:
        """Sorted set: requests in flight (score: when the lease ends, ms); an expired lease is a
        permit whose worker died without giving it back."""
        return f"{self.prefix}:leases"

    @property
    def freed(self) -> str:
        """List: one element per released lease, for waiters blocked on concurrency (BLPOP)."""
        return f"{self.prefix}:freed"

    @property
    def cooldown(self) -> str:
        """Set for as long as the provider asked us to back off (429 with Retry-After)."""
        return f"{self.prefix}:cooldown"

    @property
    def recovering(self) -> str:
        """Set for one window after Redis lost grants it had made (a restart without them)."""
        return f"{self.prefix}:recovering"

    @property
    def all(self) -> tuple[str, ...]:
        return (self.requests, self.tokens, self.token_counts, self.leases, self.freed,
                self.cooldown, self.recovering)

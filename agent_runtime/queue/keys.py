"""Redis key names of one pool, derived from its config (pure).

Every key carries the pool's hash tag (`agentpool:{pool}:...`), so the multi-key transactions and
Lua scripts in `consumer.py` and `maintenance.py` work unchanged on Redis Cluster.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent_runtime.config import RuntimeConfig


@dataclass(frozen=True)
class Keys:
    prefix: str
    stream: str
    group: str
    dead: str

    @classmethod
    def for_config(cls, config: RuntimeConfig) -> Keys:
        return cls(prefix=config.key_prefix, stream=config.stream_key, group=config.group,
                   dead=config.dead_letter_key)

    @property
    def pods(self) -> str:
        """Sorted set of this pool's pods (supervisor boots): when each last renewed its leases
        (Redis time, ms). A pod that stopped renewing is gone: its empty consumers go too."""
        return f"{self.prefix}:pods"

    @property
    def delayed(self) -> str:
        """Sorted set of envelopes waiting for their retry time (score: due Unix time)."""
        return f"{self.prefix}:delayed"

    def result(self, task_id: str) -> str:
        return f"{self.prefix}:result:{task_id}"

    def cancel(self, task_id: str) -> str:
        return f"{self.prefix}:cancel:{task_id}"

    @property
    def cancel_requested(self) -> str:
        """Set, with the cancel keys' TTL, by every cancellation: while it does not exist no task
        can be cancelled, so workers skip the per-task check."""
        return f"{self.prefix}:cancel-requested"

    def last_error(self, task_id: str) -> str:
        """Why the last execution of a task died with its worker (hang, crash, OOM)."""
        return f"{self.prefix}:lasterr:{task_id}"

    def idempotency(self, key: str) -> str:
        return f"{self.prefix}:idem:{key}"

    def reply(self, client_id: str) -> str:
        return f"{self.prefix}:reply:{client_id}"

    def cache(self, cache_name: str, key: str) -> str:
        return f"{self.prefix}:cache:{cache_name}:{key}"

    @property
    def cache_invalidation_channel(self) -> str:
        return f"{self.prefix}:cache-invalidate"

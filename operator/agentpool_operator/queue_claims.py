"""Which pool holds which queue: two pools reading one stream through one consumer group
would take each other's tasks, so only the first may run.

A queue is identified within a namespace by the Secret key holding the Redis URL, the stream
and the consumer group (both immutable once set). Fed by the reconciler's pool watch; pure
bookkeeping, no I/O. Pools in different namespaces cannot be compared without reading their
Secrets' values, and share a stream only when a user names the same one explicitly; the
default stream key carries the namespace and the pool's name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent_runtime import contract

PoolKey = tuple[str, str]


@dataclass(frozen=True)
class QueueIdentity:
    namespace: str
    secret: str
    key: str
    stream: str
    group: str

    def describe(self) -> str:
        return (f"stream {self.stream!r} with consumer group {self.group!r} on the Redis of "
                f"Secret {self.secret} key {self.key}")


def queue_identity(key: PoolKey, pool: dict[str, Any]) -> QueueIdentity | None:
    """The queue a pool's (raw, API-server defaulted) spec reads; None if it names none."""
    queue = (pool.get("spec") or {}).get("queue") or {}
    ref = ((queue.get("redis") or {}).get("urlSecretRef")) or {}
    if not isinstance(ref.get("name"), str) or not isinstance(ref.get("key"), str):
        return None
    namespace, name = key
    stream = queue.get("stream") or contract.default_stream_key(name, namespace)
    group = queue.get("consumerGroup") or contract.DEFAULT_CONSUMER_GROUP
    return QueueIdentity(namespace, ref["name"], ref["key"], str(stream), str(group))


def _seniority(key: PoolKey, pool: dict[str, Any]) -> tuple[str, str]:
    # RFC 3339 UTC timestamps sort as strings; the name breaks ties within one second.
    return (str((pool.get("metadata") or {}).get("creationTimestamp") or "~"), key[1])


class QueueClaims:
    """The pools claiming each queue; the senior claimant (created first) holds it."""

    def __init__(self) -> None:
        self._claims: dict[PoolKey, tuple[QueueIdentity, tuple[str, str]]] = {}
        self._claimants: dict[QueueIdentity, set[PoolKey]] = {}

    def put(self, key: PoolKey, pool: dict[str, Any]) -> set[PoolKey]:
        """Note a pool's claim; the other pools whose standing may have changed."""
        identity = queue_identity(key, pool)
        previous = self._claims.get(key)
        if previous is not None and identity == previous[0]:
            return set()
        affected = self.drop(key)
        if identity is not None:
            self._claims[key] = (identity, _seniority(key, pool))
            claimants = self._claimants.setdefault(identity, set())
            affected |= claimants
            claimants.add(key)
        return affected

    def drop(self, key: PoolKey) -> set[PoolKey]:
        """Forget a pool's claim; the pools that shared its queue."""
        previous = self._claims.pop(key, None)
        if previous is None:
            return set()
        claimants = self._claimants.get(previous[0], set())
        claimants.discard(key)
        if not claimants:
            self._claimants.pop(previous[0], None)
        return set(claimants)

    def conflict(self, key: PoolKey) -> str | None:
        """Why `key` may not run (another pool holds its queue), or None."""
        claim = self._claims.get(key)
        if claim is None:
            return None
        identity, seniority = claim
        rivals = self._claimants.get(identity, set()) - {key}
        if not rivals:
            return None
        holder = min(rivals, key=lambda rival: self._claims[rival][1])
        if self._claims[holder][1] > seniority:
            return None
        return (f"AgentPool {holder[1]} already reads {identity.describe()}: two pools on one "
                "queue would take each other's tasks, so this pool is not started; give it "
                "its own queue (queue.stream and queue.consumerGroup are immutable: create the "
                "pool anew with another stream or group), or delete the other pool")

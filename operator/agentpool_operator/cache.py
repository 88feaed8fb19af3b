"""The latest known body of watched objects, fed by watch events and by our own writes' answers.

A pool's Deployment reports its rollout in a stream of status updates; reading the pool and the
Deployment from here instead of GETting them again for each update takes those round trips off
the API server, which is what limits convergence of many pools at once. The other children are
watched too, so a full reconcile (and the periodic resync) compares against their cached bodies
instead of GETting them.

A body that only our own write's answer delivered is kept but not `watched`: until the watch
confirms it (its echo), a reader that must not trust a possibly dead watch GETs instead. Secret
values are never kept: a Secret's `data` is replaced by digests of its values.

Bodies are kept as compact JSON, not as dicts, and decoded on read: a parsed Kubernetes object
takes about ten times the memory of its JSON, and with thousands of children that was most of
the operator's memory. Reads happen only in reconciles and in the handling of a watch event,
where decoding a body (tens of microseconds) is small next to the request it saves.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Hashable, Iterator
from typing import Any, Generic, NamedTuple, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def _version(obj: dict[str, Any]) -> int | None:
    text = str((obj.get("metadata") or {}).get("resourceVersion") or "")
    return int(text) if text.isdigit() else None


def is_older(obj: dict[str, Any], than: dict[str, Any]) -> bool:
    """Whether `obj` is an older version of the same object than `than`.

    resourceVersions are opaque by contract but etcd revisions in practice; when either is not
    a number the answer is "no", so the newest arrival wins.
    """
    mine, theirs = _version(obj), _version(than)
    return mine is not None and theirs is not None and mine < theirs


def digest_secret(obj: dict[str, Any]) -> dict[str, Any]:
    """A Secret with each `data` value replaced by its digest (other kinds unchanged).

    Both sides of a comparison go through this, so a cached Secret is compared with the
    desired one without its values ever being kept. Idempotent: base64 has no ':'."""
    if obj.get("kind") != "Secret" or not obj.get("data"):
        return obj
    data = {k: v if str(v).startswith("sha256:")
            else "sha256:" + hashlib.sha256(str(v).encode()).hexdigest()
            for k, v in obj["data"].items()}
    return {**obj, "data": data}


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def _lean(obj: dict[str, Any]) -> dict[str, Any]:
    # managedFields is often the largest part of a body and nothing here reads it, nor kubectl's
    # copy of what it last applied (an AgentPool applied with kubectl carries its whole spec
    # twice).
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    annotations = meta.get("annotations")
    if annotations and LAST_APPLIED in annotations:
        meta["annotations"] = {k: v for k, v in annotations.items() if k != LAST_APPLIED}
    return digest_secret({**obj, "metadata": meta})


def _encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(_lean(obj), separators=(",", ":"), ensure_ascii=False).encode()


def _decode(data: bytes) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(data)
    return body


_VOLATILE_META = frozenset({"resourceVersion", "managedFields", "generation"})


def same_content(obj: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether two versions of an object differ in nothing but status and bookkeeping.

    A PodDisruptionBudget's or HPA's controller updates its status all the time; only other
    changes (an edit of a field we set, say) need a reconcile."""
    def essence(body: dict[str, Any]) -> dict[str, Any]:
        meta = {k: v for k, v in (body.get("metadata") or {}).items()
                if k not in _VOLATILE_META}
        return {**{k: v for k, v in body.items() if k != "status"}, "metadata": meta}
    return essence(_lean(obj)) == essence(_lean(other))


class _Stored(NamedTuple):
    version: int | None
    uid: str
    body: bytes
    """The lean body (see `_lean`) as compact JSON."""


class LatestObjects(Generic[K]):
    """Newest body per key; an older version arriving late (a lagging watch) is ignored.

    Each read returns a fresh copy (decoded from the stored JSON), which callers may keep or
    modify."""

    def __init__(self) -> None:
        self._objects: dict[K, _Stored] = {}
        self._watched: set[K] = set()

    def __len__(self) -> int:
        return len(self._objects)

    def keys(self) -> set[K]:
        return set(self._objects)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._objects))  # a snapshot: callers may drop while iterating

    def get(self, key: K) -> dict[str, Any] | None:
        """The cached body (managedFields and kubectl's last-applied annotation dropped, Secret
        values digested)."""
        stored = self._objects.get(key)
        return None if stored is None else _decode(stored.body)

    def uid(self, key: K) -> str | None:
        """The cached object's metadata.uid, without decoding its body."""
        stored = self._objects.get(key)
        return None if stored is None else stored.uid

    def version(self, key: K) -> int | None:
        """The cached object's resourceVersion (None if absent or not a number)."""
        stored = self._objects.get(key)
        return None if stored is None else stored.version

    def watched(self, key: K) -> dict[str, Any] | None:
        """The cached body if a watch event (or a list) delivered this version of it."""
        return self.get(key) if key in self._watched else None

    def put(self, key: K, obj: dict[str, Any], *, watched: bool = True) -> bool:
        """Keep `obj` unless an newer version is cached; whether it was kept.

        `watched=False` for a body our own request returned: it stays unconfirmed until the
        watch delivers that (or a newer) version."""
        current = self._objects.get(key)
        version = _version(obj)
        if (current is not None and version is not None and current.version is not None
                and version < current.version):
            return False
        same = current is not None and current.version is not None and (
            current.version == version)
        self._objects[key] = _Stored(version, _uid(obj), _encode(obj))
        if watched:
            self._watched.add(key)
        elif not same:
            self._watched.discard(key)
        return True

    def drop(self, key: K, deleted: dict[str, Any] | None = None) -> None:
        """Forget a deleted object, unless a newer object of that name is already cached."""
        current = self._objects.get(key)
        if current is None:
            return
        if deleted is not None and current.uid != _uid(deleted):
            version = _version(deleted)
            if version is not None and current.version is not None and version < current.version:
                return  # re-created after the deletion this event reports
        del self._objects[key]
        self._watched.discard(key)


def _uid(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")


class RecentReads(Generic[K, V]):
    """One read's answer shared by every caller within `max_age` seconds, in flight included.

    Many pools created (or resynced) at once usually reference the same Secret: it is read once
    per moment, not once per pool. A change is still seen `max_age` seconds later at most.
    """

    def __init__(self, max_age: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_age = max_age
        self._clock = clock
        self._reads: dict[K, tuple[float, asyncio.Future[V]]] = {}

    async def get(self, key: K, read: Callable[[], Awaitable[V]]) -> V:
        now = self._clock()
        found = self._reads.get(key)
        if found is None or now - found[0] > self._max_age:
            if len(self._reads) > 1000:  # drop expired entries now and then
                self._reads = {k: v for k, v in self._reads.items()
                               if now - v[0] <= self._max_age}
            future: asyncio.Future[V] = asyncio.ensure_future(read())
            found = (now, future)
            self._reads[key] = found
        try:
            return await asyncio.shield(found[1])
        except Exception:
            if self._reads.get(key) is found:
                del self._reads[key]  # a failed read is not shared beyond those waiting on it
            raise

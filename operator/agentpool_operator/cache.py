"""The latest known body of watched objects, fed by watch events and by our own writes' answers.

A pool's Deployment reports its rollout in a stream of status updates; reading the pool and the
Deployment from here instead of GETting them again for each update takes those round trips off
the API server, which is what limits convergence of many pools at once.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)


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


def _lean(obj: dict[str, Any]) -> dict[str, Any]:
    # managedFields is often the largest part of a body and nothing here reads it.
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {**obj, "metadata": meta}


class LatestObjects(Generic[K]):
    """Newest body per key; an older version arriving late (a lagging watch) is ignored."""

    def __init__(self) -> None:
        self._objects: dict[K, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self._objects)

    def get(self, key: K) -> dict[str, Any] | None:
        """The cached body. Callers must not modify it."""
        return self._objects.get(key)

    def put(self, key: K, obj: dict[str, Any]) -> None:
        current = self._objects.get(key)
        if current is None or not is_older(obj, current):
            self._objects[key] = _lean(obj)

    def drop(self, key: K, deleted: dict[str, Any] | None = None) -> None:
        """Forget a deleted object, unless a newer object of that name is already cached."""
        current = self._objects.get(key)
        if current is None:
            return
        if deleted is not None and _uid(current) != _uid(deleted) and is_older(deleted, current):
            return  # re-created after the deletion this event reports
        del self._objects[key]


def _uid(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("uid") or "")

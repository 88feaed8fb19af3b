"""A fake of the two requests the child watches make (`k8s.Kube.list_managed` and
`watch_managed`): per kind, objects with resourceVersions and an event log that a watch
streams, with compaction (an old version answers 410), broken streams and gated lists."""

from __future__ import annotations

import asyncio
import copy
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from agentpool_operator.errors import ApiFailure, Expired, OperatorError
from agentpool_operator.k8s import Kube

POOL_UID = "pool-uid"


def owned(api_version: str, kind: str, name: str, namespace: str = "ns", pool: str = "p",
          **fields: Any) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "metadata": {
        "name": name, "namespace": namespace, "uid": f"{kind}-{name}",
        "ownerReferences": [{"apiVersion": "agentpool.dev/v1alpha1", "kind": "AgentPool",
                             "name": pool, "uid": POOL_UID, "controller": True}]}, **fields}


@dataclass
class FakeKind:
    objects: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    log: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    oldest: int = 0
    """Watches from an older version are refused (410): the log before it is compacted."""
    chunks: list[int] = field(default_factory=list)
    """The size of every list chunk served."""
    gate: asyncio.Event | None = None
    """When set, a list waits for it after its first chunk."""
    listing: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while a list waits for its gate."""
    caught_up: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a watch has delivered every logged event (and its handler has run)."""
    watch_ended: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a watch request of the kind ends (its caller runs on until its next wait)."""
    gone: bool = False
    """The kind is not served (its CRD deleted): requests answer 404."""
    _break: OperatorError | None = None
    _broken: bool = False
    _wake: asyncio.Event = field(default_factory=asyncio.Event)


class FakeChildApi:
    """The fake API server's kinds, by (api version, kind)."""

    def __init__(self) -> None:
        self.version = 0
        self.kinds: dict[tuple[str, str], FakeKind] = {}
        self.requests: list[tuple[str, str, str]] = []
        """(verb, kind, resourceVersion the watch started from or "" for a list)."""

    def as_kube(self) -> Kube:
        return cast(Kube, self)

    def kind(self, api_version: str, kind: str) -> FakeKind:
        return self.kinds.setdefault((api_version, kind), FakeKind())

    # -- what the test does to the cluster ---------------------------------------------------

    def write(self, body: dict[str, Any], event_type: str = "ADDED", *, logged: bool = True
              ) -> dict[str, Any]:
        """Create, change or (event type DELETED) delete an object; `logged=False`: no watch
        will ever tell (e.g. it happened while nothing watched, and the log was compacted)."""
        self.version += 1
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(self.version)
        meta = body["metadata"]
        kind = self.kind(body["apiVersion"], body["kind"])
        if event_type == "DELETED":
            kind.objects.pop((meta["namespace"], meta["name"]), None)
        else:
            kind.objects[(meta["namespace"], meta["name"])] = body
        if logged:
            kind.log.append((self.version, event_type, body))
            kind.caught_up.clear()
        else:
            kind.oldest = self.version
        self._wake(kind)
        return body

    def break_stream(self, api_version: str, kind: str, error: OperatorError | None = None
                     ) -> None:
        """End the current watch of a kind (with `error`, or as the server's timeout does)."""
        found = self.kind(api_version, kind)
        found._break, found._broken = error, True
        found.caught_up.clear()
        self._wake(found)

    @staticmethod
    def _wake(kind: FakeKind) -> None:
        kind._wake.set()
        kind._wake = asyncio.Event()

    # -- the requests --------------------------------------------------------------------------

    async def list_managed(self, api_version: str, kind: str, namespace: str | None,
                           each: Callable[[dict[str, Any]], None], *, chunk_size: int) -> str:
        self.requests.append(("list", kind, ""))
        found = self.kind(api_version, kind)
        if found.gone:
            raise ApiFailure(f"list {kind}: 404", code=404)
        version = str(self.version)
        items = [copy.deepcopy(body) for body in found.objects.values()]
        for start in range(0, len(items), chunk_size):
            chunk = items[start:start + chunk_size]
            found.chunks.append(len(chunk))
            for body in chunk:
                each(body)
            if found.gate is not None:
                found.listing.set()
                await found.gate.wait()
            await asyncio.sleep(0)  # the next chunk's round trip
        return version

    async def watch_managed(self, api_version: str, kind: str, namespace: str | None,
                            resource_version: str, *, timeout_seconds: int
                            ) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        self.requests.append(("watch", kind, resource_version))
        found = self.kind(api_version, kind)
        if found.gone:
            raise ApiFailure(f"watch {kind}: 404", code=404)
        position = int(resource_version)
        if position < found.oldest:
            raise Expired(f"watch {kind}: too old resource version")
        try:
            async for event in self._stream(found, position):
                yield event
        finally:
            found.watch_ended.set()

    @staticmethod
    async def _stream(found: FakeKind, position: int
                      ) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        while True:
            wake = found._wake
            if found._broken:
                error, found._break, found._broken = found._break, None, False
                if error is not None:
                    raise error
                return
            pending = [entry for entry in found.log if entry[0] > position]
            if pending:
                position, event_type, body = pending[0]
                yield event_type, copy.deepcopy(body)
                continue
            found.caught_up.set()
            await wake.wait()


@dataclass
class RecordingQueue:
    """Stands in for the work queue: the keys added, in order."""

    added: list[tuple[str, str]] = field(default_factory=list)

    def add(self, key: tuple[str, str]) -> None:
        self.added.append(key)


@dataclass
class Sleeps:
    """Stands in for asyncio.sleep: records the delays, waits for none of them."""

    delays: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0)

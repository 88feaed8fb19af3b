"""The operator's own watch of the pools' children: per kind, a list in chunks, then a watch.

Not kopf's: kopf lists every watched kind at once and queues each listed object for a
per-object worker without backpressure, so at a (re)start with thousands of children the
operator's memory peaked at however many bodies happened to be alive (114-218 MiB at 1,000
pools, bench/RESULTS.md run 7). Here each listed object goes to a synchronous handler before
the next chunk is fetched, and the kinds' first lists run one after another: at start-up no
more than one chunk of bodies is alive.

A watch resumes from the last version it delivered; when that version is too old (410 Gone)
the kind is listed again and the handler's `relisted` drops what the list lacked (deleted
while nothing watched). Errors reconnect with backoff. The requests are `k8s.Kube`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from agentpool_operator.errors import ApiFailure, Expired, OperatorError

log = logging.getLogger(__name__)

LIST_CHUNK_SIZE = 100
WATCH_SECONDS = 300
"""How long the API server keeps one watch request open."""
STREAM_GRACE_SECONDS = 60
"""A watch silent this long past its request's end is presumed dead (a lost connection
that nothing reported) and resumed anew."""
UNSERVED_POLL_SECONDS = 2.0
"""How often a kind whose CRD is not served looks again (an in-memory check, no request)."""
MAX_BACKOFF_SECONDS = 30.0


class Source(Protocol):
    """The two requests a watch makes (`k8s.Kube` has them)."""

    async def list_managed(self, api_version: str, kind: str, namespace: str | None,
                           each: Callable[[dict[str, Any]], None], *, chunk_size: int) -> str:
        ...

    def watch_managed(self, api_version: str, kind: str, namespace: str | None,
                      resource_version: str, *, timeout_seconds: int
                      ) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        ...


@dataclass(frozen=True)
class WatchedKind:
    """A kind to watch and what to do with what it delivers."""

    api_version: str
    kind: str
    handle: Callable[[str | None, dict[str, Any]], None]
    """Each listed (event type None) or watched body. Synchronous: that is the backpressure."""
    relisted: Callable[[set[tuple[str, str]], str], None]
    """At the end of each list: the (namespace, name) of every listed object, and the list's
    resourceVersion."""
    served: Callable[[], bool] = lambda: True
    """Whether the kind exists (a CRD-backed kind only while its CRD is served)."""


class KindWatcher:
    """Keeps one kind in one namespace (or all) current: list, watch, relist when expired."""

    def __init__(self, source: Source, watched: WatchedKind, namespace: str | None, *,
                 chunk_size: int = LIST_CHUNK_SIZE, watch_seconds: int = WATCH_SECONDS,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self._source = source
        self._watched = watched
        self._namespace = namespace
        self._chunk_size = chunk_size
        self._watch_seconds = watch_seconds
        self._sleep = sleep
        self._version: str | None = None
        """Where the watch resumes; None: list first."""
        self.first_list_done = asyncio.Event()
        """Set once the first list ended (or failed, or the kind is not served)."""

    @property
    def name(self) -> str:
        return f"{self._watched.kind} in {self._namespace or 'all namespaces'}"

    async def run(self, after: asyncio.Event | None = None) -> None:
        """Watch until cancelled, starting once `after` is set."""
        if after is not None:
            await after.wait()
        failures = 0
        while True:
            if not self._watched.served():
                self._version = None  # its objects went with the CRD: list anew when back
                self.first_list_done.set()
                await self._sleep(UNSERVED_POLL_SECONDS)
                continue
            try:
                if self._version is None:
                    try:
                        await self._list()
                    finally:
                        self.first_list_done.set()
                await self._watch()
                failures = 0
            except Expired:
                # The first expiry relists at once; a list that keeps expiring backs off.
                self._version = None
                failures += 1
                if failures > 1:
                    await self._sleep(_backoff(failures - 1))
            except OperatorError as error:
                failures += 1
                if isinstance(error, ApiFailure) and error.code == 404:
                    self._version = None  # the kind is gone (its CRD deleted): list anew
                log.warning("watch of %s failed, retrying: %s", self.name, error)
                await self._sleep(_backoff(failures))
            except Exception:
                # A bug in a handler must not end the watch for good (kopf's watches did not
                # either); the next list or event is handled as usual.
                failures += 1
                log.exception("watch of %s failed, retrying", self.name)
                await self._sleep(_backoff(failures))

    async def _list(self) -> None:
        seen: set[tuple[str, str]] = set()

        def each(body: dict[str, Any]) -> None:
            meta = body.get("metadata") or {}
            seen.add((str(meta.get("namespace") or ""), str(meta.get("name") or "")))
            self._watched.handle(None, body)

        watched = self._watched
        version = await self._source.list_managed(
            watched.api_version, watched.kind, self._namespace, each,
            chunk_size=self._chunk_size)
        watched.relisted(seen, version)
        self._version = version

    async def _watch(self) -> None:
        """One watch, until its request ends (or goes silent past its end)."""
        assert self._version is not None
        watched = self._watched
        events = self._source.watch_managed(
            watched.api_version, watched.kind, self._namespace, self._version,
            timeout_seconds=self._watch_seconds)
        with contextlib.suppress(TimeoutError):
            async with contextlib.aclosing(events), \
                    asyncio.timeout(self._watch_seconds + STREAM_GRACE_SECONDS):
                async for event_type, body in events:
                    # Noted first: an event a handler fails on is not delivered again and again.
                    version = (body.get("metadata") or {}).get("resourceVersion")
                    if version:
                        self._version = str(version)
                    watched.handle(event_type, body)


def _backoff(failures: int) -> float:
    return float(min(2 ** (failures - 1), MAX_BACKOFF_SECONDS))


def start_in_turn(watchers: Sequence[KindWatcher]) -> list[asyncio.Task[None]]:
    """Start every watcher's task; each lists only once the one before it has listed, so the
    start-up lists never overlap (one chunk of bodies alive at a time). All the tasks exist
    from the start: kopf, once stopped, waits 5 s for any task created after it started."""
    tasks = []
    previous: asyncio.Event | None = None
    for watcher in watchers:
        tasks.append(asyncio.create_task(watcher.run(after=previous),
                                         name=f"watch {watcher.name}"))
        previous = watcher.first_list_done
    return tasks

"""Publishes the queue directory (`queuedir.py`) for the metrics API server.

Run by `__main__.py` when `--queue-directory NAMESPACE/NAME` is given (the chart names the
Secret it creates next to the metrics API). On each change of the registry (at most once per
`min_interval`, so a start with many pools writes a few times, not once per pool) and every
`verify_seconds` it reads the Secret and applies the entries when they differ from what it
holds: a steady state writes nothing, and an emptied or deleted-and-recreated Secret is
repaired within one period. On the first read it adopts the entries already published, so an
operator restart neither drops pools from the metrics API nor rewrites the Secret; the
resync's list of pools then prunes those that are gone.

RBAC: get and patch on that one Secret (`resourceNames`); patch creates it where create is
granted too (a development cluster without the chart). The Secret's values are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from agentpool_operator import queuedir
from agentpool_operator.errors import OperatorError
from agentpool_operator.k8s import Kube
from agentpool_operator.queuedir import PoolKey
from agentpool_operator.queues import QueueRegistry

log = logging.getLogger(__name__)

Listing = tuple[float, frozenset[PoolKey]]
"""When a list of the served pools was taken (monotonic seconds), and the pools it showed."""


class DirectoryPublisher:
    def __init__(self, kube: Kube, registry: QueueRegistry, namespace: str, name: str,
                 listing: Callable[[], Listing | None], verify_seconds: float = 60.0,
                 min_interval: float = 1.0, key: str = queuedir.DATA_KEY) -> None:
        self._kube = kube
        self._key = key
        # Publishing into another release's directory: only our key, under a field manager
        # of our own, so server-side apply leaves the other publishers' keys alone.
        self._field_manager = None if key == queuedir.DATA_KEY else \
            f"agentpool-operator-{key}"[:128]
        self._registry = registry
        self._namespace = namespace
        self._name = name
        self._listing = listing
        self._verify_seconds = verify_seconds
        self._min_interval = min_interval
        self._seeded = False
        self._failing: str | None = None
        self.writes = 0

    @property
    def reference(self) -> str:
        return f"{self._namespace}/{self._name}"

    async def run(self) -> None:
        while True:
            self._registry.changed.clear()
            try:
                await self.sync()
            except OperatorError as error:
                self._report(str(error))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._registry.changed.wait(), self._verify_seconds)
            await asyncio.sleep(self._min_interval)

    async def sync(self) -> None:
        """Read the Secret; write the registry's entries if they differ."""
        live = await self._kube.get("v1", "Secret", self._namespace, self._name)
        try:
            published = queuedir.decode((live or {}).get("data"), self._key).entries
        except queuedir.DirectoryError as error:
            log.warning("queue directory %s is unreadable, rewriting it: %s",
                        self.reference, error)
            published = {}
        if not self._seeded:
            self._registry.seed(published.values())
            self._seeded = True
        listing = self._listing()
        if listing is not None:
            self._registry.prune(listing[1], listing[0])
        wanted = self._registry.entries()
        if live is not None and wanted == published:
            self._recovered()
            return
        await self._kube.apply({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": self._name, "namespace": self._namespace},
            "data": queuedir.encode(wanted.values(), self._key),
        }, field_manager=self._field_manager)
        self.writes += 1
        self._recovered()
        log.info("queue directory %s: %d pools published", self.reference, len(wanted))

    def _report(self, error: str) -> None:
        # Once per distinct failure, not once per period.
        if error != self._failing:
            log.warning("cannot publish the queue directory %s for the metrics API (the "
                        "chart creates this Secret; `helm upgrade` restores it): %s",
                        self.reference, error)
        self._failing = error

    def _recovered(self) -> None:
        if self._failing is not None:
            log.info("queue directory %s published again", self.reference)
        self._failing = None

"""The children's watches (childwatch + their wiring to the store): listed a chunk at a time,
one kind after another, then watched; a broken watch resumes where it was, an expired one
lists again and drops what vanished meanwhile, and a CRD-backed kind is watched only while its
CRD is served.

Against a fake of the two requests (list in chunks, watch from a version); the store is real.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import cast

from agentpool_operator.builders.kinds import CHILD_CRDS, KEDA_CRD
from agentpool_operator.childwatch import KindWatcher, start_in_turn
from agentpool_operator.errors import TransientError
from agentpool_operator.store import PoolKey, PoolStore
from agentpool_operator.watches import child_watchers
from agentpool_operator.workqueue import WorkQueue
from tests.unit.operator.childwatch_fakes import (
    POOL_UID,
    FakeChildApi,
    RecordingQueue,
    Sleeps,
    owned,
)

POOL = ("ns", "p")
WAIT_SECONDS = 10.0
"""An upper bound on a step that takes milliseconds, so a regression fails instead of hanging."""


@dataclass
class Operator:
    api: FakeChildApi
    store: PoolStore
    queue: RecordingQueue
    sleeps: Sleeps
    watchers: list[KindWatcher]

    async def caught_up(self, api_version: str, kind: str) -> None:
        await asyncio.wait_for(self.api.kind(api_version, kind).caught_up.wait(), WAIT_SECONDS)

    def lists(self) -> list[str]:
        return [kind for verb, kind, _ in self.api.requests if verb == "list"]

    def requests_of(self, kind: str) -> list[tuple[str, str]]:
        return [(verb, version) for verb, of, version in self.api.requests if of == kind]


def operator() -> Operator:
    api = FakeChildApi()
    store = PoolStore()
    store.pools.put(POOL, {"metadata": {"name": "p", "namespace": "ns", "uid": POOL_UID,
                                        "resourceVersion": "1"}})
    queue = RecordingQueue()
    sleeps = Sleeps()
    watchers = child_watchers(api.as_kube(), cast(WorkQueue[PoolKey], queue), store, (),
                              sleep=sleeps)
    return Operator(api, store, queue, sleeps, watchers)


@asynccontextmanager
async def watching(op: Operator) -> AsyncIterator[None]:
    tasks = start_in_turn(op.watchers)
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_children_are_listed_a_chunk_at_a_time_then_changes_reach_the_queue_at_once(
        ) -> None:
    op = operator()
    for i in range(250):
        op.api.write(owned("v1", "ConfigMap", f"c{i}", data={"a": "1"}))
    async with watching(op):
        await op.caught_up("v1", "ConfigMap")
        assert op.api.kind("v1", "ConfigMap").chunks == [100, 100, 50]
        assert len([k for k in op.store.children if k[1] == "ConfigMap"]) == 250
        assert op.queue.added == []  # listed and new: the resync checks them

        edited = op.api.kind("v1", "ConfigMap").objects[("ns", "c0")]
        op.api.write({**edited, "data": {"a": "edited"}}, "MODIFIED")
        await op.caught_up("v1", "ConfigMap")
        assert op.queue.added == [POOL]
        assert op.store.take_full(POOL)

        current = op.api.kind("v1", "ConfigMap").objects[("ns", "c0")]
        op.api.write({**current, "status": {"x": 1}}, "MODIFIED")
        await op.caught_up("v1", "ConfigMap")
        op.api.write(op.api.kind("v1", "ConfigMap").objects[("ns", "c1")], "DELETED")
        await op.caught_up("v1", "ConfigMap")
    assert op.queue.added == [POOL, POOL]  # the edit and the deletion, not the status update
    assert op.store.children.get(("v1", "ConfigMap", "ns", "c1")) is None


async def test_kinds_are_listed_one_after_another_and_crd_kinds_only_while_served() -> None:
    op = operator()
    for i in range(150):
        op.api.write(owned("apps/v1", "Deployment", f"d{i}"))
    gate = op.api.kind("apps/v1", "Deployment").gate = asyncio.Event()
    async with watching(op):
        await asyncio.wait_for(op.api.kind("apps/v1", "Deployment").listing.wait(),
                               WAIT_SECONDS)
        assert op.lists() == ["Deployment"]  # its first chunk is out; nothing else listed
        gate.set()
        await op.caught_up("autoscaling/v2", "HorizontalPodAutoscaler")
        assert op.lists() == ["Deployment", "ConfigMap", "Secret", "Service",
                              "PodDisruptionBudget", "HorizontalPodAutoscaler"]

        op.store.served_crds = frozenset({KEDA_CRD})
        await op.caught_up("keda.sh/v1alpha1", "ScaledObject")
        await op.caught_up("keda.sh/v1alpha1", "TriggerAuthentication")
    assert "PodMonitor" not in op.lists()


async def test_an_expired_watch_lists_again_and_drops_what_vanished_meanwhile() -> None:
    op = operator()
    op.store.served_crds = frozenset(CHILD_CRDS)  # no kind polls for its CRD
    service = op.api.write(owned("v1", "Service", "p"))
    async with watching(op):
        await op.caught_up("v1", "Service")
        assert op.store.children.get(("v1", "Service", "ns", "p")) is not None
        # Deleted while the watch was away, and the log compacted: no event will tell.
        op.api.write(service, "DELETED", logged=False)
        op.api.break_stream("v1", "Service")
        await op.caught_up("v1", "Service")
    assert op.store.children.get(("v1", "Service", "ns", "p")) is None
    assert op.queue.added == [POOL]
    assert op.store.take_full(POOL)
    [first_list, first_watch, resumed, relist, rewatch] = op.requests_of("Service")
    assert (first_list[0], first_watch[0], resumed, relist[0], rewatch[0]) == (
        "list", "watch", first_watch, "list", "watch")
    assert int(rewatch[1]) > int(first_watch[1])
    assert op.sleeps.delays == []  # one expiry relists at once


async def test_a_broken_watch_resumes_where_it_was_after_a_backoff_and_loses_nothing() -> None:
    op = operator()
    op.store.served_crds = frozenset(CHILD_CRDS)  # no kind polls for its CRD
    op.api.write(owned("v1", "Service", "p"))
    async with watching(op):
        await op.caught_up("v1", "Service")
        op.api.break_stream("v1", "Service", TransientError("connection reset"))
        op.api.write(owned("v1", "Service", "p", spec={"ports": []}), "MODIFIED")
        await op.caught_up("v1", "Service")
    [listed, first, resumed] = op.requests_of("Service")
    assert listed[0] == "list"
    assert resumed == first  # from the same version, not a new list
    assert op.sleeps.delays == [1.0]
    assert op.queue.added == [POOL]  # the edit made while it was broken


async def test_a_kind_whose_crd_goes_and_comes_back_is_listed_anew() -> None:
    op = operator()
    op.store.served_crds = frozenset({KEDA_CRD})
    scaled = op.api.kind("keda.sh/v1alpha1", "ScaledObject")
    op.api.write(owned("keda.sh/v1alpha1", "ScaledObject", "p"))
    async with watching(op):
        await op.caught_up("keda.sh/v1alpha1", "ScaledObject")
        scaled.gone = True
        op.store.served_crds = frozenset()
        op.api.break_stream("keda.sh/v1alpha1", "ScaledObject")
        await asyncio.wait_for(scaled.watch_ended.wait(), WAIT_SECONDS)

        scaled.gone = False
        op.store.served_crds = frozenset({KEDA_CRD})
        await op.caught_up("keda.sh/v1alpha1", "ScaledObject")
    assert [verb for verb, _ in op.requests_of("ScaledObject")] == [
        "list", "watch", "list", "watch"]

"""The queue directory the operator publishes for the metrics API server: its format, the
registry the reconciler fills, and the publisher (quiet, restart-safe, self-repairing)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import json
import logging
from typing import Any

import pytest

from agentpool_operator import queuedir
from agentpool_operator.api import AgentPoolSpec
from agentpool_operator.publisher import DirectoryPublisher, Listing
from agentpool_operator.queues import QueueRegistry
from tests.unit.operator.kube_fakes import FakeOperatorKube
from tests.unit.operator.metrics_api_fakes import SPEC, queue_entry

URL = "redis://:queue-secret-pw@redis:6379/0"
REF = ("agentpool-system", "queues")


def test_entries_round_trip_and_a_bad_entry_is_skipped_not_the_directory() -> None:
    entries = [queue_entry("agents", "research", URL), queue_entry("team", "echo", URL + "1"),
               queue_entry("team", "scaled", URL, workers={"perPod": 3},
                           queue={"redis": {"urlSecretRef": {"name": "q", "key": "url"}},
                                  "leaseSeconds": 90},
                           autoscaling={"enabled": True, "targetBacklogPerWorker": 4})]
    # What the metrics API needs to hold a budget-bound pool: its HPA target and lease.
    assert (entries[2].target_per_pod, entries[2].lease_seconds) == (12, 90)
    assert entries[0].target_per_pod is None
    data = queuedir.encode(entries)
    assert queuedir.decode(data) == queuedir.Directory({e.key: e for e in entries})
    assert queuedir.encode(reversed(entries)) == data  # deterministic bytes

    document = json.loads(gzip.decompress(base64.b64decode(data[queuedir.DATA_KEY])))
    document["pools"] += [{"namespace": "x"}, "junk", {**document["pools"][0], "url": 3}]
    blob = gzip.compress(json.dumps(document).encode())
    tampered = {queuedir.DATA_KEY: base64.b64encode(blob).decode()}
    assert queuedir.decode(tampered) == queuedir.Directory({e.key: e for e in entries}, 3)


@pytest.mark.parametrize("data", [
    {queuedir.DATA_KEY: "bm90IGd6aXA="},
    {queuedir.DATA_KEY: base64.b64encode(gzip.compress(b'{"version": 9}')).decode()}])
def test_an_unreadable_directory_is_an_error(data: dict[str, str]) -> None:
    with pytest.raises(queuedir.DirectoryError):
        queuedir.decode(data)


def test_nothing_in_a_repr_shows_the_url() -> None:
    assert "queue-secret-pw" not in repr(queue_entry("agents", "research", URL))


def test_the_registry_records_what_it_can_and_forgets_what_is_gone() -> None:
    now = [100.0]
    registry = QueueRegistry(clock=lambda: now[0])
    spec = AgentPoolSpec.model_validate(SPEC)
    registry.record(("agents", "research"), spec, URL)
    # A name the runtime refuses (dots): no queue to publish, and nothing raised.
    registry.record(("agents", "bad.name"), spec, URL)
    assert set(registry.entries()) == {("agents", "research")}
    assert registry.changed.is_set()

    registry.changed.clear()
    registry.record(("agents", "research"), spec, URL)
    assert not registry.changed.is_set()  # the same queue again is no change

    registry.seed([queue_entry("agents", "old", URL), queue_entry("agents", "research", "x")])
    assert registry.entries()[("agents", "research")].redis_url == URL  # recorded wins
    now[0] = 200.0
    registry.record(("agents", "new"), spec, URL)  # created after the list below was taken
    registry.prune([("agents", "research")], listed_at=150.0)
    assert set(registry.entries()) == {("agents", "research"), ("agents", "new")}
    registry.forget(("agents", "research"))
    assert set(registry.entries()) == {("agents", "new")}


def published(kube: FakeOperatorKube) -> dict[tuple[str, str], Any]:
    return queuedir.decode(kube.secrets[REF]["data"]).entries


def publisher(kube: FakeOperatorKube, registry: QueueRegistry,
              listing: Listing | None = None) -> DirectoryPublisher:
    return DirectoryPublisher(kube.as_kube(), registry, *REF, listing=lambda: listing)


async def test_the_publisher_writes_only_changes_and_repairs_an_emptied_secret() -> None:
    kube = FakeOperatorKube(secrets={REF: {"kind": "Secret", "metadata": {}}})
    registry = QueueRegistry()
    registry.record(("agents", "research"), AgentPoolSpec.model_validate(SPEC), URL)
    pub = publisher(kube, registry)
    await pub.sync()
    assert set(published(kube)) == {("agents", "research")}
    await pub.sync()
    await pub.sync()
    assert len(kube.applied) == 1  # steady state: reads only

    kube.secrets[REF]["data"] = {}  # e.g. `helm upgrade --force` re-made it
    await pub.sync()
    assert set(published(kube)) == {("agents", "research")}
    assert len(kube.applied) == 2


async def test_a_restarted_operator_keeps_the_published_pools_and_writes_nothing() -> None:
    entries = [queue_entry("agents", "research", URL), queue_entry("agents", "gone", URL)]
    kube = FakeOperatorKube(secrets={REF: {"kind": "Secret", "metadata": {},
                                           "data": queuedir.encode(entries)}})
    registry = QueueRegistry()
    pub = publisher(kube, registry)
    await pub.sync()  # nothing reconciled yet: the metrics API keeps both pools
    assert kube.applied == []
    registry.record(("agents", "research"), AgentPoolSpec.model_validate(SPEC), URL)
    await pub.sync()
    assert kube.applied == []

    # The resync's list shows "gone" is gone: it leaves the directory.
    pub = DirectoryPublisher(kube.as_kube(), registry, *REF,
                             listing=lambda: (float("inf"), frozenset({("agents", "research")})))
    await pub.sync()
    assert set(published(kube)) == {("agents", "research")}


async def test_a_refused_write_is_logged_once_without_values_and_retried(
        caplog: pytest.LogCaptureFixture) -> None:
    kube = FakeOperatorKube(refuse_writes='secrets "queues" is forbidden')
    registry = QueueRegistry()
    registry.record(("agents", "research"), AgentPoolSpec.model_validate(SPEC), URL)
    pub = DirectoryPublisher(kube.as_kube(), registry, *REF, listing=lambda: None,
                             verify_seconds=0.01, min_interval=0.01)
    task = asyncio.create_task(pub.run())
    with caplog.at_level(logging.WARNING):
        await asyncio.sleep(0.2)
        assert kube.gets > 3  # it kept trying
        kube.refuse_writes = None
        await asyncio.sleep(0.1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert caplog.text.count("cannot publish the queue directory") == 1
    assert "queue-secret-pw" not in caplog.text
    assert set(published(kube)) == {("agents", "research")}


async def test_two_releases_publish_into_one_directory_without_touching_each_other() -> None:
    """One metrics API per cluster: a second release's operator publishes its pools into the
    first release's directory under its own key and field manager (metricsApi.shared)."""
    kube = FakeOperatorKube(secrets={REF: {"kind": "Secret", "metadata": {}}})
    spec = AgentPoolSpec.model_validate(SPEC)
    first, second = QueueRegistry(), QueueRegistry()
    first.record(("platform", "alpha"), spec, URL)
    second.record(("team-b", "beta"), spec, URL)
    hub = publisher(kube, first)
    key = queuedir.shared_key("team-b", "b-agentpool-operator")
    guest = DirectoryPublisher(kube.as_kube(), second, *REF, listing=lambda: None, key=key)
    await hub.sync()
    await guest.sync()
    await hub.sync()  # nothing of the guest's is the hub's to prune or rewrite
    data = kube.secrets[REF]["data"]
    assert set(data) == {queuedir.DATA_KEY, key}
    assert set(queuedir.decode(data).entries) == {("platform", "alpha")}
    assert set(queuedir.decode(data, key).entries) == {("team-b", "beta")}
    # The metrics API serves both.
    assert set(queuedir.decode_all(data).entries) == {("platform", "alpha"), ("team-b", "beta")}
    assert len(kube.applied) == 2
    # The guest's pool goes: its key empties, the hub's stays.
    guest = DirectoryPublisher(kube.as_kube(), second, *REF, key=key,
                               listing=lambda: (float("inf"), frozenset()))
    await guest.sync()
    assert set(queuedir.decode_all(kube.secrets[REF]["data"]).entries) == {("platform", "alpha")}


def test_an_unreadable_key_does_not_hide_the_others() -> None:
    good = queuedir.encode([queue_entry("agents", "research", URL)])
    data = {**good, queuedir.shared_key("b", "x"): "bm90IGd6aXA=", "unrelated": "eA=="}
    directory = queuedir.decode_all(data)
    assert set(directory.entries) == {("agents", "research")}
    assert directory.skipped == 1
    with pytest.raises(queuedir.DirectoryError):
        queuedir.decode_all({queuedir.DATA_KEY: "bm90IGd6aXA="})

"""The latest-object cache keeps the newest version and survives a lagging watch."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from typing import Any

import pytest

from agentpool_operator.cache import LAST_APPLIED, LatestObjects, RecentReads, is_older


def obj(version: str, uid: str = "u1", **extra: Any) -> dict[str, Any]:
    return {"metadata": {"resourceVersion": version, "uid": uid,
                         "managedFields": [{"manager": "x"}]}, **extra}


def test_newer_versions_replace_older_ones_and_late_old_ones_are_ignored() -> None:
    cache: LatestObjects[str] = LatestObjects()
    cache.put("a", obj("5", status=1))
    cache.put("a", obj("7", status=2))
    cache.put("a", obj("6", status=3))  # a watch event arriving after our write's answer
    assert (cache.get("a") or {})["status"] == 2


def test_managed_fields_are_not_kept_and_the_input_is_not_modified() -> None:
    cache: LatestObjects[str] = LatestObjects()
    given = obj("1")
    cache.put("a", given)
    assert "managedFields" not in (cache.get("a") or {})["metadata"]
    assert "managedFields" in given["metadata"]


def test_opaque_versions_fall_back_to_newest_arrival() -> None:
    assert not is_older(obj("abc"), obj("5"))
    cache: LatestObjects[str] = LatestObjects()
    cache.put("a", obj("9", status=1))
    cache.put("a", obj("x", status=2))
    assert (cache.get("a") or {})["status"] == 2


def test_a_deletion_drops_the_object_but_not_a_newer_re_created_one() -> None:
    cache: LatestObjects[str] = LatestObjects()
    cache.put("a", obj("5"))
    cache.drop("a", obj("6"))
    assert cache.get("a") is None
    cache.put("a", obj("9", uid="u2"))  # re-created, its answer seen before the old deletion
    cache.drop("a", obj("6", uid="u1"))
    assert cache.get("a") is not None
    cache.drop("a")
    assert len(cache) == 0


def test_recent_reads_share_one_request_until_they_expire_and_failures_are_not_kept() -> None:
    now = [0.0]
    reads: RecentReads[str, int] = RecentReads(2.0, clock=lambda: now[0])
    calls: list[str] = []

    async def read() -> int:
        calls.append("read")
        await asyncio.sleep(0)
        return len(calls)

    async def failing() -> int:
        raise RuntimeError("unavailable")

    async def scenario() -> None:
        assert list(await asyncio.gather(reads.get("s", read), reads.get("s", read))) == [1, 1]
        now[0] = 1.5
        assert await reads.get("s", read) == 1
        now[0] = 4.0
        assert await reads.get("s", read) == 2
        with pytest.raises(RuntimeError):
            await reads.get("t", failing)
        assert await reads.get("t", read) == 3

    asyncio.run(scenario())


def test_keys_lists_what_is_cached() -> None:
    cache: LatestObjects[str] = LatestObjects()
    cache.put("a", obj("1"))
    cache.put("b", obj("2"))
    assert cache.keys() == {"a", "b"}


def test_bodies_round_trip_through_their_compact_form_and_each_read_is_a_fresh_copy() -> None:
    cache: LatestObjects[str] = LatestObjects()
    given = obj("3", spec={"replicas": 2, "name": "é", "flags": [True, None, 1.5]},
                status={"readyReplicas": 1})
    given["metadata"]["annotations"] = {LAST_APPLIED: '{"spec": {}}', "agentpool.dev/x": "y"}
    cache.put("a", given)
    read = cache.get("a")
    assert read == {"metadata": {"resourceVersion": "3", "uid": "u1",
                                 "annotations": {"agentpool.dev/x": "y"}},
                    "spec": {"replicas": 2, "name": "é", "flags": [True, None, 1.5]},
                    "status": {"readyReplicas": 1}}
    assert LAST_APPLIED in given["metadata"]["annotations"]  # the input is left as it was
    assert read is not None
    read["spec"]["replicas"] = 9
    assert (cache.get("a") or {})["spec"]["replicas"] == 2
    assert cache.uid("a") == "u1"
    assert cache.uid("b") is None
    # Kept as bytes (compact JSON), not as the dicts a parsed body is made of.
    assert all(isinstance(stored.body, bytes) for stored in cache._objects.values())


def test_watched_marks_survive_the_compact_form() -> None:
    cache: LatestObjects[str] = LatestObjects()
    cache.put("a", obj("4"), watched=False)  # our own write's answer
    assert cache.watched("a") is None
    assert cache.get("a") is not None
    cache.put("a", obj("4"))  # the watch's echo of that version
    assert cache.watched("a") is not None
    cache.put("a", obj("4"), watched=False)  # the same version again: still confirmed
    assert cache.watched("a") is not None
    cache.put("a", obj("5"), watched=False)  # a newer answer: unconfirmed until echoed
    assert cache.watched("a") is None
    assert not cache.put("a", obj("3"))  # older than what is cached: ignored
    assert (cache.get("a") or {})["metadata"]["resourceVersion"] == "5"


def test_secret_values_are_never_stored_in_clear() -> None:
    cache: LatestObjects[str] = LatestObjects()
    clear = "hunter2-password"
    encoded = base64.b64encode(clear.encode()).decode()
    cache.put("s", {"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"resourceVersion": "1", "uid": "u1"},
                    "data": {"dsn": encoded}})
    stored = b"".join(stored.body for stored in cache._objects.values())
    assert encoded.encode() not in stored
    assert clear.encode() not in stored
    digest = "sha256:" + hashlib.sha256(encoded.encode()).hexdigest()
    assert (cache.get("s") or {})["data"] == {"dsn": digest}

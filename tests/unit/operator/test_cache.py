"""The latest-object cache keeps the newest version and survives a lagging watch."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agentpool_operator.cache import LatestObjects, RecentReads, is_older


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

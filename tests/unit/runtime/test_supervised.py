"""Supervised background loops (pure asyncio): a crash is logged with its traceback and the
loop restarts with backoff; health says when it is failing and when it cannot recover."""

from __future__ import annotations

import asyncio
import logging

import pytest

from agent_runtime.aio.supervised import Beat, Supervised, all_ok


async def test_a_crashing_loop_is_logged_restarted_with_backoff_and_recovers(
        caplog: pytest.LogCaptureFixture) -> None:
    runs: list[float] = []
    recovered = asyncio.Event()
    states: list[tuple[bool, bool]] = []

    async def loop(beat: Beat) -> None:
        runs.append(asyncio.get_running_loop().time())
        if len(runs) <= 2:
            raise KeyError("poison")
        beat()
        recovered.set()
        await asyncio.Event().wait()  # runs on, healthy

    chore = Supervised("upkeep", loop, first_backoff=0.05)

    async def watch() -> None:
        while not recovered.is_set():
            states.append((chore.ready()[0], chore.alive()[0]))
            await asyncio.sleep(0.01)

    task = asyncio.create_task(chore.run())
    with caplog.at_level(logging.ERROR):
        await asyncio.wait_for(asyncio.gather(recovered.wait(), watch()), 5)
    task.cancel()

    assert len(runs) == 3
    # Backoff doubles: about 0.05 s, then 0.1 s.
    assert runs[1] - runs[0] >= 0.05
    assert runs[2] - runs[1] >= 0.1
    assert (False, True) in states  # failing: not ready, but alive while it may recover
    assert chore.ready() == (True, "upkeep ok")
    assert chore.restarts == 2
    crashes = [r for r in caplog.records if "upkeep crashed" in r.getMessage()]
    assert len(crashes) == 2
    assert all(r.exc_info is not None for r in crashes)  # with the traceback


async def test_a_loop_that_keeps_crashing_turns_liveness_false() -> None:
    third = asyncio.Event()
    runs = 0

    async def loop(beat: Beat) -> None:
        nonlocal runs
        runs += 1
        if runs == 4:
            third.set()  # three crashes are behind it
            await asyncio.Event().wait()
        raise RuntimeError("always")

    chore = Supervised("renewal", loop, give_up_after=3, first_backoff=0.001)
    task = asyncio.create_task(chore.run())
    await asyncio.wait_for(third.wait(), 5)
    task.cancel()

    assert chore.alive() == (False, "renewal cannot recover: 3 crashes in a row, last "
                                    "RuntimeError: always")
    assert all_ok([(True, "a"), chore.ready(), chore.alive()])[0] is False


async def test_a_loop_that_stops_making_progress_turns_liveness_false() -> None:
    async def loop(beat: Beat) -> None:
        beat()
        await asyncio.Event().wait()  # stuck, without crashing

    chore = Supervised("upkeep", loop, stall_seconds=0.05)
    task = asyncio.create_task(chore.run())
    await asyncio.sleep(0)
    assert chore.alive()[0]
    await asyncio.sleep(0.1)
    task.cancel()
    assert chore.alive()[0] is False
    assert "stalled" in chore.alive()[1]


async def test_a_loop_that_returns_is_done_and_healthy() -> None:
    async def loop(beat: Beat) -> None:
        return None

    chore = Supervised("db", loop)
    await asyncio.wait_for(chore.run(), 1)
    assert chore.ready()[0]
    assert chore.alive()[0]

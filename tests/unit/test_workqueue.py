"""The operator's work queue: de-duplication, no concurrent runs of one key, retries."""

from __future__ import annotations

import asyncio

from agentpool_operator.workqueue import Backoff, Requeue, WorkQueue


async def test_a_burst_of_adds_for_one_key_runs_it_once() -> None:
    runs: list[str] = []
    gate = asyncio.Event()

    async def handler(key: str) -> None:
        await gate.wait()
        runs.append(key)

    queue: WorkQueue[str] = WorkQueue(handler, workers=2)
    for _ in range(10):
        queue.add("a")
    queue.start()
    gate.set()
    await asyncio.sleep(0.05)
    await queue.stop()
    assert runs == ["a"]


async def test_a_key_added_while_running_runs_again_after_not_during() -> None:
    active = 0
    peak = 0
    runs = 0
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(key: str) -> None:
        nonlocal active, peak, runs
        active += 1
        peak = max(peak, active)
        runs += 1
        started.set()
        await release.wait()
        active -= 1

    queue: WorkQueue[str] = WorkQueue(handler, workers=4)
    queue.start()
    queue.add("a")
    await started.wait()
    queue.add("a")
    queue.add("a")
    release.set()
    await asyncio.sleep(0.05)
    await queue.stop()
    assert runs == 2
    assert peak == 1


async def test_failures_retry_with_growing_backoff_then_succeed() -> None:
    attempts: list[float] = []
    loop = asyncio.get_running_loop()

    async def handler(key: str) -> None:
        attempts.append(loop.time())
        if len(attempts) < 3:
            raise RuntimeError("boom")

    queue: WorkQueue[str] = WorkQueue(handler, workers=1, backoff=Backoff(base=0.05, maximum=1))
    queue.start()
    queue.add("a")
    await asyncio.sleep(0.4)
    await queue.stop()
    assert len(attempts) == 3
    first_gap, second_gap = attempts[1] - attempts[0], attempts[2] - attempts[1]
    assert first_gap >= 0.045
    assert second_gap >= 0.095


async def test_requeue_runs_the_key_again_after_the_delay() -> None:
    runs = 0

    async def handler(key: str) -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise Requeue(0.05)

    queue: WorkQueue[str] = WorkQueue(handler, workers=1)
    queue.start()
    queue.add("a")
    await asyncio.sleep(0.02)
    assert runs == 1
    await asyncio.sleep(0.1)
    await queue.stop()
    assert runs == 2


async def test_forget_cancels_a_pending_retry() -> None:
    runs = 0

    async def handler(key: str) -> None:
        nonlocal runs
        runs += 1
        raise Requeue(0.05)

    queue: WorkQueue[str] = WorkQueue(handler, workers=1)
    queue.start()
    queue.add("a")
    await asyncio.sleep(0.02)
    queue.forget("a")
    await asyncio.sleep(0.1)
    await queue.stop()
    assert runs == 1

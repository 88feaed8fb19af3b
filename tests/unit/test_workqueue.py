"""The operator's work queue: de-duplication, no concurrent runs of one key, retries.

Each test waits for what the handler reports (an event, a run count), never for a guessed
amount of time; only the checks that something does *not* happen let the queue's own delay
pass, on the loop's clock.
"""

from __future__ import annotations

import asyncio

from agentpool_operator.workqueue import Backoff, Requeue, WorkQueue

WITHIN = 10  # seconds: only a broken queue gets near it


async def _settle() -> None:
    """Let every ready callback and task run (no time passes)."""
    for _ in range(20):
        await asyncio.sleep(0)


async def test_a_burst_of_adds_for_one_key_runs_it_once() -> None:
    runs: list[str] = []
    gate = asyncio.Event()
    ran = asyncio.Event()

    async def handler(key: str) -> None:
        await gate.wait()
        runs.append(key)
        ran.set()

    queue: WorkQueue[str] = WorkQueue(handler, workers=2)
    for _ in range(10):
        queue.add("a")
    queue.start()
    gate.set()
    await asyncio.wait_for(ran.wait(), WITHIN)
    await _settle()
    await queue.stop()
    assert runs == ["a"]


async def test_a_key_added_while_running_runs_again_after_not_during() -> None:
    active = 0
    peak = 0
    runs = 0
    started = asyncio.Event()
    release = asyncio.Event()
    second_done = asyncio.Event()

    async def handler(key: str) -> None:
        nonlocal active, peak, runs
        active += 1
        peak = max(peak, active)
        runs += 1
        started.set()
        await release.wait()
        active -= 1
        if runs == 2:
            second_done.set()

    queue: WorkQueue[str] = WorkQueue(handler, workers=4)
    queue.start()
    queue.add("a")
    await started.wait()
    queue.add("a")
    queue.add("a")
    release.set()
    await asyncio.wait_for(second_done.wait(), WITHIN)
    await _settle()
    await queue.stop()
    assert runs == 2
    assert peak == 1


async def test_failures_retry_with_growing_backoff_then_succeed() -> None:
    attempts: list[float] = []
    loop = asyncio.get_running_loop()
    succeeded = asyncio.Event()

    async def handler(key: str) -> None:
        attempts.append(loop.time())
        if len(attempts) < 3:
            raise RuntimeError("boom")
        succeeded.set()

    queue: WorkQueue[str] = WorkQueue(handler, workers=1, backoff=Backoff(base=0.05, maximum=1))
    queue.start()
    queue.add("a")
    await asyncio.wait_for(succeeded.wait(), WITHIN)
    await _settle()
    await queue.stop()
    assert len(attempts) == 3
    first_gap, second_gap = attempts[1] - attempts[0], attempts[2] - attempts[1]
    assert first_gap >= 0.045
    assert second_gap >= 0.095


async def test_requeue_runs_the_key_again_after_the_delay() -> None:
    runs: list[float] = []
    loop = asyncio.get_running_loop()
    again = asyncio.Event()

    async def handler(key: str) -> None:
        runs.append(loop.time())
        if len(runs) == 1:
            raise Requeue(0.05)
        again.set()

    queue: WorkQueue[str] = WorkQueue(handler, workers=1)
    queue.start()
    queue.add("a")
    await asyncio.wait_for(again.wait(), WITHIN)
    await queue.stop()
    assert len(runs) == 2
    assert runs[1] - runs[0] >= 0.045


async def test_forget_cancels_a_pending_retry() -> None:
    runs = 0
    ran = asyncio.Event()

    async def handler(key: str) -> None:
        nonlocal runs
        runs += 1
        ran.set()
        raise Requeue(0.05)

    queue: WorkQueue[str] = WorkQueue(handler, workers=1)
    queue.start()
    queue.add("a")
    await asyncio.wait_for(ran.wait(), WITHIN)
    await _settle()  # the handler's Requeue is scheduled
    queue.forget("a")
    await asyncio.sleep(0.15)  # three times the retry delay: a retry that was kept would run
    await queue.stop()
    assert runs == 1

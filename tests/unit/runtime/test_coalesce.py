"""Per-iteration batching: calls made in one event-loop iteration share one flush."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from agent_runtime.aio.coalesce import PerIteration


class Recorder:
    def __init__(self) -> None:
        self.flushes: list[list[int]] = []

    async def flush(self, items: list[int]) -> Sequence[int | BaseException]:
        self.flushes.append(items)
        await asyncio.sleep(0)
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


async def test_calls_of_one_iteration_share_one_flush_and_keep_their_own_answers() -> None:
    recorder = Recorder()
    batched = PerIteration[int, int](recorder.flush)
    results = await asyncio.gather(*(batched(i) for i in (1, -2, 3)), return_exceptions=True)
    assert recorder.flushes == [[1, -2, 3]]
    assert results[0] == 10
    assert results[2] == 30
    assert isinstance(results[1], ValueError)
    assert str(results[1]) == "bad -2"


async def test_calls_of_later_iterations_get_a_new_flush() -> None:
    recorder = Recorder()
    batched = PerIteration[int, int](recorder.flush)
    assert await batched(1) == 10
    assert await batched(2) == 20
    assert recorder.flushes == [[1], [2]]


async def test_a_failed_flush_fails_every_caller_of_that_batch_only() -> None:
    calls = 0

    async def flaky(items: list[int]) -> Sequence[int | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("redis went away")
        return items

    batched = PerIteration[int, int](flaky)
    first = await asyncio.gather(batched(1), batched(2), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in first)
    assert await batched(3) == 3  # the next batch is unaffected


async def test_a_cancelled_caller_is_left_out_of_the_flush() -> None:
    recorder = Recorder()
    batched = PerIteration[int, int](recorder.flush)
    doomed = asyncio.ensure_future(batched(1))
    kept = asyncio.ensure_future(batched(2))
    await asyncio.sleep(0)
    doomed.cancel()
    assert await kept == 20
    assert recorder.flushes == [[2]]

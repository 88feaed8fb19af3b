"""Per-iteration batching: the worker's Redis round trips and supervisor messages."""

from __future__ import annotations

import asyncio
import multiprocessing
from collections.abc import Sequence

import pytest

from agent_runtime import ipc
from agent_runtime.coalesce import PerIteration


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


async def test_outbox_holds_task_events_briefly_and_sends_them_with_the_next_message() -> None:
    ours, theirs = multiprocessing.Pipe()
    gone: list[bool] = []
    outbox = ipc.Outbox(ours, lambda: gone.append(True), delay=0.05)
    outbox.put({"type": "done", "entry": "1-0"})
    outbox.put({"type": "dead", "reason": "malformed"})
    outbox.put({"type": "start", "entry": "2-0"})  # deadlines go by the board, not by this
    await asyncio.sleep(0)
    assert not theirs.poll()  # task events wait for company
    outbox.put({"type": "retiring"})  # anything else goes out at once, with them
    await asyncio.sleep(0)
    first = ipc.receive(theirs)
    assert first is not None
    assert [m["type"] for m in ipc.unpack(first)] == ["done", "dead", "start", "retiring"]
    assert not theirs.poll()

    outbox.put({"type": "done", "entry": "2-0"})
    started = asyncio.get_running_loop().time()
    second = await asyncio.to_thread(ipc.receive, theirs)  # alone, it goes after the delay
    assert asyncio.get_running_loop().time() - started >= 0.04
    assert second == {"type": "done", "entry": "2-0"}  # a lone message is sent as is

    theirs.close()
    outbox.put({"type": "ready"})
    outbox.flush()
    assert gone == [True]  # supervisor gone: the worker is told, nothing raises


async def test_outbox_without_delay_sends_each_iterations_messages_in_one_frame() -> None:
    ours, theirs = multiprocessing.Pipe()
    outbox = ipc.Outbox(ours, lambda: None, delay=0)
    outbox.put({"type": "start", "entry": "1-0"})
    outbox.put({"type": "done", "entry": "1-0"})
    await asyncio.sleep(0)
    frame = ipc.receive(theirs)
    assert frame is not None
    assert [m["type"] for m in ipc.unpack(frame)] == ["start", "done"]


@pytest.mark.parametrize("frame", [{"type": "batch", "messages": "nope"},
                                   {"type": "batch", "messages": [1, "x"]}])
def test_a_malformed_batch_carries_no_messages(frame: ipc.Message) -> None:
    assert list(ipc.unpack(frame)) == []

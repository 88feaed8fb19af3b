"""The supervisor <-> worker link: every message survives its encoding, anything unreadable is
left out without touching the rest of its frame, and the worker's outbox sends what one
event-loop iteration produced in one frame."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import multiprocessing

import pytest

from agent_runtime.ipc import messages, pipe
from agent_runtime.ipc.messages import (
    Adopt,
    AllocationGrowth,
    BootError,
    DbPoolSizes,
    DeadLettered,
    Drain,
    Heartbeat,
    MemoryReport,
    Message,
    MetricDelta,
    Pause,
    Ready,
    ReportMemory,
    Resume,
    Retiring,
    RunningEntry,
    TaskDone,
    TaskStarted,
    Unhealthy,
)

ONE_OF_EACH: list[Message] = [
    Ready("pod-abc-0.1"),
    BootError("ImportError: no module named 'x'"),
    Heartbeat(running=(RunningEntry("1-0", "t1", "default", 100.5),),
              stats=(MetricDelta("c", "agentpool_cache_requests_total",
                                 {"cache": "llm", "result": "hit"}, 2.0),
                     MetricDelta("h", "agentpool_external_request_duration_seconds",
                                 {"api": "s", "operation": "GET", "outcome": "success"}, 0.2)),
              db=DbPoolSizes(2, 1, 4), redis_ok=True, draining=False),
    Heartbeat(running=(), stats=(), db=None, redis_ok=False, draining=True),
    TaskStarted(entry="1-0", task="t1", handler="default", wait=0.25, at=100.5),
    TaskDone(entry="1-0", task="t1", handler="default", outcome="failure", duration=1.5,
             retried=False, dead="retries_exhausted", at=102.0),
    TaskDone(entry="2-0", task="t2", handler="default", outcome="success", duration=0.1,
             retried=False, dead=None, at=102.5),
    TaskDone(entry="3-0", task="t3", handler="default", outcome="success", duration=0.1,
             retried=False, dead=None, at=102.5, trace="ab" * 16, wait=0.125),
    DeadLettered(handler="unknown", reason="malformed"),
    Retiring("max_tasks"),
    Unhealthy("sync handler slow ignored its 1s timeout"),
    Drain(330.0),
    Pause(),
    Resume(),
    Adopt(),
    ReportMemory(),
    MemoryReport(top=(AllocationGrowth("/app/agents/tasks.py:42", 52_428_800, 50),),
                 traced_bytes=60_000_000),
    MemoryReport(top=(), traced_bytes=0),
]


def test_every_kind_of_message_is_covered_here() -> None:
    assert {type(m) for m in ONE_OF_EACH} == set(messages._KINDS.values())


def test_a_frame_decodes_to_the_messages_it_was_encoded_from_in_order() -> None:
    assert messages.decode(messages.encode(ONE_OF_EACH)) == ONE_OF_EACH


WITH_FIELDS = [m for m in ONE_OF_EACH if dataclasses.fields(m)]


@pytest.mark.parametrize("message", WITH_FIELDS, ids=lambda m: type(m).__name__)
def test_a_message_with_a_field_of_the_wrong_type_is_left_out(message: Message) -> None:
    good = json.loads(messages.encode([message]))[0]
    for position in range(1, len(good)):
        bad = list(good)
        bad[position] = {"not": "this"}
        frame = json.dumps([bad, good]).encode()
        assert messages.decode(frame) == [message], f"field {position} accepted a mapping"


@pytest.mark.parametrize("frame", [
    b"not json", b'{"type": "ready"}', b"[1, \"x\", []]", b'[["no such kind"]]',
    b'[["ready"]]', b'[["ready", "c", "extra"]]', b'[["drain", true]]',
    b'[["heartbeat", [["1-0", "t"]], [], null, true, false]]',
])
def test_unreadable_frames_and_messages_carry_nothing(frame: bytes) -> None:
    assert messages.decode(frame) == []


def test_numbers_are_accepted_as_integers_or_floats_and_come_back_as_floats() -> None:
    (drain,) = messages.decode(b'[["drain", 3]]')
    assert drain == Drain(3.0)
    assert isinstance(drain, Drain)
    assert isinstance(drain.seconds, float)


def test_pipe_send_and_receive_carry_one_frame_and_end_of_stream_is_none() -> None:
    ours, theirs = multiprocessing.Pipe()
    assert pipe.send(ours, Ready("c"), Pause())
    assert pipe.receive(theirs) == [Ready("c"), Pause()]
    ours.close()
    assert pipe.receive(theirs) is None
    assert not pipe.send(ours, Pause())  # a closed pipe: False, never an exception


async def test_outbox_holds_task_events_briefly_and_sends_them_with_the_next_message() -> None:
    ours, theirs = multiprocessing.Pipe()
    gone: list[bool] = []
    outbox = pipe.Outbox(ours, lambda: gone.append(True), delay=0.05)
    done = TaskDone(entry="1-0", task="t", handler="h", outcome="success", duration=0.1,
                    retried=False, dead=None, at=1.0)
    dead = DeadLettered(handler="h", reason="malformed")
    started = TaskStarted(entry="2-0", task="u", handler="h", wait=0.0, at=1.0)
    outbox.put(done)
    outbox.put(dead)
    outbox.put(started)  # deadlines go by the board, not by this
    await asyncio.sleep(0)
    assert not theirs.poll()  # task events wait for company
    outbox.put(Retiring("max_tasks"))  # anything else goes out at once, with them
    await asyncio.sleep(0)
    assert pipe.receive(theirs) == [done, dead, started, Retiring("max_tasks")]
    assert not theirs.poll()

    outbox.put(done)
    sent_at = asyncio.get_running_loop().time()
    second = await asyncio.to_thread(pipe.receive, theirs)  # alone, it goes after the delay
    assert asyncio.get_running_loop().time() - sent_at >= 0.04
    assert second == [done]

    theirs.close()
    outbox.put(Ready("c"))
    outbox.flush()
    assert gone == [True]  # supervisor gone: the worker is told, nothing raises


async def test_outbox_without_delay_sends_each_iterations_messages_in_one_frame() -> None:
    ours, theirs = multiprocessing.Pipe()
    outbox = pipe.Outbox(ours, lambda: None, delay=0)
    started = TaskStarted(entry="1-0", task="t", handler="h", wait=0.0, at=1.0)
    done = TaskDone(entry="1-0", task="t", handler="h", outcome="success", duration=0.1,
                    retried=False, dead=None, at=1.0)
    outbox.put(started)
    outbox.put(done)
    await asyncio.sleep(0)
    # A task that started and ended within the frame is its TaskDone alone, with the wait.
    assert pipe.receive(theirs) == [dataclasses.replace(done, wait=0.0)]


async def test_outbox_folds_a_start_into_its_end_only_within_one_frame() -> None:
    ours, theirs = multiprocessing.Pipe()
    outbox = pipe.Outbox(ours, lambda: None, delay=0.05)
    first = TaskStarted(entry="1-0", task="t", handler="h", wait=0.5, at=1.0)
    second = TaskStarted(entry="2-0", task="u", handler="h", wait=0.25, at=1.0)
    first_done = TaskDone(entry="1-0", task="t", handler="h", outcome="success",
                          duration=0.1, retried=False, dead=None, at=1.1)
    for message in (first, second, first_done):
        outbox.put(message)
    outbox.flush()
    # The running task's start stays as it was, in its place; the finished one's is folded.
    assert pipe.receive(theirs) == [second, dataclasses.replace(first_done, wait=0.5)]

    second_done = TaskDone(entry="2-0", task="u", handler="h", outcome="success",
                           duration=0.2, retried=False, dead=None, at=1.2)
    outbox.put(second_done)
    outbox.flush()
    assert pipe.receive(theirs) == [second_done]  # its start already went: no wait again

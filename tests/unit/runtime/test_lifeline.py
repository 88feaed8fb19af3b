"""A worker's lifeline thread: it passes the supervisor's messages to the event loop, and ends
the process when the supervisor is gone or the pod's leases are about to lapse under a running
handler - whatever the event loop is doing."""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time

from agent_runtime.ipc import pipe
from agent_runtime.ipc.board import Board
from agent_runtime.ipc.exits import EXIT_LEASES_LAPSING, EXIT_SUPERVISOR_GONE
from agent_runtime.ipc.messages import Drain, SupervisorMessage
from agent_runtime.worker.lifeline import Lifeline


class Exits:
    def __init__(self) -> None:
        self.codes: list[int] = []
        self.happened = threading.Event()

    def __call__(self, code: int) -> None:
        self.codes.append(code)
        self.happened.set()


def _board(confirmed_for: float) -> Board:
    board = Board.create(slots=2)
    board.confirm_leases_until(time.monotonic() + confirmed_for)
    return board


async def test_messages_reach_the_loop_and_a_closed_pipe_ends_the_process() -> None:
    ours, theirs = multiprocessing.Pipe()
    exits = Exits()
    received: list[SupervisorMessage] = []
    arrived = asyncio.Event()

    def on_message(message: SupervisorMessage) -> None:
        received.append(message)
        arrived.set()

    lifeline = Lifeline(ours, _board(60), "w", on_message, exit_process=exits)
    lifeline.start(asyncio.get_running_loop())

    pipe.send(theirs, Drain(3))
    await asyncio.wait_for(arrived.wait(), 5)
    assert received == [Drain(3.0)]

    # Block the event loop, as a handler might: the lifeline still acts.
    theirs.close()
    assert await asyncio.to_thread(exits.happened.wait, 5)
    assert exits.codes == [EXIT_SUPERVISOR_GONE]


async def test_a_running_handler_ends_the_process_when_the_leases_lapse() -> None:
    ours, _theirs = multiprocessing.Pipe()
    board = _board(0.3)
    board.hold(0, "1-0")
    board.start(0, "1-0")
    exits = Exits()
    lifeline = Lifeline(ours, board, "w", lambda _m: None, exit_process=exits)
    lifeline.start(asyncio.get_running_loop())

    started = time.monotonic()
    time.sleep(0.2)  # noqa: ASYNC251 - the loop is blocked; the lifeline must not be
    assert exits.codes == []  # still confirmed
    assert await asyncio.to_thread(exits.happened.wait, 5)
    assert exits.codes[0] == EXIT_LEASES_LAPSING
    assert time.monotonic() - started >= 0.3
    lifeline.stop()


async def test_without_running_handlers_lapsed_leases_only_hold_new_work_back() -> None:
    ours, _theirs = multiprocessing.Pipe()
    board = _board(-1)
    board.hold(0, "1-0")  # held, not started
    exits = Exits()
    lifeline = Lifeline(ours, board, "w", lambda _m: None, exit_process=exits)
    lifeline.start(asyncio.get_running_loop())
    assert not await asyncio.to_thread(exits.happened.wait, 0.5)
    lifeline.stop()
    assert not board.leases_ok()

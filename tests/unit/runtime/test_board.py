"""The task board shared by a worker and its supervisor: what one writes the other reads, in
another process, even after the writer died; a handler's age counts from its start."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from unittest.mock import Mock

import pytest

from agent_runtime.ipc.board import Board, TaskSlotState
from agent_runtime.supervisor.worker_handle import WorkerHandle


def _worker(board: Board, entry_ids: list[str]) -> None:
    """Stands in for a worker: holds entries, starts the first handler, then dies hard."""
    for index, entry_id in enumerate(entry_ids):
        board.hold(index, entry_id)
    board.start(0, entry_ids[0])
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_dead_workers_board_still_says_which_entries_had_started() -> None:
    board = Board.create(slots=4)
    context = multiprocessing.get_context("forkserver")
    process = context.Process(target=_worker, args=(board, ["1-1", "1-2", "1-3"]))
    process.start()
    process.join(30)
    assert process.exitcode == -signal.SIGKILL

    held = {slot.entry_id: slot.state for slot in board.held()}
    assert held == {"1-1": TaskSlotState.STARTED, "1-2": TaskSlotState.DELIVERED,
                    "1-3": TaskSlotState.DELIVERED}
    assert [slot.entry_id for slot in board.started()] == ["1-1"]
    board.close()


def test_slots_go_through_their_states_and_free_again() -> None:
    board = Board.create(slots=2)
    board.hold(1, "5-0")
    assert [(s.index, s.started) for s in board.held()] == [(1, False)]
    board.start(1, "5-0")
    assert board.started()[0].started_at == pytest.approx(time.monotonic(), abs=1.0)
    board.recording(1, "5-0")
    assert board.started()[0].state is TaskSlotState.RECORDING  # still an execution
    board.free(1)
    assert board.held() == []
    board.close()


def test_leases_are_ok_only_until_the_confirmed_deadline() -> None:
    board = Board.create(slots=1)
    assert not board.leases_ok()  # nothing confirmed yet
    board.confirm_leases_until(time.monotonic() + 60)
    assert board.leases_ok()
    board.confirm_leases_until(time.monotonic() - 1)
    assert not board.leases_ok()
    board.close()


def test_the_supervisor_times_a_handler_from_its_start_on_the_board() -> None:
    board = Board.create(slots=2)
    handle = WorkerHandle(slot=0, generation=1, consumer="c", process=Mock(), conn=Mock(),
                          max_tasks=None, board=board)
    board.hold(0, "1-0")
    assert handle.oldest_task_age(time.monotonic()) == 0.0  # held, not started: no deadline
    board.start(0, "1-0")
    started = board.started()[0].started_at
    assert handle.oldest_task_age(started + 30) == pytest.approx(30.0)
    board.start(1, "2-0")
    handle.close_board()
    assert set(handle.started_at_exit) == {"1-0", "2-0"}
    assert handle.board is None

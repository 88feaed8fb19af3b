"""A worker's task board: a little shared memory the worker writes and its supervisor reads.

The supervisor creates one board per worker (an anonymous memory file, `memfd`) and hands it to
the worker as a file descriptor when it starts the process. One slot per concurrent task says
which entry it holds, whether its handler has started and since when; a header says until when
the supervisor has confirmed the pod's leases. Writing a slot is a few memory stores, no system
call and no wake-up, so it is done synchronously right before a handler's first line runs.
That is what makes these facts independent of the worker's event loop:

* the supervisor kills a worker whose handler has passed its deadline even when that handler
  blocked the loop before its first `await` (the loop never got to say that it started);
* when a worker dies, the supervisor knows which of its entries really started - only those
  count as a delivery - and the board outlives the worker, which is why the supervisor keeps it;
* the worker's lifeline thread (`worker/lifeline.py`) stops the process before a lease the
  supervisor could not renew can lapse, even when the supervisor itself is stuck.

Each slot is guarded by a sequence number (odd while the worker writes it), so the supervisor
never acts on a half-written slot: it reads again. Times are CLOCK_MONOTONIC, which all
processes on the host share.
"""

from __future__ import annotations

import contextlib
import enum
import mmap
import os
import struct
import tempfile
import time
from dataclasses import dataclass
from multiprocessing import reduction
from typing import Any

_HEADER = struct.Struct("<d")  # leases confirmed until (monotonic seconds)
_HEADER_SIZE = 64
_SEQ = struct.Struct("<I")
_BODY = struct.Struct("<Bxxxd48s")  # state, started at (monotonic), entry id (ASCII)
_SLOT_SIZE = 64
MAX_ENTRY_ID = 48  # "<ms>-<seq>" is at most 41 characters


class TaskSlotState(enum.IntEnum):
    FREE = 0
    DELIVERED = 1  # the worker holds the entry; its handler has not started
    STARTED = 2  # the handler runs: an execution, and its deadline applies
    RECORDING = 3  # the handler returned; the outcome is being recorded


@dataclass(frozen=True)
class TaskSlot:
    index: int
    state: TaskSlotState
    entry_id: str
    started_at: float  # monotonic; 0 unless started

    @property
    def started(self) -> bool:
        """The handler ran (or runs): this delivery was a real execution."""
        return self.state in (TaskSlotState.STARTED, TaskSlotState.RECORDING)


def _memory_file(size: int) -> int:
    try:
        fd = os.memfd_create("agentpool-board", os.MFD_CLOEXEC)
    except (AttributeError, OSError):  # not Linux: an unlinked temporary file works too
        fd, path = tempfile.mkstemp(prefix="agentpool-board-")
        os.unlink(path)
    os.ftruncate(fd, size)
    return fd


class Board:
    """Both sides' view of one worker's board (see the module docstring)."""

    def __init__(self, fd: int, slots: int) -> None:
        self.fd = fd
        self.slots = slots
        self._map = mmap.mmap(fd, _HEADER_SIZE + slots * _SLOT_SIZE)
        self._seq = [0] * slots

    @classmethod
    def create(cls, slots: int) -> Board:
        return cls(_memory_file(_HEADER_SIZE + slots * _SLOT_SIZE), slots)

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled into a new worker process: the file descriptor travels with it (SCM_RIGHTS
        # through the fork server), the mapping is made anew on the other side.
        return _attach, (reduction.DupFd(self.fd), self.slots)

    def close(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            self._map.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)

    # -- header (written by the supervisor) --------------------------------------------------

    def confirm_leases_until(self, deadline: float) -> None:
        _HEADER.pack_into(self._map, 0, deadline)

    def leases_confirmed_until(self) -> float:
        return float(_HEADER.unpack_from(self._map, 0)[0])

    def leases_ok(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) < self.leases_confirmed_until()

    # -- slots (written by the worker) -------------------------------------------------------

    def _write(self, index: int, state: TaskSlotState, entry_id: str, started_at: float) -> None:
        offset = _HEADER_SIZE + index * _SLOT_SIZE
        seq = self._seq[index]
        _SEQ.pack_into(self._map, offset, seq + 1)  # odd: being written
        _BODY.pack_into(self._map, offset + _SEQ.size, state, started_at,
                        entry_id.encode("ascii", "replace")[:MAX_ENTRY_ID])
        self._seq[index] = seq + 2
        _SEQ.pack_into(self._map, offset, seq + 2)

    def hold(self, index: int, entry_id: str) -> None:
        self._write(index, TaskSlotState.DELIVERED, entry_id, 0.0)

    def start(self, index: int, entry_id: str) -> None:
        self._write(index, TaskSlotState.STARTED, entry_id, time.monotonic())

    def recording(self, index: int, entry_id: str) -> None:
        self._write(index, TaskSlotState.RECORDING, entry_id, 0.0)

    def free(self, index: int) -> None:
        self._write(index, TaskSlotState.FREE, "", 0.0)

    # -- reading (the supervisor; the worker's lifeline) ------------------------------------

    def read(self, index: int) -> TaskSlot | None:
        """One slot as it was between two writes; None if it kept changing under us."""
        offset = _HEADER_SIZE + index * _SLOT_SIZE
        for _ in range(100):
            (before,) = _SEQ.unpack_from(self._map, offset)
            if before % 2:
                continue
            state, started_at, raw = _BODY.unpack_from(self._map, offset + _SEQ.size)
            (after,) = _SEQ.unpack_from(self._map, offset)
            if before == after:
                try:
                    kind = TaskSlotState(state)
                except ValueError:
                    return None
                return TaskSlot(index, kind, raw.rstrip(b"\0").decode("ascii", "replace"),
                            started_at)
        return None

    def held(self) -> list[TaskSlot]:
        """Every slot that holds an entry."""
        slots = (self.read(index) for index in range(self.slots))
        return [slot for slot in slots if slot is not None and slot.state is not TaskSlotState.FREE]

    def started(self) -> list[TaskSlot]:
        return [slot for slot in self.held() if slot.started]


def _attach(fd: Any, slots: int) -> Board:
    return Board(fd.detach(), slots)

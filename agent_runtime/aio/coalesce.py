"""Calls made during one event-loop iteration share one flush (one Redis round trip).

A worker runs up to `concurrency` tasks at once, and under load several of them reach the same
step in the same iteration: the cancellation check before a task starts, or recording its
result. Each would be its own request, write system call and reply. `PerIteration` queues the
calls of one iteration and hands them to a flush function together; each caller still gets its
own answer or its own exception, so one task's failure is not another's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

# One answer per item, in order: the value, or the exception to raise in that item's caller.
Flush = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]


class PerIteration(Generic[T, R]):
    def __init__(self, flush: Flush[T, R]) -> None:
        self._flush = flush
        self._queued: list[tuple[T, asyncio.Future[R]]] = []
        self._inflight: set[asyncio.Task[None]] = set()

    async def __call__(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        if not self._queued:
            loop.call_soon(self._start_flush)
        self._queued.append((item, future))
        return await future

    def _start_flush(self) -> None:
        batch, self._queued = self._queued, []
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._inflight.add(task)  # keep a reference until it finishes
        task.add_done_callback(self._inflight.discard)

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        live = [(item, future) for item, future in batch if not future.cancelled()]
        if not live:
            return
        try:
            answers = await self._flush([item for item, _ in live])
        except asyncio.CancelledError:
            for _, future in live:
                future.cancel()
            raise
        except Exception as exc:  # handed to every caller of this batch
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), answer in zip(live, answers, strict=True):
            if future.done():
                continue
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)

"""Runs one queue delivery to its recorded outcome (called by `worker.py`, one per task).

Decides, in order: malformed envelope or unknown handler -> dead letter with the reason; too
many executions already (retries plus crash redeliveries) -> dead letter with the last error;
cancelled before it started -> cancelled result. Otherwise the handler runs under the task
timeout, and its outcome is recorded durably - PostgreSQL first when configured, then Redis,
where the result write and the XACK are one transaction - before the entry is acknowledged.

Recording retries until it succeeds (Redis or PgBouncer restarting must not lose a finished
task); only the drain deadline interrupts it, and then the entry is handed back instead.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from agent_runtime.config import RuntimeConfig
from agent_runtime.db.results import ResultStore
from agent_runtime.errors import MalformedTaskError, PermanentTaskError
from agent_runtime.ipc.board import Board
from agent_runtime.ipc.messages import DeadLettered, TaskDone, TaskStarted, WorkerMessage
from agent_runtime.queue.consumer import Delivery, TaskConsumer
from agent_runtime.queue.envelope import (
    TaskEnvelope,
    TaskResult,
    TaskStatus,
    encode_value,
    execution_number,
    retry_delay,
    truncate_error,
)
from agent_runtime.queue.validation import (
    EntryLimits,
    bytes_safe,
    clean_task_id,
    dead_letter_copy,
    decode_entry,
)
from agent_runtime.sdk.context import TaskContext, WorkerResources
from agent_runtime.worker.task_handlers import Handler, HandlerRegistry

log = logging.getLogger(__name__)
Event = tuple[str, str, float, dict[str, Any]]


@dataclass
class RunningTask:
    """A delivery being executed; `cancel_reason` says why it was cancelled, if it was."""

    entry_id: str
    task_id: str
    handler: str
    started_at: float
    board_slot: int = 0  # its slot on the worker's board
    task: asyncio.Task[None] | None = None
    cancel_reason: str | None = None
    in_handler: bool = False
    handler_started: bool = False  # an execution, not only a delivery
    # A sync handler's thread that outlived its task (timeout, drain): the entry must not run
    # anywhere else until the thread has ended, or this process has.
    thread_may_run: bool = False


@dataclass
class Finished:
    outcome: str  # success | failure | timeout | cancelled
    status: TaskStatus | None  # final status, None when the task will run again
    value: Any = None
    value_json: str | None = None  # `value` encoded (once: the check that it can be stored)
    error: str | None = None
    dead_reason: str | None = None
    exception: BaseException | None = None  # what the handler raised, for its traceback


class TaskExecutor:
    def __init__(self, queue: TaskConsumer, registry: HandlerRegistry, resources: WorkerResources,
                 store: ResultStore | None, notify: Callable[[WorkerMessage], None],
                 on_unhealthy: Callable[[str], None], board: Board) -> None:
        self._queue = queue
        self._board = board
        self._registry = registry
        self._resources = resources
        self._store = store
        self._notify = notify
        self._on_unhealthy = on_unhealthy
        self._config: RuntimeConfig = resources.settings.config
        self._limits = EntryLimits(self._config.max_payload_bytes, queue.keys.reply(""))
        self._tracing = resources.tracing

    async def run(self, delivery: Delivery, running: RunningTask) -> None:
        try:
            envelope = decode_entry(delivery.fields, self._limits)
        except MalformedTaskError as exc:
            await self._dead_letter(delivery, None, str(exc), "malformed", "unknown")
            return
        running.task_id = envelope.task_id
        handler = self._registry.resolve(envelope.handler)
        if handler is None:
            reason = (f"unknown handler {envelope.handler!r}; this pool runs "
                      f"{', '.join(self._registry.names)}")
            await self._dead_letter(delivery, envelope, reason, "unknown_handler", "unknown")
            return
        running.handler = handler.name
        attempt = execution_number(envelope.retries, delivery.deliveries)
        if attempt > self._config.max_deliveries:
            last = await self._queue.last_error(envelope.task_id) or envelope.error or "unknown"
            reason = f"max deliveries ({self._config.max_deliveries}) exceeded; last error: {last}"
            await self._dead_letter(delivery, envelope, reason, "max_deliveries", handler.name)
            return
        if delivery.may_be_cancelled and await self._queue.is_cancelled(envelope.task_id):
            await self._finish(delivery, envelope, handler, attempt, time.time(),
                               Finished("cancelled", "cancelled", error="cancelled"))
            return
        started = time.time()
        running.started_at = started
        trace = None if self._tracing is None else self._tracing.task(
            handler.name, envelope.task_id, attempt, envelope.enqueued_at, started,
            envelope.traceparent)
        trace_id = "" if trace is None else trace.trace_id
        self._notify(TaskStarted(entry=delivery.entry_id, task=envelope.task_id,
                                 handler=handler.name, wait=started - envelope.enqueued_at,
                                 at=started, trace=trace_id))
        try:
            finished = await self._execute(envelope, handler, attempt, running)
            if trace is not None:
                trace.executed(finished.outcome, finished.error)
            self._board.recording(running.board_slot, running.entry_id)
            await self._finish(delivery, envelope, handler, attempt, started, finished, trace_id)
        finally:
            if trace is not None:
                trace.end()

    async def _execute(self, envelope: TaskEnvelope, handler: Handler, attempt: int,
                       running: RunningTask) -> Finished:
        ctx = TaskContext(task_id=envelope.task_id, handler=handler.name, attempt=attempt,
                          enqueued_at=envelope.enqueued_at, resources=self._resources)
        timeout = self._config.task_timeout_seconds
        can_retry = attempt < self._config.max_deliveries
        payload = envelope.payload
        thread: list[asyncio.Future[None]] = []
        running.in_handler = True
        # The last step before the handler's first line, in the same event-loop step: the
        # supervisor learns of the start even if the handler then blocks the loop.
        self._board.start(running.board_slot, running.entry_id)
        running.handler_started = True
        try:
            async with asyncio.timeout(timeout) as deadline:
                value = await handler(payload, ctx, thread.append)
            # The result must be storable: fail the task here if not.
            return Finished("success", "succeeded", value=value, value_json=encode_value(value))
        except TimeoutError:
            if not deadline.expired():
                return self._failure("TimeoutError raised by the handler", can_retry)
            if thread:
                await self._outlive_thread(thread[0], handler, running)
            error = f"task timed out after {timeout:g}s"
            finished = self._failure(error, can_retry)
            finished.outcome = "timeout"
            return finished
        except asyncio.CancelledError:
            running.thread_may_run = bool(thread) and not thread[0].done()
            if running.cancel_reason != "cancel":
                raise  # drain deadline: the worker hands the entry back
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()
            return Finished("cancelled", "cancelled", error="cancelled on request")
        except PermanentTaskError as exc:
            return Finished("failure", "failed", error=truncate_error(f"{exc}"),
                            dead_reason="permanent_error", exception=exc)
        except Exception as exc:  # any handler error is a task failure, never a worker crash
            finished = self._failure(truncate_error(f"{type(exc).__name__}: {exc}"), can_retry)
            finished.exception = exc
            return finished
        finally:
            running.in_handler = False
            await ctx.run_cleanups()

    async def _outlive_thread(self, thread: asyncio.Future[None], handler: Handler,
                              running: RunningTask) -> None:
        """A sync handler passed its timeout; its thread cannot be stopped. Record the timeout
        only once the thread has really ended: a retry must never run beside it. If it never
        ends, the supervisor kills this worker at the deadline (its slot still says started)."""
        if thread.done():
            return
        self._on_unhealthy(f"sync handler {handler.name} ignored its "
                           f"{self._config.task_timeout_seconds:g}s timeout")
        running.thread_may_run = True
        await asyncio.shield(thread)
        running.thread_may_run = False

    @staticmethod
    def _failure(error: str, can_retry: bool) -> Finished:
        if can_retry:
            return Finished("failure", None, error=error)
        return Finished("failure", "failed", error=error, dead_reason="retries_exhausted")

    async def _finish(self, delivery: Delivery, envelope: TaskEnvelope, handler: Handler,
                      attempt: int, started: float, finished: Finished,
                      trace_id: str = "") -> None:
        now = time.time()
        result = None
        if finished.status is not None:
            result = TaskResult(
                task_id=envelope.task_id, status=finished.status, handler=handler.name,
                result=finished.value, error=finished.error, attempts=attempt,
                enqueued_at=envelope.enqueued_at, started_at=started, finished_at=now,
                worker=self._queue.consumer)
        if self._store is not None:  # the task's events are only kept in the database
            if finished.status is None:
                final_event = "retry_scheduled"
            else:
                final_event = "dead_lettered" if finished.dead_reason else finished.status
            await self._store_in_db(result, [
                (envelope.task_id, "started", started, {"attempt": attempt}),
                (envelope.task_id, final_event, now, {"error": finished.error})])
        if result is None:
            delay = retry_delay(attempt - 1, self._config.retry_backoff_seconds,
                                self._config.retry_backoff_max_seconds, random.Random())
            await durably(lambda: self._queue.retry(delivery.entry_id, envelope, attempt,
                                                    finished.error or "", delay))
        elif finished.dead_reason:
            final = result
            copy = dead_letter_copy(delivery.fields, self._limits)
            await durably(lambda: self._queue.dead_letter(
                delivery.entry_id, copy, finished.error or "", envelope, final))
        else:
            final = result
            await durably(lambda: self._queue.complete(delivery.entry_id, envelope, final,
                                                       finished.value_json))
        self._notify(TaskDone(entry=delivery.entry_id, task=envelope.task_id,
                              handler=handler.name, outcome=finished.outcome,
                              duration=now - started, retried=finished.status is None,
                              dead=finished.dead_reason, at=now, trace=trace_id))
        log_outcome(envelope.task_id, handler.name, attempt, now - started, finished)

    async def _dead_letter(self, delivery: Delivery, envelope: TaskEnvelope | None, reason: str,
                           kind: str, handler_name: str) -> None:
        reason = bytes_safe(reason)
        task_id = envelope.task_id if envelope else clean_task_id(delivery.fields)
        result = None
        if task_id:
            result = TaskResult(task_id=task_id, status="failed", handler=handler_name,
                                error=reason, attempts=0,
                                enqueued_at=envelope.enqueued_at if envelope else None,
                                finished_at=time.time(), worker=self._queue.consumer)
            await self._store_in_db(result, [(task_id, "dead_lettered", time.time(),
                                              {"error": reason})])
        copy = dead_letter_copy(delivery.fields, self._limits)
        await durably(lambda: self._queue.dead_letter(delivery.entry_id, copy, reason, envelope,
                                                      result))
        self._notify(DeadLettered(handler=handler_name, reason=kind))
        log.warning("dead-lettered entry %s (task %s): %s", delivery.entry_id,
                    task_id or "?", reason,
                    extra={"event": "task_outcome", "task_id": task_id or None,
                           "handler": handler_name, "entry_id": delivery.entry_id,
                           "outcome": "dead_lettered", "status": "failed", "reason": kind,
                           "error": reason})

    async def _store_in_db(self, result: TaskResult | None, events: list[Event]) -> None:
        store = self._store
        if store is not None:
            await durably(lambda: store.record(result, events))


def log_outcome(task_id: str, handler: str, attempt: int, duration: float,
                finished: Finished) -> None:
    """The task's outcome line: ids, handler, attempt, duration and outcome, never the payload
    or the result; a handler's exception with its traceback. `status` is the recorded status,
    or `retrying` when the task runs again; `dead_letter_reason` when it was dead-lettered."""
    level = logging.INFO if finished.outcome in ("success", "cancelled") else logging.WARNING
    if not log.isEnabledFor(level):
        return
    status = finished.status or "retrying"
    fields: dict[str, Any] = {
        "event": "task_outcome", "task_id": task_id, "handler": handler, "attempt": attempt,
        "duration_seconds": round(duration, 6), "outcome": finished.outcome, "status": status}
    if finished.error is not None and finished.outcome != "cancelled":
        fields["error"] = finished.error
    if finished.dead_reason:
        fields["dead_letter_reason"] = finished.dead_reason
    exc = finished.exception
    log.log(level, "task %s %s after %.3fs (handler %s, attempt %d, %s)", task_id,
            finished.outcome, duration, handler, attempt, status, extra=fields,
            exc_info=(type(exc), exc, exc.__traceback__) if exc is not None else None)


async def durably(operation: Callable[[], Awaitable[Any]], what: str = "record outcome") -> Any:
    """Retry `operation` until it succeeds: a finished task's outcome must not be lost to a
    Redis or database restart. Cancellation (the drain deadline) still gets through."""
    delay = 0.05
    while True:
        try:
            return await operation()
        except (RedisError, OSError, TimeoutError, ConnectionError) as exc:
            log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
        except Exception as exc:
            # Also database errors (PgBouncer restarting, a missing partition): keep the task
            # pending rather than acknowledge an outcome we could not store.
            log.warning("%s failed (%r); retrying in %.1fs", what, exc, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)

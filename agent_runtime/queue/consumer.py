"""The worker's side of the Redis Streams work queue (consumer group, at-least-once).

Called by the worker (`agent_runtime.worker.worker`). A task is taken with XREADGROUP (at most the
worker's free slots), by adopting entries the supervisor moved to this consumer after a worker
died, or by XAUTOCLAIM of entries whose lease expired (their pod is gone). It leaves the pending
list (PEL) only in one MULTI/EXEC that also records its outcome - result, retry or dead letter -
so a worker dying at any point either leaves the entry pending (it runs again) or the outcome
recorded (done). Duplicates are possible (at-least-once); loss is not.

Entries are XDELeted when acknowledged, so the stream holds only unfinished work and never
needs MAXLEN trimming (which would drop unacknowledged entries; see `maintenance.safe_trim`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, ResponseError

from agent_runtime.aio.coalesce import PerIteration
from agent_runtime.config import RuntimeConfig
from agent_runtime.queue.envelope import TaskEnvelope, TaskResult, normalise_fields
from agent_runtime.queue.keys import Keys
from agent_runtime.queue.scripts import ADOPT, COMPLETE, HAND_BACK
from agent_runtime.queue.validation import bytes_safe

log = logging.getLogger(__name__)

REPLY_TTL_SECONDS = 86400
LAST_ERROR_TTL_SECONDS = 7 * 86400


@dataclass(slots=True)  # not frozen: one per task, and a frozen __init__ costs 2.5x
class Completion:
    """A finished task waiting to be recorded and acknowledged."""

    entry_id: str
    envelope: TaskEnvelope | None
    result: TaskResult
    result_json: str | None = None
    """`result.result` already encoded (`envelope.encode_value`), or None."""


ReadPlan = Callable[[int], int]
"""Given how many slots a batch of completions frees, how many new entries the worker wants
read in the same round trip (0: none)."""
Deliver = Callable[[list["Delivery"]], None]


@dataclass(slots=True)  # not frozen: one per task, and a frozen __init__ costs 2.5x
class Delivery:
    """One stream entry handed to this consumer, with its delivery count: executions of this
    entry that started, this one included (a delivery to a worker that died before starting
    it does not count; see `scripts.TRANSFER_PENDING`).

    `may_be_cancelled` is False when the read that delivered it also saw that no cancellation
    had been requested, so the task needs no cancellation check before it starts.
    """

    entry_id: str
    fields: dict[str, str]
    deliveries: int
    may_be_cancelled: bool = True

    @property
    def suspect(self) -> bool:
        """An execution of this entry died with its worker or pod (or it was handed back as a
        suspect): it may be what killed it, so it runs alone."""
        return self.deliveries > 1 or self.fields.get("suspect") == "1"


def is_nogroup(exc: ResponseError) -> bool:
    """The stream or group vanished (Redis restarted without persistence, or was flushed)."""
    return str(exc).startswith("NOGROUP") or "no such key" in str(exc).lower()


async def ensure_group(redis: Redis, keys: Keys) -> None:
    try:
        # "0": a group created after tasks were submitted (Redis lost the group) still sees them.
        await redis.xgroup_create(keys.stream, keys.group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


class TaskConsumer:
    def __init__(self, redis: Redis, reader: Redis, config: RuntimeConfig, consumer: str) -> None:
        # `reader` is a separate client: a BLOCKed XREADGROUP holds its connection, and must not
        # delay the acks and renewals that go through `redis`.
        self._redis = redis
        self._reader = reader
        self._config = config
        self.keys = Keys.for_config(config)
        self.consumer = consumer
        self._autoclaim_cursor = "0-0"
        self._cancel_checks = PerIteration[str, bool](self._check_cancelled)
        self._completions = PerIteration[Completion, None](self._complete_together)
        self._complete_sha: str | None = None
        self._piggyback: tuple[ReadPlan, Deliver] | None = None

    def read_with_completions(self, plan: ReadPlan, deliver: Deliver) -> None:
        """Under load every slot is busy and the next read waits for completions: read in the
        same round trip as them (one write and one reply per batch instead of two). `plan`
        says how many entries to read for a batch; what is read goes to `deliver`, after the
        completions are recorded and before their callers resume."""
        self._piggyback = (plan, deliver)

    async def ensure_group(self) -> None:
        await ensure_group(self._redis, self.keys)

    async def read_new(self, count: int, block_ms: int) -> list[Delivery]:
        # The EXISTS runs right after the read returns, in the same round trip: if no
        # cancellation was requested by then, none of these tasks needs its own check (one
        # requested later is the running-task case, as it would be after a check).
        async with self._reader.pipeline(transaction=False) as pipe:
            pipe.xreadgroup(self.keys.group, self.consumer, {self.keys.stream: ">"},
                            count=count, block=block_ms)
            pipe.exists(self.keys.cancel_requested)
            reply, requested = await pipe.execute(raise_on_error=False)
        if isinstance(reply, ResponseError):
            if not is_nogroup(reply):
                raise reply
            await self.ensure_group()
            return []
        if isinstance(requested, Exception):
            raise requested
        return _deliveries(reply, bool(requested))

    async def _delivery_counts(self, ids: Iterable[str]) -> dict[str, int]:
        wanted = sorted(ids, key=_id_key)
        if not wanted:
            return {}
        rows: Any = await self._redis.xpending_range(
            self.keys.stream, self.keys.group, min=wanted[0], max=wanted[-1],
            count=len(wanted) + 10_000, consumername=self.consumer,
        )
        return {row["message_id"]: int(row["times_delivered"]) for row in rows}

    async def adopt_own(self, exclude: set[str], count: int) -> list[Delivery]:
        """Entries already owned by this consumer but not running here: moved to us by the
        supervisor after our predecessor died. Adopting is not a delivery: the hand-over
        counted the executions that had started."""
        rows: Any = await self._redis.eval(ADOPT, 1, self.keys.stream, self.keys.group,
                                           self.consumer, count, *sorted(exclude))
        return [Delivery(str(entry_id), _pairs(fields), int(deliveries))
                for entry_id, deliveries, fields in rows or []]

    async def reclaim_idle(self, count: int) -> list[Delivery]:
        """Take entries whose lease expired: their consumer's pod stopped renewing them."""
        min_idle_ms = int(self._config.lease_seconds * 1000)
        reply: Any = await self._redis.xautoclaim(
            self.keys.stream, self.keys.group, self.consumer, min_idle_ms,
            start_id=self._autoclaim_cursor, count=count,
        )
        # Resume from the cursor next time instead of rescanning the head of the PEL.
        self._autoclaim_cursor = str(reply[0])
        # Counted as a delivery: the pod that held these is gone, and with it the knowledge of
        # whether they had started. Counting keeps maxDeliveries a hard bound (a task that
        # kills its whole pod must not loop forever); the count also makes them suspects.
        entries = [(i, f) for i, f in reply[1] if f is not None]
        counts = await self._delivery_counts(i for i, _ in entries)
        return [Delivery(i, normalise_fields(f), counts.get(i, 2)) for i, f in entries]

    async def cancelled(self, task_ids: list[str]) -> set[str]:
        if not task_ids:
            return set()
        flags = await self._redis.mget([self.keys.cancel(t) for t in task_ids])
        return {t for t, flag in zip(task_ids, flags, strict=True) if flag}

    async def is_cancelled(self, task_id: str) -> bool:
        """One task's check; checks made in the same event-loop iteration share one MGET."""
        return await self._cancel_checks(task_id)

    async def _check_cancelled(self, task_ids: list[str]) -> list[bool]:
        found = await self.cancelled(task_ids)
        return [task_id in found for task_id in task_ids]

    async def last_error(self, task_id: str) -> str:
        value = await self._redis.get(self.keys.last_error(task_id))
        return str(value) if value else ""

    async def complete(self, entry_id: str, envelope: TaskEnvelope | None,
                       result: TaskResult, result_json: str | None = None) -> None:
        """Record the final result and acknowledge, atomically. Completions made in the same
        event-loop iteration share one script call (one command, one reply). `result_json`:
        the handler's value already encoded, so it is not encoded twice."""
        await self._completions(Completion(entry_id, envelope, result, result_json))

    async def _complete_together(self, batch: list[Completion]) -> list[None]:
        keys: list[str] = [self.keys.stream]
        args: list[Any] = [self.keys.group, self._config.result_ttl_seconds, REPLY_TTL_SECONDS]
        for done in batch:
            task_id = done.result.task_id
            reply_to = done.envelope.reply_to if done.envelope is not None else ""
            keys += [self.keys.result(task_id), self.keys.last_error(task_id)]
            if reply_to:
                keys.append(reply_to)
            text = (done.result.to_json() if done.result_json is None
                    else done.result.to_json_with(done.result_json))
            args += [done.entry_id, text, task_id, "1" if reply_to else "0"]
        # EVALSHA directly: redis-py's Script objects check SCRIPT EXISTS on every pipeline.
        if self._complete_sha is None:
            self._complete_sha = await self._redis.script_load(COMPLETE)
        plan = self._piggyback
        wanted = plan[0](len(batch)) if plan is not None else 0
        try:
            if plan is not None and wanted > 0:
                unreplied = await self._complete_and_read(self._complete_sha, keys, args,
                                                          wanted, plan[1])
            else:
                unreplied = await self._redis.evalsha(self._complete_sha, len(keys), *keys,
                                                      *args)
        except NoScriptError:
            # Redis restarted (or SCRIPT FLUSH): load the script again and run once more.
            self._complete_sha = await self._redis.script_load(COMPLETE)
            unreplied = await self._redis.evalsha(self._complete_sha, len(keys), *keys, *args)
        for task_id in unreplied or []:
            log.warning("task %s: its reply key is not a list; result stored without a reply",
                        bytes_safe(str(task_id)))
        # An error reaches every task of the batch; each records again (harmless, see COMPLETE).
        return [None] * len(batch)

    async def _complete_and_read(self, sha: str, keys: list[str], args: list[Any],
                                 count: int, deliver: Deliver) -> Any:
        """The completions' script, then a non-blocking read of `count` new entries and the
        cancellation flag, in one round trip. The read's entries are delivered even when the
        script failed (they are ours now); the script's error is raised after that."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.evalsha(sha, len(keys), *keys, *args)
            pipe.xreadgroup(self.keys.group, self.consumer, {self.keys.stream: ">"},
                            count=count)
            pipe.exists(self.keys.cancel_requested)
            unreplied, reply, requested = await pipe.execute(raise_on_error=False)
        if not isinstance(reply, Exception) and not isinstance(requested, Exception):
            deliver(_deliveries(reply, bool(requested)))
        # A vanished group (NOGROUP) is the blocking read's to repair; nothing was read here.
        if isinstance(unreplied, Exception):
            raise unreplied
        return unreplied

    async def retry(self, entry_id: str, envelope: TaskEnvelope, executions: int, error: str,
                    delay: float) -> None:
        """Park the task in the delayed set for its next attempt and acknowledge, atomically.
        `executions`: how many times the task has run, this time included; the new entry
        carries it on, so its attempts keep counting up."""
        member = json.dumps(envelope.for_retry(error, executions).to_fields(), sort_keys=True)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.zadd(self.keys.delayed, {member: time.time() + delay})
            self._stage_ack(pipe, entry_id, envelope.task_id)
            await _execute(pipe)

    async def dead_letter(self, entry_id: str, fields: Mapping[str, str], reason: str,
                          envelope: TaskEnvelope | None, result: TaskResult | None) -> None:
        """Copy the entry to the dead-letter stream with the reason, record the failed result
        (if the task id is known) and acknowledge, atomically."""
        dead: dict[Any, Any] = dict(fields)
        dead.update({"dead_reason": reason, "dead_at": repr(time.time()),
                     "source_entry": entry_id, "consumer": self.consumer})
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.xadd(self.keys.dead, dead, maxlen=self._config.dead_letter_max_length,
                      approximate=True)
            best_effort: set[int] = set()
            if result is not None:
                best_effort = self._stage_result(pipe, envelope, result)
            self._stage_ack(pipe, entry_id, result.task_id if result else "")
            await _execute(pipe, best_effort)

    async def hand_back(self, entry_ids: list[str], started: set[str]) -> int:
        """Return unfinished entries to the stream for any consumer (drain deadline);
        `started`: those whose execution had started (it counts as one)."""
        if not entry_ids:
            return 0
        handed = await self._redis.eval(
            HAND_BACK, 1, self.keys.stream, self.keys.group, self.consumer, len(entry_ids),
            *entry_ids, *sorted(started))
        return int(handed)

    def _stage_result(self, pipe: Any, envelope: TaskEnvelope | None,
                      result: TaskResult) -> set[int]:
        """Stage the result and the reply; returns the positions of the reply's commands,
        which may fail (a reply key of another type) without failing the transaction."""
        pipe.set(self.keys.result(result.task_id), result.to_json(),
                 ex=self._config.result_ttl_seconds)
        if envelope is None or not envelope.reply_to:
            return set()
        pipe.rpush(envelope.reply_to, result.task_id)
        pipe.expire(envelope.reply_to, REPLY_TTL_SECONDS)
        return {len(pipe) - 2, len(pipe) - 1}

    def _stage_ack(self, pipe: Any, entry_id: str, task_id: str) -> None:
        pipe.xack(self.keys.stream, self.keys.group, entry_id)
        pipe.xdel(self.keys.stream, entry_id)
        if task_id:
            pipe.delete(self.keys.last_error(task_id))


async def _execute(pipe: Any, best_effort: Collection[int] = ()) -> None:
    """EXEC, tolerating NOGROUP on XACK (the group vanished with a Redis restart, so there is
    nothing left to acknowledge) and any error of the commands at `best_effort` positions
    (EXEC does not roll back: the others took effect); any other error is raised."""
    error = _first_error(await pipe.execute(raise_on_error=False), best_effort)
    if error is not None:
        raise error


def _first_error(replies: list[Any], best_effort: Collection[int]) -> ResponseError | None:
    for position, reply in enumerate(replies):
        if (isinstance(reply, ResponseError) and not is_nogroup(reply)
                and position not in best_effort):
            return reply
    return None


def _deliveries(reply: Any, may_be_cancelled: bool) -> list[Delivery]:
    """The entries of an XREADGROUP reply (an entry deleted meanwhile has no fields)."""
    deliveries = []
    for _stream, entries in reply or []:
        for entry_id, fields in entries:
            if fields is not None:
                deliveries.append(Delivery(entry_id, normalise_fields(fields), 1,
                                           may_be_cancelled))
    return deliveries


def _pairs(flat: list[Any]) -> dict[str, str]:
    """Stream entry fields as a script returns them: [name, value, name, value, ...]."""
    return normalise_fields(dict(zip(flat[::2], flat[1::2], strict=True)))


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)

"""The task envelope, the task result and the retry policy: pure data, no I/O.

Used by the client (to encode submissions), the queue adapter (to move envelopes between the work
stream, the delayed set and the dead-letter stream) and the worker (to decode and record).

An envelope is stored as flat stream-entry fields so `XRANGE` stays readable for people:

    id           task id (client-chosen or generated)
    handler      handler name from the pool's `handler_map` ("default" when omitted)
    payload      the JSON payload, as JSON text
    enqueued_at  submission time, Unix seconds (feeds the queue-wait histogram)
    retries      executions of the task before this entry: runs that ended in a retry, that
                 died with their worker or pod, or were interrupted by a drain (0 for a new
                 task), so the attempt count goes on across entries
    error        the error of the last failed execution (empty for a new task)
    reply        optional Redis list the worker pushes the task id to when it finishes
    idem         optional idempotency key the task was submitted under
    trace        optional W3C `traceparent` of the submitter's span (`agent_runtime.tracing`):
                 the worker's spans join the submitter's trace
"""

from __future__ import annotations

import json
import math
import random
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from agent_runtime.errors import InvalidPayloadError, MalformedTaskError, PayloadTooLargeError

TaskStatus = Literal["succeeded", "failed", "cancelled"]
FINAL_STATUSES: tuple[TaskStatus, ...] = ("succeeded", "failed", "cancelled")

_REQUIRED = ("id", "handler", "payload", "enqueued_at")
MAX_ERROR_CHARS = 4000


def new_task_id() -> str:
    return uuid.uuid4().hex


# Built once: json.dumps with any option builds a new encoder on every call.
_PAYLOAD_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_RESULT_ENCODER = json.JSONEncoder(separators=(",", ":"), default=str)
# A handler's return value: strict (no `default`), so a value that cannot be stored fails its
# task; the text is then spliced into the result's JSON instead of being encoded again.
_VALUE_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode_value(value: Any) -> str:
    """A handler's return value as JSON; TypeError or ValueError when it cannot be."""
    return _VALUE_ENCODER.encode(value)


def encode_payload(payload: Any, limit: int) -> str:
    """Encode a payload as compact JSON, enforcing the pool's size limit with a clear error."""
    try:
        text = _PAYLOAD_ENCODER.encode(payload)
    except (TypeError, ValueError) as exc:
        raise InvalidPayloadError(f"task payload is not JSON-serialisable: {exc}") from exc
    size = len(text.encode("utf-8"))
    if size > limit:
        raise PayloadTooLargeError(size, limit)
    return text


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def normalise_fields(fields: Mapping[Any, Any]) -> dict[str, str]:
    """Field names and values as text. A reply is all bytes or all text (the client decodes
    every value or none), so a dict whose first name and value are text is returned as it is."""
    if isinstance(fields, dict):
        first = next(iter(fields.items()), None)
        if first is None or (type(first[0]) is str and type(first[1]) is str):
            return fields
    return {_text(k): _text(v) for k, v in fields.items()}


# Not frozen: one is built per task, and a frozen dataclass's __init__ costs 2.5x as much.
@dataclass(slots=True)
class TaskEnvelope:
    task_id: str
    handler: str
    payload_json: str
    enqueued_at: float
    retries: int = 0
    error: str = ""
    reply_to: str = ""
    idempotency_key: str = ""
    traceparent: str = ""
    # The payload as `from_fields` decoded it to validate it: the worker's first read of
    # `payload` takes it instead of decoding the text again; later reads decode a fresh copy.
    _decoded: list[Any] = field(default_factory=list, compare=False, repr=False)

    @property
    def payload(self) -> Any:
        if self._decoded:
            return self._decoded.pop()
        return json.loads(self.payload_json)

    def to_fields(self) -> dict[str, str]:
        fields = {
            "id": self.task_id,
            "handler": self.handler,
            "payload": self.payload_json,
            "enqueued_at": repr(self.enqueued_at),
            "retries": str(self.retries),
        }
        # Optional fields are omitted when empty to keep entries small.
        for name, value in (("error", self.error), ("reply", self.reply_to),
                            ("idem", self.idempotency_key), ("trace", self.traceparent)):
            if value:
                fields[name] = value
        return fields

    def for_retry(self, error: str, executions: int) -> TaskEnvelope:
        """The envelope of the next entry of this task, after `executions` runs in all."""
        return replace(self, _decoded=[], retries=max(executions, self.retries + 1),
                       error=truncate_error(error)[:MAX_ERROR_CHARS])

    @classmethod
    def from_fields(cls, raw: Mapping[Any, Any]) -> TaskEnvelope:
        """Decode a stream entry; raises MalformedTaskError saying what is wrong."""
        fields = normalise_fields(raw)
        missing = [name for name in _REQUIRED if not fields.get(name)]
        if missing:
            raise MalformedTaskError(f"malformed task: missing field(s) {', '.join(missing)}")
        try:
            payload = json.loads(fields["payload"])
        except ValueError as exc:
            raise MalformedTaskError(f"malformed task: payload is not JSON ({exc})") from exc
        except RecursionError:
            raise MalformedTaskError("malformed task: payload is nested too deeply to decode "
                                     "as JSON") from None
        try:
            enqueued_at = float(fields["enqueued_at"])
            retries = int(fields.get("retries") or 0)
        except ValueError as exc:
            raise MalformedTaskError(f"malformed task: bad number ({exc})") from exc
        if not math.isfinite(enqueued_at):
            raise MalformedTaskError(f"malformed task: bad number (enqueued_at {enqueued_at})")
        if retries < 0:
            raise MalformedTaskError(f"malformed task: bad number (retries {retries} < 0)")
        return cls(
            task_id=fields["id"],
            handler=fields["handler"],
            payload_json=fields["payload"],
            enqueued_at=enqueued_at,
            retries=retries,
            error=fields.get("error", ""),
            reply_to=fields.get("reply", ""),
            idempotency_key=fields.get("idem", ""),
            traceparent=fields.get("trace", ""),
            _decoded=[payload],
        )


def peek_task_id(raw: Mapping[Any, Any]) -> str:
    """The task id of an entry that may be malformed ("" when there is none)."""
    return normalise_fields(raw).get("id", "")


@dataclass(frozen=True)
class TaskResult:
    """What a finished task leaves behind (in Redis, and in PostgreSQL when configured)."""

    task_id: str
    status: TaskStatus
    handler: str
    result: Any = None
    error: str | None = None
    attempts: int = 0
    enqueued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    worker: str = ""

    def to_json(self) -> str:
        # vars(), not asdict(): asdict deep-copies the handler's result before encoding it.
        return _RESULT_ENCODER.encode(vars(self))

    def to_json_with(self, result_json: str) -> str:
        """`to_json` when `result` is already encoded as `result_json` (`encode_value`)."""
        fields = dict(vars(self))
        del fields["result"]
        return f'{_RESULT_ENCODER.encode(fields)[:-1]},"result":{result_json}}}'

    @classmethod
    def from_json(cls, text: str | bytes) -> TaskResult:
        data = json.loads(text)
        if data.get("status") not in FINAL_STATUSES:
            raise ValueError(f"unknown task status {data.get('status')!r}")
        return cls(**data)


def truncate_error(message: str) -> str:
    """An error message as it is stored: at most MAX_ERROR_CHARS, and valid UTF-8 whatever the
    handler's exception held (a lone surrogate would fail every write to PostgreSQL)."""
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return message if len(message) <= MAX_ERROR_CHARS else message[:MAX_ERROR_CHARS] + "..."


def retry_delay(retries: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter: half fixed, half random, so retries spread out but a
    failing task never comes back instantly. `retries` counts retries already made (0 first)."""
    ceiling = min(cap, base * (2.0 ** min(retries, 30)))
    draw = float((rng or random).random())
    return ceiling / 2 + draw * ceiling / 2


def execution_number(retries: int, deliveries: int) -> int:
    """Which execution of a task this is: runs before this entry (`retries`) plus the
    executions of this entry, this one included (`deliveries`: a delivery counts only when the
    execution started - each run that died with its worker adds one; see `ipc/board.py`)."""
    return retries + max(deliveries, 1)

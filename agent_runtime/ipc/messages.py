"""What a worker and its supervisor tell each other, and the one place it is encoded (pure).

Every message is a frozen dataclass. A frame (one write on the worker's pipe) carries a list of
them: `encode` turns the list into JSON bytes, `decode` turns bytes back into the messages,
dropping any it cannot read, so a bug on one side never breaks the other's loop. On the wire
a frame is a JSON array of messages, each an array `[kind, field, field, ...]` in the
dataclass's field order: no field names (the two sides are always the same version: workers
are forked from the supervisor's code) and one frame per event-loop iteration (`pipe.Outbox`).

Worker -> supervisor:
    Ready          warm-up finished; the worker reads tasks from now on
    BootError      warm-up failed (handler import, init hook, connections); `error` says why
    Heartbeat      every `heartbeat_interval_seconds`: running tasks, metric deltas, DB pool
    TaskStarted    a handler started: for metrics and task ids (deadlines go by the board)
    TaskDone       a task execution ended: its outcome, duration, whether it will run again
    DeadLettered   an entry was dead-lettered without running (`reason`: a metric label)
    Retiring       the worker reached its task budget and drains itself
    Unhealthy      the worker cannot continue safely (a sync handler ignored its timeout)
    MemoryReport   answer to ReportMemory: the source lines whose allocations grew most since
                   warm-up (empty unless tracemalloc is on), and the bytes traced

Supervisor -> worker:
    Drain          stop reading; finish running tasks within `seconds`, hand back the rest
    Pause          stop reading new tasks (memory circuit breaker open)
    Resume         read again
    Adopt          entries of a dead predecessor were moved to you; claim and run them
    ReportMemory   you are recycled for your memory: say what grew (MemoryReport)
"""

from __future__ import annotations

import dataclasses
import json
import operator
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar

# -- records carried inside messages ---------------------------------------------------------


class RunningEntry(NamedTuple):
    """A task a worker runs: its stream entry, task id, handler name and start (Unix time)."""

    entry_id: str
    task_id: str
    handler: str
    started_at: float


EXEMPLAR_LABEL = "trace_id"
"""A histogram observation made in a traced task carries the task's trace id under this label;
the supervisor takes it out of the labels and makes it the observation's exemplar (no series
has a label of that name)."""


class MetricDelta(NamedTuple):
    """A counter increment (`kind` "c") or a histogram observation ("h") made in a worker."""

    kind: str
    name: str
    labels: dict[str, str]
    value: float


class DbPoolSizes(NamedTuple):
    """A worker's asyncpg pool: open, idle and maximum connections."""

    open: int
    idle: int
    max: int


class AllocationGrowth(NamedTuple):
    """Memory allocated at one source line that was still held, grown since warm-up."""

    where: str  # file:line (innermost frame)
    size_bytes: int
    blocks: int  # allocations (memory blocks) more than at warm-up


# -- the messages ----------------------------------------------------------------------------

M = TypeVar("M")
_KINDS: dict[str, type[Any]] = {}


def _message(kind: str) -> Callable[[type[M]], type[M]]:
    """Register a message class under its wire name."""

    def register(cls: type[M]) -> type[M]:
        if kind in _KINDS:
            raise TypeError(f"message kind {kind!r} registered twice")
        cls.KIND = kind  # type: ignore[attr-defined]
        _KINDS[kind] = cls
        return cls

    return register


@_message("ready")
@dataclasses.dataclass(frozen=True, slots=True)
class Ready:
    KIND: ClassVar[str]
    consumer: str


@_message("boot_error")
@dataclasses.dataclass(frozen=True, slots=True)
class BootError:
    KIND: ClassVar[str]
    error: str


@_message("heartbeat")
@dataclasses.dataclass(frozen=True, slots=True)
class Heartbeat:
    """The full list of running tasks (the supervisor resynchronises with it, so a lost
    TaskStarted or TaskDone cannot leave a phantom task), and what accumulated since the last
    one."""

    KIND: ClassVar[str]
    running: tuple[RunningEntry, ...]
    stats: tuple[MetricDelta, ...]
    db: DbPoolSizes | None
    redis_ok: bool
    draining: bool


# The two messages made for every task are not frozen: a frozen dataclass's __init__ sets
# each field through object.__setattr__, five times slower, and these are never mutated
# except by the worker's outbox folding a start into its end (`pipe.Outbox`).
@_message("start")
@dataclasses.dataclass(slots=True)
class TaskStarted:
    KIND: ClassVar[str]
    entry: str
    task: str
    handler: str
    wait: float  # seconds from submission to this start
    at: float  # Unix time
    trace: str = ""  # the task's trace id (32 hex digits) when tracing is on: an exemplar

    @property
    def running(self) -> RunningEntry:
        return RunningEntry(self.entry, self.task, self.handler, self.at)


@_message("done")
@dataclasses.dataclass(slots=True)
class TaskDone:
    KIND: ClassVar[str]
    entry: str
    task: str
    handler: str
    outcome: str  # success | failure | timeout | cancelled
    duration: float
    retried: bool  # the task runs again later
    dead: str | None  # why it was dead-lettered, if it was
    at: float  # Unix time
    trace: str = ""  # the task's trace id when tracing is on: an exemplar
    # The task's queue wait when its TaskStarted was never sent: it started and finished
    # within one frame, and this message stands for both (`pipe.Outbox`).
    wait: float | None = None


@_message("dead")
@dataclasses.dataclass(frozen=True, slots=True)
class DeadLettered:
    KIND: ClassVar[str]
    handler: str
    reason: str


@_message("retiring")
@dataclasses.dataclass(frozen=True, slots=True)
class Retiring:
    KIND: ClassVar[str]
    reason: str


@_message("unhealthy")
@dataclasses.dataclass(frozen=True, slots=True)
class Unhealthy:
    KIND: ClassVar[str]
    reason: str


@_message("memory_report")
@dataclasses.dataclass(frozen=True, slots=True)
class MemoryReport:
    KIND: ClassVar[str]
    top: tuple[AllocationGrowth, ...]
    traced_bytes: int


@_message("report_memory")
@dataclasses.dataclass(frozen=True, slots=True)
class ReportMemory:
    KIND: ClassVar[str]


@_message("drain")
@dataclasses.dataclass(frozen=True, slots=True)
class Drain:
    KIND: ClassVar[str]
    seconds: float


@_message("pause")
@dataclasses.dataclass(frozen=True, slots=True)
class Pause:
    KIND: ClassVar[str]


@_message("resume")
@dataclasses.dataclass(frozen=True, slots=True)
class Resume:
    KIND: ClassVar[str]


@_message("adopt")
@dataclasses.dataclass(frozen=True, slots=True)
class Adopt:
    KIND: ClassVar[str]


WorkerMessage = (Ready | BootError | Heartbeat | TaskStarted | TaskDone | DeadLettered
                 | Retiring | Unhealthy | MemoryReport)
SupervisorMessage = Drain | Pause | Resume | Adopt | ReportMemory
Message = WorkerMessage | SupervisorMessage

TASK_EVENTS: tuple[type[Any], ...] = (TaskStarted, TaskDone, DeadLettered)
"""Messages that only feed metrics: a worker may hold them back a few milliseconds to send
them together (`pipe.Outbox`)."""

# -- encoding --------------------------------------------------------------------------------

Decoder = Callable[[Any], Any]


# The exact-type checks first: these run for every field of every task event, and the common
# case must not pay for the general one.


def _text(value: Any) -> str:
    if type(value) is str:
        return value
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _number(value: Any) -> float:
    if type(value) is float:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {type(value).__name__}")
    return float(value)


def _integer(value: Any) -> int:
    if type(value) is int:
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {type(value).__name__}")
    return value


def _optional(decode: Decoder) -> Decoder:
    return lambda value: None if value is None else decode(value)


def _labels(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise TypeError(f"expected labels, got {type(value).__name__}")
    return {_text(name): _text(label) for name, label in value.items()}


def _record(cls: type[Any], fields: Sequence[Decoder]) -> Decoder:
    def decode(value: Any) -> Any:
        if not isinstance(value, list) or len(value) != len(fields):
            raise ValueError(f"expected {len(fields)} values for {cls.__name__}")
        return cls(*(field(item) for field, item in zip(fields, value, strict=True)))

    return decode


def _rows(decode: Decoder) -> Decoder:
    def decode_all(value: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        return tuple(decode(item) for item in value)

    return decode_all


# One decoder per field type a message may declare (the annotations, as written above).
_DECODERS: dict[str, Decoder] = {
    "str": _text,
    "float": _number,
    "int": _integer,
    "tuple[AllocationGrowth, ...]": _rows(_record(AllocationGrowth,
                                                  (_text, _integer, _integer))),
    "bool": _flag,
    "str | None": _optional(_text),
    "float | None": _optional(_number),
    "tuple[RunningEntry, ...]": _rows(_record(RunningEntry, (_text, _text, _text, _number))),
    "tuple[MetricDelta, ...]": _rows(_record(MetricDelta, (_text, _text, _labels, _number))),
    "DbPoolSizes | None": _optional(_record(DbPoolSizes, (_integer, _integer, _integer))),
}


def _field_decoders(cls: type[Any]) -> tuple[tuple[str, ...], tuple[Decoder, ...]]:
    fields = dataclasses.fields(cls)
    unknown = [f"{cls.__name__}.{f.name}: {f.type}" for f in fields if f.type not in _DECODERS]
    if unknown:  # at import: a message field nobody can decode is a bug in this module
        raise TypeError(f"no decoder for {', '.join(unknown)}")
    return tuple(f.name for f in fields), tuple(_DECODERS[str(f.type)] for f in fields)


_LAYOUT = {kind: _field_decoders(cls) for kind, cls in _KINDS.items()}


def _field_values(names: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """A message's field values as a tuple: one C call for two fields or more (attrgetter
    returns a bare value for one, and needs at least one)."""
    if len(names) > 1:
        return operator.attrgetter(*names)
    return lambda message: tuple(getattr(message, name) for name in names)


_FIELDS = {kind: _field_values(names) for kind, (names, _) in _LAYOUT.items()}


_FRAME_ENCODER = json.JSONEncoder(separators=(",", ":"))  # once: json.dumps makes one per call


def encode(messages: Sequence[Message]) -> bytes:
    """One frame carrying `messages`, in order."""
    rows = [[message.KIND, *_FIELDS[message.KIND](message)] for message in messages]
    return _FRAME_ENCODER.encode(rows).encode("utf-8")


def decode(frame: bytes) -> list[Message]:
    """The messages a frame carries, in order; anything unreadable is left out."""
    try:
        rows = json.loads(frame)
    except ValueError:
        return []
    messages: list[Message] = []
    for row in rows if isinstance(rows, list) else []:
        try:
            messages.append(_decode_one(row))
        except (TypeError, ValueError, KeyError):
            continue
    return messages


def _decode_one(row: Any) -> Message:
    if not isinstance(row, list) or not row:
        raise ValueError("a message is a non-empty array")
    kind, values = row[0], row[1:]
    cls = _KINDS[kind]
    names, decoders = _LAYOUT[kind]
    if len(values) != len(names):
        raise ValueError(f"{kind}: expected {len(names)} values, got {len(values)}")
    # Lengths are equal (checked above); a list, not a generator: one call per message.
    message: Message = cls(*[field(value) for field, value in zip(decoders, values)])  # noqa: B905
    return message

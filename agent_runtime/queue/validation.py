"""Decodes a work-stream entry from any producer, trusting nothing in it (pure).

Used by the worker (`worker/execution.py`) before a task runs. The SDK writes well-formed
entries, but anything can XADD to the stream: another producer's bytes, a payload above the
pool's limit (the SDK checks it, XADD does not), JSON nested deeper than the parser allows, a
reply key outside the pool. Each check turns such an entry into a `MalformedTaskError` whose
message - the dead-letter reason - is plain UTF-8 text whatever the entry held, so the worker
dead-letters the entry at first sight and the tasks read with it are not affected.

The runtime's own Redis clients decode with `surrogateescape` (`TEXT_ERRORS`): bytes that are
not UTF-8 arrive as lone surrogates instead of raising inside the client, and are written back
byte for byte, so the dead-letter copy of such an entry is exact. `bytes_safe` renders them as
`\\xNN` for people and for PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent_runtime.errors import MalformedTaskError
from agent_runtime.queue.envelope import TaskEnvelope

TEXT_ERRORS = "surrogateescape"
# Fields that become parts of Redis keys or metric labels.
KEY_FIELDS = ("id", "handler", "reply", "idem")
MAX_KEY_FIELD_BYTES = 1024
# Everything but the payload and the key fields together (numbers, the last error, extras).
MAX_OTHER_FIELDS_BYTES = 65536
# A dead-letter copy keeps at most this much of a field above the payload limit.
DEAD_LETTER_PREVIEW_BYTES = 1024


@dataclass(frozen=True)
class EntryLimits:
    """What a pool accepts beyond the envelope's own rules."""

    max_payload_bytes: int
    reply_prefix: str  # reply lists must be this pool's: `{prefix}:reply:...`


def raw_bytes(text: str) -> bytes:
    """The bytes Redis holds for a value decoded with `surrogateescape`."""
    try:
        return text.encode("utf-8", TEXT_ERRORS)
    except UnicodeEncodeError:  # a surrogate that did not come from undecodable bytes
        return text.encode("utf-8", "backslashreplace")


def bytes_safe(text: str) -> str:
    """`text` as valid UTF-8 text: undecodable bytes become `\\xNN`."""
    return raw_bytes(text).decode("utf-8", "backslashreplace")


def _field_name(name: str) -> str:
    return f"field {name!r}" if _is_text(name) else f"field name {raw_bytes(name)!r}"


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_text(fields: Mapping[str, str]) -> None:
    for name, value in fields.items():
        if name.isascii() and value.isascii():  # O(1) in CPython; ASCII is valid UTF-8
            continue
        if not _is_text(name):
            raise MalformedTaskError(f"malformed task: {_field_name(name)} is not valid UTF-8")
        raw = raw_bytes(value)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            bad = raw[exc.start:exc.end]
            raise MalformedTaskError(
                f"malformed task: {_field_name(name)} is not valid UTF-8 ({bad!r} at byte "
                f"{exc.start})") from None


def _check_sizes(fields: Mapping[str, str], limits: EntryLimits) -> None:
    other = 0
    for name, value in fields.items():
        # An ASCII string's length is its size in bytes (the common case: no encoding).
        size = len(value) if value.isascii() else len(raw_bytes(value))
        if name in KEY_FIELDS and size > MAX_KEY_FIELD_BYTES:
            raise MalformedTaskError(f"malformed task: field {name!r} is {size} bytes, above "
                                     f"the limit of {MAX_KEY_FIELD_BYTES}")
        if name == "payload" and size > limits.max_payload_bytes:
            raise MalformedTaskError(
                f"malformed task: payload is {size} bytes, above the pool's limit of "
                f"{limits.max_payload_bytes} bytes (written to the stream without the SDK's "
                "check)")
        if name != "payload" and name not in KEY_FIELDS:
            other += size + (len(name) if name.isascii() else len(raw_bytes(name)))
    if other > MAX_OTHER_FIELDS_BYTES:
        raise MalformedTaskError(f"malformed task: fields other than the payload total {other} "
                                 f"bytes, above the limit of {MAX_OTHER_FIELDS_BYTES}")


def decode_entry(fields: Mapping[str, str], limits: EntryLimits) -> TaskEnvelope:
    """The entry's envelope; raises MalformedTaskError (a bytes-safe reason) for anything a
    worker must not run."""
    _check_text(fields)
    _check_sizes(fields, limits)
    envelope = TaskEnvelope.from_fields(fields)
    if envelope.reply_to and not envelope.reply_to.startswith(limits.reply_prefix):
        raise MalformedTaskError(
            f"malformed task: reply key {envelope.reply_to!r} is not one of this pool's reply "
            f"lists ({limits.reply_prefix}...)")
    return envelope


def clean_task_id(fields: Mapping[str, str]) -> str:
    """The task id of a malformed entry when it is usable as one ("" otherwise): a result is
    recorded under it, so the task's client learns of the failure."""
    task_id = fields.get("id", "")
    if not _is_text(task_id) or len(task_id.encode("utf-8")) > MAX_KEY_FIELD_BYTES:
        return ""
    return task_id


def dead_letter_copy(fields: Mapping[str, str], limits: EntryLimits) -> dict[str, str]:
    """The fields to keep in the dead-letter stream: the entry as it was, except that a value
    above the payload limit keeps only its first KiB (listed in `truncated`), so the
    dead-letter stream cannot grow by whatever a producer wrote."""
    copy: dict[str, str] = {}
    cut = []
    for name, value in fields.items():
        raw, raw_name = raw_bytes(value), raw_bytes(name)
        if len(raw_name) > MAX_KEY_FIELD_BYTES:
            name = _preview(raw_name)
            cut.append(bytes_safe(name))
        if len(raw) > limits.max_payload_bytes:
            copy[name] = _preview(raw)
            cut.append(bytes_safe(name))
        else:
            copy[name] = value
    if cut:
        copy["truncated"] = ",".join(cut)
    return copy


def _preview(raw: bytes) -> str:
    return raw[:DEAD_LETTER_PREVIEW_BYTES].decode("utf-8", TEXT_ERRORS)

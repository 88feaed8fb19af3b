"""Decoding stream entries from any producer (pure): every way an entry can be bad is caught
with a reason that is valid UTF-8 text, and the dead-letter copy stays bounded."""

from __future__ import annotations

import json

import pytest

from agent_runtime.errors import MalformedTaskError
from agent_runtime.queue.validation import (
    EntryLimits,
    bytes_safe,
    clean_task_id,
    dead_letter_copy,
    decode_entry,
    raw_bytes,
)

LIMITS = EntryLimits(max_payload_bytes=100, reply_prefix="agentpool:{p}:reply:")


def as_redis_decodes(raw: dict[bytes, bytes]) -> dict[str, str]:
    """What the runtime's clients (`surrogateescape`) hand the worker for these bytes."""
    return {k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape")
            for k, v in raw.items()}


def good(**changes: bytes) -> dict[str, str]:
    raw = {b"id": b"t1", b"handler": b"default", b"payload": b'{"a": 1}',
           b"enqueued_at": b"1700000000.5", **{k.encode(): v for k, v in changes.items()}}
    return as_redis_decodes(raw)


def reason(fields: dict[str, str]) -> str:
    with pytest.raises(MalformedTaskError) as caught:
        decode_entry(fields, LIMITS)
    text = str(caught.value)
    text.encode("utf-8")  # always storable text
    return text


def test_a_good_entry_decodes() -> None:
    envelope = decode_entry(good(reply=b"agentpool:{p}:reply:abc"), LIMITS)
    assert (envelope.task_id, envelope.payload, envelope.reply_to) == (
        "t1", {"a": 1}, "agentpool:{p}:reply:abc")


@pytest.mark.parametrize(("fields", "expected"), [
    (good(payload=b'"caf\xe9"'), "field 'payload' is not valid UTF-8 (b'\\xe9' at byte 4)"),
    (good(id=b"\xff"), "field 'id' is not valid UTF-8"),
    (as_redis_decodes({b"\xfe": b"x", b"id": b"t"}), "field name b'\\xfe' is not valid UTF-8"),
    (good(payload=b"1" * 101), "payload is 101 bytes, above the pool's limit of 100 bytes"),
    # Limits count bytes, not characters: 52 characters of valid UTF-8 are 102 bytes.
    (good(payload='"{}"'.format("é" * 50).encode()),
     "payload is 102 bytes, above the pool's limit of 100 bytes"),
    (good(id="é".encode() * 513), "field 'id' is 1026 bytes, above the limit of 1024"),
    (good(id=b"i" * 1025), "field 'id' is 1025 bytes, above the limit of 1024"),
    (good(junk=b"j" * 70_000), "fields other than the payload total 70027 bytes"),
    (good(payload=b"[" * 60 + b"]" * 40), "payload is not JSON"),
    (good(enqueued_at=b"nan"), "bad number (enqueued_at nan)"),
    (good(retries=b"-1"), "bad number (retries -1 < 0)"),
    (good(reply=b"elsewhere"), "reply key 'elsewhere' is not one of this pool's reply lists"),
])
def test_bad_entries_say_why(fields: dict[str, str], expected: str) -> None:
    assert expected in reason(fields)


def test_json_nested_beyond_the_parser_is_malformed_not_a_crash() -> None:
    deep = good(payload=b"[" * 50 + b"]" * 50)
    decode_entry(deep, LIMITS)
    limits = EntryLimits(max_payload_bytes=100_000, reply_prefix="r:")
    with pytest.raises(MalformedTaskError, match="nested too deeply"):
        decode_entry(good(payload=b"[" * 20_000 + b"]" * 20_000), limits)


def test_the_task_id_of_a_bad_entry_is_used_only_when_it_is_clean_text() -> None:
    assert clean_task_id(good(payload=b"\xff")) == "t1"
    assert clean_task_id(good(id=b"t\xff")) == ""
    assert clean_task_id(good(id=b"i" * 2000)) == ""


def test_the_dead_letter_copy_keeps_bytes_exactly_and_cuts_what_is_oversized() -> None:
    limits = EntryLimits(max_payload_bytes=1000, reply_prefix="r:")
    copy = dead_letter_copy(good(payload=b"\xff" * 300, note=b"\xfe"), limits)
    assert raw_bytes(copy["note"]) == b"\xfe"
    assert raw_bytes(copy["payload"]) == b"\xff" * 300  # below the 1 KiB preview: whole
    big = dead_letter_copy(good(payload=b"x" * 5000), LIMITS)
    assert big["payload"] == "x" * 1024
    assert big["truncated"] == "payload"
    assert "truncated" not in dead_letter_copy(good(), LIMITS)


def test_bytes_safe_shows_undecodable_bytes_as_escapes() -> None:
    assert bytes_safe(b"caf\xe9".decode("utf-8", "surrogateescape")) == "caf\\xe9"
    assert bytes_safe("caf\u00e9") == "caf\u00e9"
    assert json.dumps(bytes_safe("\udfff"), ensure_ascii=False).encode("utf-8")

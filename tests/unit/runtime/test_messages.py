"""The task envelope, results and the retry policy (pure)."""

from __future__ import annotations

import random

import pytest

from agent_runtime.errors import InvalidPayloadError, MalformedTaskError, PayloadTooLargeError
from agent_runtime.queue.envelope import (
    TaskEnvelope,
    TaskResult,
    encode_payload,
    encode_value,
    execution_number,
    peek_task_id,
    retry_delay,
)


def test_envelope_round_trips_through_stream_fields() -> None:
    envelope = TaskEnvelope(task_id="t1", handler="default", payload_json='{"a":1}',
                            enqueued_at=1700000000.25, retries=2, error="boom",
                            reply_to="r", idempotency_key="k")
    raw = {k.encode(): v.encode() for k, v in envelope.to_fields().items()}  # as Redis has it
    assert TaskEnvelope.from_fields(raw) == envelope
    assert envelope.payload == {"a": 1}


def test_optional_fields_are_left_out_when_empty() -> None:
    fields = TaskEnvelope("t", "default", "{}", 1.0).to_fields()
    assert set(fields) == {"id", "handler", "payload", "enqueued_at", "retries"}


@pytest.mark.parametrize(("fields", "message"), [
    ({"handler": "h", "payload": "{}", "enqueued_at": "1"}, "missing field\\(s\\) id"),
    ({"id": "t", "handler": "h", "enqueued_at": "1"}, "missing field\\(s\\) payload"),
    ({"id": "t", "handler": "h", "payload": "{no", "enqueued_at": "1"}, "payload is not JSON"),
    ({"id": "t", "handler": "h", "payload": "{}", "enqueued_at": "soon"}, "bad number"),
    ({"id": "t", "handler": "h", "payload": "{}", "enqueued_at": "1", "retries": "x"},
     "bad number"),
])
def test_malformed_entries_say_what_is_wrong(fields: dict[str, str], message: str) -> None:
    with pytest.raises(MalformedTaskError, match=message):
        TaskEnvelope.from_fields(fields)


def test_task_id_of_a_malformed_entry_is_still_known() -> None:
    assert peek_task_id({b"id": b"t9", b"junk": b"1"}) == "t9"
    assert peek_task_id({"junk": "1"}) == ""


def test_retry_keeps_the_task_and_carries_every_execution_so_far() -> None:
    retried = TaskEnvelope("t", "h", "{}", 1.0).for_retry("E" * 10_000, executions=1)
    assert (retried.task_id, retried.retries) == ("t", 1)
    assert len(retried.error) == 4000
    # Two of its three executions died with their workers: the next entry starts at 4.
    again = TaskEnvelope("t", "h", "{}", 1.0).for_retry("boom", executions=3)
    assert execution_number(again.retries, 1) == 4
    assert again.for_retry("x\udcff", executions=4).error == "x\\udcff"  # storable text


def test_payload_limit_is_exact_and_the_error_is_clear() -> None:
    exact = '{"x":"yyyyyyyyyy"}'
    assert encode_payload({"x": "y" * 10}, limit=len(exact)) == exact
    with pytest.raises(PayloadTooLargeError, match="19 bytes encoded, above the pool's limit"):
        encode_payload({"x": "y" * 11}, limit=18)
    # Multi-byte characters count as bytes, not characters.
    with pytest.raises(PayloadTooLargeError):
        encode_payload("é" * 10, limit=12)


@pytest.mark.parametrize("payload", [{1, 2}, float("nan"), object()])
def test_non_json_payloads_are_refused(payload: object) -> None:
    with pytest.raises(InvalidPayloadError):
        encode_payload(payload, limit=1000)


def test_backoff_grows_exponentially_within_the_cap() -> None:
    rng = random.Random(1)
    for retries in range(12):
        ceiling = min(30.0, 1.0 * 2 ** retries)
        delay = retry_delay(retries, base=1.0, cap=30.0, rng=rng)
        assert ceiling / 2 <= delay <= ceiling
    assert retry_delay(500, base=1.0, cap=30.0) <= 30.0  # no overflow


def test_execution_number_counts_earlier_runs_and_started_deliveries() -> None:
    assert execution_number(0, 1) == 1
    assert execution_number(2, 1) == 3  # two earlier runs (on earlier entries)
    assert execution_number(0, 3) == 3  # two started executions of this entry died
    assert execution_number(0, 0) == 1


def test_result_round_trips_and_rejects_unknown_status() -> None:
    result = TaskResult("t", "succeeded", "default", result={"a": [1]}, attempts=1)
    assert TaskResult.from_json(result.to_json()) == result
    # The worker's path: the handler's value encoded once, then spliced in.
    assert TaskResult.from_json(result.to_json_with(encode_value(result.result))) == result
    with pytest.raises(TypeError):
        encode_value({"a": {1, 2}})
    with pytest.raises(ValueError, match="unknown task status"):
        TaskResult.from_json('{"task_id": "t", "status": "running", "handler": "h"}')

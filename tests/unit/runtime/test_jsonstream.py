"""Incremental JSON parsing of large responses."""

from __future__ import annotations

import json

import pytest

from agent_runtime.sdk.jsonstream import JsonStreamParser

ITEMS = [{"id": i, "text": "héllo wörld ✓", "nested": [1, 2.5, None, True]} for i in range(20)]


def _parse_in_chunks(data: bytes, size: int) -> list[object]:
    parser = JsonStreamParser()
    items: list[object] = []
    for start in range(0, len(data), size):
        items.extend(parser.feed(data[start:start + size]))
    items.extend(parser.close())
    return items


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 100_000])
def test_array_items_come_out_whatever_the_chunking(size: int) -> None:
    data = json.dumps(ITEMS, ensure_ascii=False).encode()
    assert _parse_in_chunks(data, size) == ITEMS


@pytest.mark.parametrize("size", [1, 5, 100_000])
def test_newline_delimited_json(size: int) -> None:
    data = "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in ITEMS).encode()
    assert _parse_in_chunks(data, size) == ITEMS


def test_items_arrive_before_the_response_ends() -> None:
    parser = JsonStreamParser()
    assert parser.feed(b'[{"a": 1}, {"b"') == [{"a": 1}]
    assert parser.feed(b': 2}]') == [{"b": 2}]
    parser.close()


def test_numbers_at_a_chunk_boundary_are_not_cut() -> None:
    parser = JsonStreamParser()
    assert parser.feed(b"[12") == []
    assert parser.feed(b"34, 5]") == [1234, 5]
    ndjson = JsonStreamParser()
    assert ndjson.feed(b"1\n2") == [1]
    assert ndjson.close() == [2]  # the last value needs no trailing newline


@pytest.mark.parametrize("data", [b'[{"a": 1}, {"b"', b'{"a": ', b"[1, 2"])
def test_truncated_input_is_an_error(data: bytes) -> None:
    parser = JsonStreamParser()
    parser.feed(data)
    with pytest.raises(ValueError, match="ended in the middle"):
        parser.close()


def test_empty_array() -> None:
    assert _parse_in_chunks(b"[ ]", 1) == []

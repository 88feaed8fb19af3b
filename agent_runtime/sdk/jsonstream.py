"""Incremental JSON parsing for large HTTP responses (pure; used by `http.py`).

Yields the items of a top-level JSON array, or the values of newline-delimited JSON, as bytes
arrive, so a worker never holds a whole multi-megabyte response (or its parsed form) in memory.
"""

from __future__ import annotations

import json
from typing import Any

_WHITESPACE = " \t\r\n"


class JsonStreamParser:
    """Feed chunks, get complete values back. Works for `[v, v, ...]` and for `v\\nv\\n...`."""

    def __init__(self) -> None:
        self._decoder = json.JSONDecoder()
        self._buffer = ""
        self._pending = b""  # an incomplete UTF-8 sequence split across chunks
        self._in_array: bool | None = None  # None until the first non-blank character
        self._done = False
        self._at_end = False

    def feed(self, chunk: bytes) -> list[Any]:
        data = self._pending + chunk
        try:
            text = data.decode("utf-8")
            self._pending = b""
        except UnicodeDecodeError as exc:
            if exc.start < len(data) - 3:
                raise ValueError(f"response is not UTF-8 at byte {exc.start}") from exc
            text, self._pending = data[: exc.start].decode("utf-8"), data[exc.start:]
        self._buffer += text
        return self._drain()

    def close(self) -> list[Any]:
        """Call at end of input: returns a last value held back (a number that might have
        continued), raises ValueError if a value was cut off."""
        self._at_end = True
        items = self._drain()
        rest = self._buffer.strip(_WHITESPACE)
        if self._pending or rest or (self._in_array and not self._done):
            raise ValueError("JSON stream ended in the middle of a value")
        return items

    def _drain(self) -> list[Any]:
        items: list[Any] = []
        pos = 0
        buf = self._buffer
        while True:
            pos = _skip(buf, pos, _WHITESPACE)
            if pos >= len(buf) or self._done:
                break
            if self._in_array is None:
                self._in_array = buf[pos] == "["
                if self._in_array:
                    pos += 1
                    continue
            if self._in_array:
                pos = _skip(buf, pos, _WHITESPACE + ",")
                if pos < len(buf) and buf[pos] == "]":
                    self._done = True
                    pos += 1
                    break
            try:
                value, end = self._decoder.raw_decode(buf, pos)
            except json.JSONDecodeError:
                break  # incomplete: wait for more input
            if end == len(buf) and not self._at_end and isinstance(value, int | float):
                break  # a number at the very end may continue in the next chunk
            items.append(value)
            pos = end
        self._buffer = buf[pos:]
        return items


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos

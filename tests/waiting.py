"""Polling helpers shared by the tests: wait for an observable outcome, never a fixed sleep."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

T = TypeVar("T")


def eventually(check: Callable[[], T | None], timeout: float = 60, interval: float = 0.5) -> T:
    """Poll until `check` returns something truthy; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    value = check()
    while not value:
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s; last value: {value!r}")
        time.sleep(interval)
        value = check()
    return value  # truthy, so not None


async def eventually_async(
    check: Callable[[], Awaitable[T | None]], within: float = 60, interval: float = 0.2
) -> T:
    """The asyncio twin of `eventually` (`within` seconds)."""
    deadline = time.monotonic() + within
    value = await check()
    while not value:
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {within}s; last value: {value!r}")
        await asyncio.sleep(interval)
        value = await check()
    return value

"""Structured (JSON lines) logging for the operator process: the runtime's format
(`agent_runtime.logs`), so every process of the product writes the same fields and masks
credentials in URLs the same way."""

from __future__ import annotations

from agent_runtime.logs import JsonFormatter as JsonFormatter
from agent_runtime.logs import configure as _configure


def configure(level: str) -> None:
    _configure(level)

"""Structured logs: one JSON object per line, for the runtime's processes and the operator.

Every line has `time`, `level`, `logger` and `message`; context passed as `extra=` (task id,
handler, attempt, ...) becomes top-level fields, so a log pipeline can filter on them without
parsing messages; `exception` holds a traceback. `process` says which process of a pod wrote
the line (`supervisor`, `worker-0`, ...; the operator's lines have none).

Secrets never reach a line: credentials in URLs (`scheme://user:password@host`) are masked in
messages, fields and tracebacks, whatever code logged them. Payloads are never logged by the
runtime (a task's line carries its id, not its data).

Pure: the standard library only, so the operator and every runtime process can load it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}
# `scheme://user:password@` and `scheme://:password@`: keep the user, mask the password.
_URL_CREDENTIALS = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*):[^\s/@]+@")
MASK = "***"
# Third-party request logs are noise at INFO; keep their warnings.
NOISY_LOGGERS = ("httpx", "httpx2", "aiohttp.access")


def redact(text: str) -> str:
    """`text` with the passwords of any URLs in it masked."""
    if "@" not in text:  # the common case, ten times cheaper than the substitution
        return text
    return _URL_CREDENTIALS.sub(rf"\1:{MASK}@", text)


class JsonFormatter(logging.Formatter):
    """One JSON object per record; `static` fields (e.g. the process) are on every line."""

    def __init__(self, static: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact(record.getMessage()),
            **self._static,
        }
        # kopf and our code attach context (object names, task ids) as extra attributes.
        for key, value in vars(record).items():
            if key in _STANDARD or key in entry:
                continue
            if isinstance(value, str):
                entry[key] = redact(value)
            elif isinstance(value, int | float | bool) or value is None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        elif record.stack_info:
            entry["stack"] = redact(self.formatStack(record.stack_info))
        return json.dumps(entry, default=str)


def configure(level: str, **static: Any) -> None:
    """Send every logger's records to stderr as JSON lines, with `static` fields on each."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(static))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)

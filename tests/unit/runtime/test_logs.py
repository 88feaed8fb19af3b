"""The JSON log format every process shares (`agent_runtime.logs`)."""

from __future__ import annotations

import json
import logging
import sys

from agent_runtime.logs import JsonFormatter, redact


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    entry = logging.LogRecord("agent_runtime.test", logging.WARNING, __file__, 1, message, args,
                              None)
    for key, value in extra.items():
        setattr(entry, key, value)
    return entry


def test_a_line_has_the_fixed_fields_the_static_ones_and_the_scalar_extras() -> None:
    line = json.loads(JsonFormatter({"process": "worker-1"}).format(
        record("task %s done", "t1", task_id="t1", attempt=2, duration_seconds=0.5,
               error=None, ignored=object())))
    assert line["message"] == "task t1 done"
    assert (line["level"], line["logger"], line["process"]) == (
        "warning", "agent_runtime.test", "worker-1")
    assert (line["task_id"], line["attempt"], line["duration_seconds"]) == ("t1", 2, 0.5)
    assert line["error"] is None
    assert "ignored" not in line


def test_passwords_in_urls_are_masked_in_messages_fields_and_tracebacks() -> None:
    assert redact("redis://:pw@h:6379/0 and postgresql://u:p%40ss@db/x") == \
        "redis://:***@h:6379/0 and postgresql://u:***@db/x"
    assert redact("redis://h:6379 user@example.com") == "redis://h:6379 user@example.com"
    try:
        raise RuntimeError("cannot reach rediss://default:s3cret@cache:6380")
    except RuntimeError:
        entry = record("failed: %s", "amqp://guest:guest@mq", url="redis://:s3cret@x")
        entry.exc_info = sys.exc_info()
    text = JsonFormatter().format(entry)
    assert "s3cret" not in text
    assert ":guest@" not in text
    line = json.loads(text)
    assert "rediss://default:***@cache:6380" in line["exception"]
    assert line["url"] == "redis://:***@x"

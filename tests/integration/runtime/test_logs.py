"""What a real supervisor and its workers write to stderr: JSON lines only, one per task
outcome with its id, handler, attempt, duration and outcome; a failing handler's traceback;
never a payload or a password."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent_runtime.sdk.client import TaskClient
from tests.plugins.runtime import RunningSupervisor, RuntimePool, StartSupervisor
from tests.waiting import eventually

pytestmark = [pytest.mark.services, pytest.mark.slow]


def json_lines(supervisor: RunningSupervisor) -> list[dict[str, Any]]:
    """Every line of the pod's output, each parsed as JSON (a line that is not fails)."""
    lines = [line for line in supervisor.log().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def outcomes(supervisor: RunningSupervisor) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for line in json_lines(supervisor):
        if line.get("event") == "task_outcome":
            found.setdefault(line["task_id"], []).append(line)
    return found


async def test_every_line_is_json_with_one_outcome_line_per_execution(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor,
        task_client: TaskClient) -> None:
    runtime_pool.update(max_deliveries=2, retry_backoff_seconds=0.1)
    supervisor = start_supervisor(runtime_pool)
    secret_payload = {"n": 1, "token": "payload-secret-value"}
    ok = await task_client.submit(secret_payload)
    failing = await task_client.submit(
        {"n": "postgresql://app:hunter2@db.internal/app"}, handler="fail")
    results = await task_client.wait_many([ok, failing], max_wait=30)
    assert results[ok].status == "succeeded"
    assert results[failing].status == "failed"

    def both_attempts_logged() -> dict[str, list[dict[str, Any]]] | None:
        found = outcomes(supervisor)
        return found if len(found.get(failing, [])) == 2 else None

    lines = eventually(both_attempts_logged, timeout=10)
    [success] = lines[ok]
    assert success["level"] == "info"
    assert success["handler"] == "default"
    assert success["attempt"] == 1
    assert success["outcome"] == "success"
    assert success["status"] == "succeeded"
    assert 0 < success["duration_seconds"] < 10
    assert success["process"].startswith("worker-")
    assert "exception" not in success

    first, last = sorted(lines[failing], key=lambda line: line["attempt"])
    assert (first["attempt"], first["status"]) == (1, "retrying")
    assert (last["attempt"], last["status"]) == (2, "failed")
    assert last["dead_letter_reason"] == "retries_exhausted"
    for line in (first, last):
        assert line["level"] == "warning"
        assert line["handler"] == "fail"
        assert line["outcome"] == "failure"
        # The traceback reaches the handler's own line, whose password is masked.
        assert "Traceback (most recent call last)" in line["exception"]
        assert 'handlers.py", line' in line["exception"]
        assert "in fail" in line["exception"]
        assert "postgresql://app:***@db.internal/app" in line["exception"]

    text = supervisor.log()
    assert "hunter2" not in text
    assert "payload-secret-value" not in text
    # The supervisor's own lines are JSON too, with who wrote them.
    assert any(line.get("process") == "supervisor" and "metrics on" in line["message"]
               for line in json_lines(supervisor))

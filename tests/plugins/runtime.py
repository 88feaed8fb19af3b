"""pytest fixtures for the agent runtime: pools with their own keys, real supervisor processes.

`runtime_pool` gives each test a fresh pool name (so its Redis keys are its own on the shared
test Redis) and writes its config file. `start_supervisor` runs `agentpool-runtime` as a real
subprocess (its own session, so the whole process tree can be stopped) and waits until
`/readyz` says ready; every supervisor a test started is stopped when the test ends.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis

from agent_runtime.config import RuntimeConfig
from agent_runtime.sdk.client import TaskClient

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_HANDLERS = "tests.integration.runtime.handlers"


@dataclass
class RuntimePool:
    """A pool's config for one test, written to `path`; `update()` rewrites it."""

    path: Path
    config: RuntimeConfig

    def update(self, **changes: Any) -> RuntimeConfig:
        data = {**self.config.model_dump(mode="json"), **changes}
        self.config = RuntimeConfig.model_validate(data)
        self.path.write_text(json.dumps(self.config.model_dump(mode="json")))
        return self.config


@dataclass
class RunningSupervisor:
    process: subprocess.Popen[bytes]
    log_path: Path
    port: int
    exit_code: int | None = None
    _log_offset: int = field(default=0)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(self.url(path), timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample on /metrics, keyed by (name, sorted labels)."""
        status, text = self.get("/metrics")
        assert status == 200, text
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        total = 0.0
        for (sample_name, sample_labels), value in self.metrics().items():
            if sample_name == name and all(dict(sample_labels).get(k) == v
                                           for k, v in labels.items()):
                total += value
        return total

    def metric_reaching(self, name: str, target: float, within: float = 10.0,
                        **labels: str) -> float:
        """`metric` once it reaches `target`, or its value after `within` seconds.

        Workers report counters over the pipe after the Redis write a test waits on, so a read
        right after a result can be one short; compare the returned value exactly.
        """
        deadline = time.monotonic() + within
        value = self.metric(name, **labels)
        while value < target and time.monotonic() < deadline:
            time.sleep(0.1)
            value = self.metric(name, **labels)
        return value

    def worker_pids(self) -> list[int]:
        """Worker processes: the children of the multiprocessing fork server."""
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        pids: list[int] = []
        for child in children:
            try:
                if "multiprocessing.forkserver" in " ".join(child.cmdline()):
                    pids.extend(p.pid for p in child.children()
                                if "resource_tracker" not in " ".join(p.cmdline()))
            except psutil.Error:
                continue
        return pids

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, wait: float = 60.0) -> int:
        """SIGTERM (drain) and wait for the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        self.exit_code = self.process.wait(timeout=wait)
        return self.exit_code

    def kill_tree(self) -> None:
        """Last resort at teardown: SIGKILL the supervisor's whole session."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


class StartSupervisor(Protocol):
    def __call__(self, pool: RuntimePool, *, database_url: str | None = None,
                 ready: bool = True, wrapper: Sequence[str] = (),
                 redis_url: str | None = None) -> RunningSupervisor: ...


def _wait_for_port(log_path: Path, process: subprocess.Popen[bytes], within: float) -> int:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        match = re.search(r"metrics on [^:\s]+:(\d+)", log_path.read_text(errors="replace"))
        if match:
            return int(match.group(1))
        if process.poll() is not None:
            break
        time.sleep(0.05)
    pytest.fail(f"supervisor did not start:\n{log_path.read_text(errors='replace')[-3000:]}")


def wait_ready(supervisor: RunningSupervisor, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    status, body = 0, ""
    while time.monotonic() < deadline:
        status, body = supervisor.get("/readyz")
        if status == 200:
            return
        if supervisor.process.poll() is not None:
            break
        time.sleep(0.1)
    pytest.fail(f"supervisor not ready ({status} {body.strip()}):\n{supervisor.log()[-3000:]}")


@pytest.fixture
def runtime_pool(tmp_path: Path) -> Iterator[RuntimePool]:
    """A fresh pool (unique name, hence unique Redis keys) running the test handlers."""
    config = RuntimeConfig(
        pool=f"t-{uuid.uuid4().hex[:10]}",
        handler=f"{TEST_HANDLERS}:record", init_hook=f"{TEST_HANDLERS}:init",
        handlers={name: f"{TEST_HANDLERS}:{name}"
                  for name in ("hang", "leak", "fail", "permanent", "sleepy", "sync_sleep",
                               "orphan", "segfault", "flaky", "block_at_once",
                               "crash_twice_then_fail", "exclusive", "sync_exclusive",
                               "budgeted", "traced", "introspect", "burn", "unstorable")},
        workers=2, concurrency=4, task_timeout_seconds=10, hang_grace_seconds=1,
        heartbeat_interval_seconds=0.5, lease_seconds=10, retry_backoff_seconds=0.2,
        retry_backoff_max_seconds=1, drain_grace_seconds=5, metrics_host="127.0.0.1",
        metrics_port=0, log_level="INFO")
    pool = RuntimePool(tmp_path / "runtime.json", config)
    pool.update()
    yield pool
    # What the test handlers left on disk for this pool (see `handlers.runs_dir`).
    shutil.rmtree(Path(tempfile.gettempdir()) / "agentpool-test-runs" / pool.config.pool,
                  ignore_errors=True)


@pytest.fixture
def start_supervisor(redis_url: str, tmp_path: Path) -> Iterator[StartSupervisor]:
    started: list[RunningSupervisor] = []
    session_redis_url = redis_url

    def start(pool: RuntimePool, *, database_url: str | None = None, ready: bool = True,
              wrapper: Sequence[str] = (), redis_url: str | None = None) -> RunningSupervisor:
        log_path = tmp_path / f"supervisor-{len(started)}.log"
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("AGENTPOOL_")}
        env.update({"AGENTPOOL_CONFIG": str(pool.path),
                    "AGENTPOOL_REDIS_URL": redis_url or session_redis_url,
                    "AGENTPOOL_POD_NAME": f"pod{len(started)}",
                    "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"})
        if database_url:
            env["AGENTPOOL_DATABASE_URL"] = database_url
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [*wrapper, sys.executable, "-m", "agent_runtime.cli", "run"], cwd=REPO_ROOT,
                env=env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        supervisor = RunningSupervisor(process, log_path, 0)
        started.append(supervisor)
        supervisor.port = _wait_for_port(log_path, process, 30)
        if ready:
            wait_ready(supervisor)
        return supervisor

    yield start
    for supervisor in started:
        if supervisor.process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                supervisor.terminate(wait=30)
        # Whatever is left of the session (workers, the fork server) goes too.
        supervisor.kill_tree()


@pytest.fixture
async def task_client(runtime_pool: RuntimePool, redis_url: str) -> AsyncIterator[TaskClient]:
    """An SDK client for the test's pool (Redis only)."""
    client = await TaskClient.connect(redis_url, runtime_pool.config)
    yield client
    await client.close()


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()

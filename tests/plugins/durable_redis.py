"""A Redis server of the test's own with an append-only file fsynced on every write, for the
tests that kill and restart Redis (the shared session Redis must stay up for every other test).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentpool_dev.procs import free_port
from tests.waiting import eventually


class DurableRedis:
    """A Redis server of the test's own with an append-only file fsynced on every write."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server", path=os.pathsep.join(
            [os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"]))
        if binary is None:
            pytest.fail("redis-server is not installed (make services-install)")
        self._binary = binary
        self._dir = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        config = self._dir / "redis.conf"
        config.write_text("\n".join([
            "bind 127.0.0.1", f"port {self.port}", f"dir {self._dir}", 'save ""',
            "appendonly yes", "appendfsync always", "daemonize no", 'logfile ""']) + "\n")
        with (self._dir / "redis.log").open("ab") as log:
            self._process = subprocess.Popen([self._binary, str(config)], stdout=log,
                                             stderr=subprocess.STDOUT)
        eventually(self._answers, timeout=30, interval=0.05)

    def _answers(self) -> bool:
        probe = subprocess.run(["redis-cli", "-p", str(self.port), "ping"],
                               capture_output=True, text=True, check=False)
        return probe.stdout.strip() == "PONG"

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait(timeout=30)

    def restart(self) -> None:
        """kill -9, then start again from the append-only file."""
        self.kill()
        self.start()


@pytest.fixture
def durable_redis() -> Iterator[DurableRedis]:
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else None  # fsync is cheap there
    with tempfile.TemporaryDirectory(prefix="agentpool-chaos-", dir=base) as directory:
        server = DurableRedis(Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.kill()



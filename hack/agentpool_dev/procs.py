"""Start detached processes, wait for them to answer, and stop them without leaks.

Shared by the cluster orchestrator. Every process runs in its own session (so a terminal's
Ctrl-C or the end of the starting command does not kill it) and is recorded by pid together
with its executable, so `stop` never signals an unrelated process that reused the pid.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path


class StartupError(RuntimeError):
    """A component did not become ready; the message carries its log tail."""


# Ports are picked below the kernel's ephemeral range: a port picked there can be taken by any
# outgoing connection (etcd's, the API server's, pip's) before the service that wants it binds.
LOWEST_PORT = 20000


def ephemeral_port_floor() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768  # Linux's default
    return max(low, LOWEST_PORT + 1000)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now and that no outgoing connection gets."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct ports like `free_port`'s."""
    rng = random.SystemRandom()
    ceiling = ephemeral_port_floor()
    found: list[int] = []
    for _ in range(1000):
        port = rng.randrange(LOWEST_PORT, ceiling)
        if port in found:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == count:
            return found
    raise RuntimeError(f"no {count} free ports between {LOWEST_PORT} and {ceiling}")


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


@dataclass(frozen=True)
class Proc:
    """A started component: its name, pid, executable and log file."""

    name: str
    pid: int
    exe: str
    log: Path
    started: int
    """The process's start time in clock ticks since boot: with the pid, its identity."""

    def alive(self) -> bool:
        found = _stat(self.pid)
        # A zombie has exited; another start time means the pid was reused.
        return found is not None and found[0] != "Z" and found[1] == self.started


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time) of a process, from /proc/<pid>/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return fields[0], int(fields[19])


def start(name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None) -> Proc:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    found = _stat(popen.pid)
    return Proc(name=name, pid=popen.pid, exe=argv[0], log=log,
                started=found[1] if found else -1)


def _reap(pid: int) -> None:
    # Only our own children can be reaped; for processes started by an earlier command the
    # call fails harmlessly and init reaps them.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop(procs: Sequence[Proc], timeout: float = 15.0) -> None:
    """SIGTERM each process group, then SIGKILL whatever is still alive after `timeout`."""
    for proc in procs:
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            _reap(proc.pid)
        if not any(p.alive() for p in procs):
            return
        time.sleep(0.1)
    for proc in procs:
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    for proc in procs:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(proc.pid, 0)


def save(path: Path, procs: Sequence[Proc]) -> None:
    data = [{"name": p.name, "pid": p.pid, "exe": p.exe, "log": str(p.log),
             "started": p.started} for p in procs]
    path.write_text(json.dumps(data, indent=2))


def load(path: Path) -> list[Proc]:
    if not path.exists():
        return []
    return [
        Proc(name=d["name"], pid=int(d["pid"]), exe=d["exe"], log=Path(d["log"]),
             started=int(d.get("started", -1)))
        for d in json.loads(path.read_text())
    ]


def wait_until(
    what: str, check: Callable[[], bool], timeout: float, proc: Proc | None = None
) -> None:
    """Poll `check` until it is true; fail early with the log tail if `proc` dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and not proc.alive():
            raise StartupError(
                f"{proc.name} exited while waiting for {what}:\n{log_tail(proc.log)}"
            )
        time.sleep(0.2)
    tail = f":\n{log_tail(proc.log)}" if proc else ""
    raise StartupError(f"timed out after {timeout:.0f}s waiting for {what}{tail}")


def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as response:
            status: int = response.status
            return status == 200
    except (urllib.error.URLError, OSError):
        return False


def module_env(kubeconfig: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for running one of the repo's Python modules against a cluster."""
    from agentpool_dev.paths import REPO_ROOT  # local: paths imports nothing from here

    env = dict(os.environ if base is None else base)
    env["KUBECONFIG"] = str(kubeconfig)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "operator"), str(REPO_ROOT)])
    return env


def spawn_module(module: str, args: Sequence[str], env: dict[str, str], log: Path
                 ) -> subprocess.Popen[bytes]:
    """`python -m module args...` in its own session, output appended to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", module, *args], stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def terminate(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """SIGTERM, as the kubelet would, then SIGKILL if it has not exited within `timeout`."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()

"""A real node's cgroup subtree: created before its kubelet starts, emptied and removed on down.

Each real node gets a cgroup of its own (`/agentpool-<k>-<i>`) in every mounted hierarchy,
used as the kubelet's `cgroupRoot`; its processes and containerd (so every shim and container
it starts) are moved into `<root>/system`. Tear-down then needs no process list: whatever is
still in the subtree belongs to the node, and is killed before the cgroups are removed.
Works with cgroup v1 (this machine kind; a v2 mount alongside without controllers is ignored)
and with a pure v2 host.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

CGROUP_FS = Path("/sys/fs/cgroup")
SYSTEM = "system"
# The hierarchy used to find a node's processes: every task is in exactly one cgroup of it.
_V1_TRACKER = "pids"


def _unified() -> bool:
    return (CGROUP_FS / "cgroup.controllers").exists()


def hierarchies() -> list[Path]:
    """Mount points of the hierarchies a cgroup must exist in (v1), or the v2 root."""
    if _unified():
        return [CGROUP_FS]
    found = []
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype == "cgroup":
                found.append(Path(fields[4]))
    return found


def _tracker(name: str) -> Path:
    if _unified():
        return CGROUP_FS / name
    return CGROUP_FS / _V1_TRACKER / name


def create(name: str) -> None:
    """`/<name>` and `/<name>/system` in every hierarchy."""
    for root in hierarchies():
        for path in (root / name, root / name / SYSTEM):
            path.mkdir(exist_ok=True)
            if (path / "cpuset.cpus").exists():
                # A v1 cpuset cgroup starts with no CPUs and refuses tasks until given some.
                for knob in ("cpuset.cpus", "cpuset.mems"):
                    (path / knob).write_text((path.parent / knob).read_text())
    if _unified():
        # Let the kubelet's cgroups below use the controllers it needs.
        wanted = (CGROUP_FS / "cgroup.subtree_control").read_text().split()
        (CGROUP_FS / name / "cgroup.subtree_control").write_text(
            " ".join(f"+{c}" for c in wanted))


def enter(name: str, pid: int) -> None:
    """Move process `pid` into `/<name>/system` in every hierarchy."""
    for root in hierarchies():
        (root / name / SYSTEM / "cgroup.procs").write_text(str(pid))


def _procs(top: Path) -> Iterator[int]:
    for dirpath, _dirs, files in os.walk(top):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError):
                for line in (Path(dirpath) / "cgroup.procs").read_text().split():
                    yield int(line)


def pids(name: str) -> list[int]:
    """Every process in the node's subtree."""
    top = _tracker(name)
    return sorted(set(_procs(top))) if top.exists() else []


def below(name: str, leaf: str) -> str | None:
    """The path (relative, like `name`) of the cgroup called `leaf` somewhere below `name`:
    a container's cgroup, named by its ID, below its node's. None if there is none."""
    top = _tracker(name)
    for path in top.rglob(leaf) if top.exists() else ():
        if path.is_dir():
            return str(path.relative_to(_tracker("")))
    return None


def kill_all(name: str, timeout: float = 15.0) -> None:
    """SIGKILL everything in the subtree until it stays empty (forks may race the first pass)."""
    deadline = time.monotonic() + timeout
    while True:
        found = pids(name)
        if not found:
            return
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {found} in cgroup {name} survived SIGKILL")
        time.sleep(0.1)


def remove(name: str, timeout: float = 10.0) -> None:
    """Remove the (empty) subtree from every hierarchy, deepest first.

    An emptied cgroup can stay busy for a moment while the kernel finishes the exits."""
    for root in hierarchies():
        top = root / name
        if not top.exists():
            continue
        dirs = [Path(d) for d, _, _ in os.walk(top)]
        for path in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
            deadline = time.monotonic() + timeout
            while path.exists():
                try:
                    path.rmdir()
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)

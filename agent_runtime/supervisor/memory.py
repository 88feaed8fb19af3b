"""Memory figures the supervisor acts on: per-worker USS and the container's cgroup usage.

Called by `supervisor.py` every tick. Per-worker limits use USS (pages only that process
holds, from /proc/<pid>/smaps_rollup via psutil): RSS would count pages still shared with the
fork server, and `ru_maxrss` is a high-water mark inherited across fork that never goes down.
The container figure is the cgroup working set (usage minus inactive file cache), the number
the kubelet and the kernel OOM killer compare with the limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")
_UNLIMITED = 1 << 60  # cgroup v1 reports "no limit" as a huge number


def worker_uss(pid: int) -> int | None:
    """Unique set size of a process in bytes, or None if it is gone."""
    try:
        return int(psutil.Process(pid).memory_full_info().uss)
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


@dataclass(frozen=True)
class ContainerMemory:
    working_set: int
    limit: int | None  # None: no limit known


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def read_container_memory(root: Path = CGROUP_ROOT) -> ContainerMemory | None:
    """Working set and limit of this process's cgroup (v2 unified, or v1 memory controller)."""
    if (root / "memory.current").exists():  # cgroup v2, namespaced (as in a pod)
        usage = _read_int(root / "memory.current")
        limit = _read_int(root / "memory.max")
        inactive = _stat_value(root / "memory.stat", "inactive_file")
    elif (root / "memory" / "memory.usage_in_bytes").exists():  # cgroup v1
        usage = _read_int(root / "memory" / "memory.usage_in_bytes")
        limit = _read_int(root / "memory" / "memory.limit_in_bytes")
        inactive = _stat_value(root / "memory" / "memory.stat", "total_inactive_file")
    else:
        return None
    if usage is None:
        return None
    if limit is not None and limit >= _UNLIMITED:
        limit = None
    return ContainerMemory(working_set=max(usage - inactive, 0), limit=limit)

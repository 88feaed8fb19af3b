"""What every runtime benchmark shares: services, the machine, result polling, tables.

Method (shared/notes/runtime.md §10): one Redis for all systems (the dev harness's, started
with `services.up()`), a separate DB number per system, flushed before it runs; equal total
concurrency; warm-up excluded; a task counts as done only when its result is readable where
that system's SDK reads it (seen through `results_watch.py`). Every wait has a deadline.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import redis

from agentpool_dev import services

# Total concurrency for every system: 2 processes x 8 slots on a 2-core machine.
PROCESSES = 2
SLOTS_PER_PROCESS = 8
TOTAL_CONCURRENCY = PROCESSES * SLOTS_PER_PROCESS
# One Redis database per system, so FLUSHDB between systems never touches DB 0 (tests).
DB_NUMBERS = {"agentpool": 10, "celery": 11, "rq": 12, "arq": 13, "spawn": 14, "fork": 15,
              "budget": 9, "floor": 8}


class BenchError(RuntimeError):
    """A system did not start or did not finish within its deadline."""


def redis_base_url() -> str:
    """The harness Redis (started if needed), without a DB number."""
    settings = services.up(services.ServiceSettings.from_env())
    return settings.redis_url.rsplit("/", 1)[0]


def db_url(system: str) -> str:
    """A flushed database of the shared Redis for one system."""
    url = f"{redis_base_url()}/{DB_NUMBERS[system]}"
    with redis.Redis.from_url(url) as client:
        client.flushdb()
    return url


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> str:
    """One line describing where the numbers were measured."""
    with redis.Redis.from_url(redis_base_url() + "/0") as client:
        info = client.info("server")
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores ({_cpu_model()}), {mem_gib:.0f} GiB, "
            f"Linux {platform.release()}, Python {platform.python_version()}, "
            f"Redis {info['redis_version']} (loopback, no persistence); total concurrency "
            f"{TOTAL_CONCURRENCY} per system ({PROCESSES} processes x {SLOTS_PER_PROCESS})")


def median(values: Iterable[float]) -> float:
    items = list(values)
    return statistics.median(items) if items else float("nan")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = min(len(sorted_values) - 1, max(0, round(q / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (readable in a terminal, pasteable into RESULTS.md)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
              for r in rows]
    return "\n".join(lines)


@dataclass
class Versions:
    """Library versions, printed with every table."""

    @staticmethod
    def line() -> str:
        from importlib.metadata import PackageNotFoundError, version
        parts = []
        for name in ("agentpool", "celery", "kombu", "rq", "arq", "redis"):
            try:
                parts.append(f"{name} {version(name)}")
            except PackageNotFoundError:
                parts.append(f"{name} missing")
        return ", ".join(parts)


def git_revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"

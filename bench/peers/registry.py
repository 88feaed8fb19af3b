"""Every benchmarked system by name, in the order tables print them (AgentPool first)."""

from __future__ import annotations

from collections.abc import Callable

from bench.peers.base import System


def _agentpool(url: str) -> System:
    from bench.peers.agentpool import AgentPool
    return AgentPool(url)


def _celery(url: str) -> System:
    from bench.peers.celery_app import CelerySystem
    return CelerySystem(url)


def _rq(url: str) -> System:
    from bench.peers.rq_worker import RQSystem
    return RQSystem(url)


def _arq(url: str) -> System:
    from bench.peers.arq_worker import ArqSystem
    return ArqSystem(url)


def _floor(url: str) -> System:
    from bench.peers.floor import FloorSystem
    return FloorSystem(url)


def _spawn(url: str) -> System:
    from bench.peers.per_process import SpawnSystem
    return SpawnSystem(url)


def _fork(url: str) -> System:
    from bench.peers.per_process import ForkSystem
    return ForkSystem(url)


# Imports are deferred so a missing peer library only breaks the benchmarks that use it.
SYSTEMS: dict[str, Callable[[str], System]] = {
    "agentpool": _agentpool, "celery": _celery, "rq": _rq, "arq": _arq, "floor": _floor,
    "spawn": _spawn, "fork": _fork,
}

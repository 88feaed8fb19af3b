"""The operator's settings, read once at start from the command line and environment."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass

from agentpool_operator.queuedir import parse_reference


@dataclass(frozen=True)
class Settings:
    namespaces: tuple[str, ...]
    """Namespaces to watch; empty means the whole cluster."""
    resync_seconds: float
    """How often every pool is reconciled even without events (drift in unwatched children)."""
    health_port: int
    """Port of /healthz, /readyz and /metrics."""
    health_host: str
    workers: int
    """Pools reconciled concurrently."""
    stall_seconds: float
    """How long the watch may lag behind a fresh list before liveness fails."""
    log_level: str
    deletion_cost_seconds: float = 10.0
    """Period of the pod deletion-cost pass (`deletioncost.py`); 0 turns it off."""
    queue_directory: str = ""
    """`NAMESPACE/NAME` of the Secret to publish the queue directory in (`publisher.py`) for
    the metrics API server; empty: none."""

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces


def parse(argv: Sequence[str] | None = None) -> Settings:
    env = os.environ
    parser = argparse.ArgumentParser(prog="agentpool-operator",
                                     description="Reconcile AgentPools into worker pools.")
    parser.add_argument("--namespace", "-n", action="append", default=None,
                        help="watch only this namespace (repeatable); default: "
                             "$AGENTPOOL_WATCH_NAMESPACES (comma-separated) or all namespaces")
    parser.add_argument("--resync-seconds", type=float,
                        default=float(env.get("AGENTPOOL_RESYNC_SECONDS", "60")))
    parser.add_argument("--health-port", type=int,
                        default=int(env.get("AGENTPOOL_HEALTH_PORT", "8080")))
    parser.add_argument("--health-host", default=env.get("AGENTPOOL_HEALTH_HOST", "0.0.0.0"))
    parser.add_argument("--workers", type=int, default=int(env.get("AGENTPOOL_WORKERS", "8")))
    parser.add_argument("--stall-seconds", type=float,
                        default=float(env.get("AGENTPOOL_STALL_SECONDS", "180")))
    parser.add_argument("--log-level", default=env.get("AGENTPOOL_LOG_LEVEL", "INFO"))
    parser.add_argument("--deletion-cost-seconds", type=float,
                        default=float(env.get("AGENTPOOL_DELETION_COST_SECONDS", "10")),
                        help="period of the pod deletion-cost pass; 0: off")
    parser.add_argument("--queue-directory", default=env.get("AGENTPOOL_QUEUE_DIRECTORY", ""),
                        metavar="NAMESPACE/NAME",
                        help="publish each served pool's queue in this Secret for the metrics "
                             "API server (the chart creates it)")
    args = parser.parse_args(argv)
    if args.queue_directory:
        try:
            parse_reference(args.queue_directory)
        except ValueError as error:
            parser.error(f"--queue-directory: {error}")
    namespaces = args.namespace or [
        n.strip() for n in env.get("AGENTPOOL_WATCH_NAMESPACES", "").split(",") if n.strip()]
    return Settings(
        namespaces=tuple(namespaces), resync_seconds=args.resync_seconds,
        health_port=args.health_port, health_host=args.health_host, workers=args.workers,
        stall_seconds=args.stall_seconds, log_level=args.log_level.upper(),
        deletion_cost_seconds=args.deletion_cost_seconds, queue_directory=args.queue_directory,
    )

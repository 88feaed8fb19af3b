"""`python -m agentpool_dev cluster|services ...`: the harness's command line (people, make)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from agentpool_dev import cluster


def _cluster(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir) if args.state_dir else cluster.default_state_dir()
    if args.action == "up":
        started = time.monotonic()
        running = cluster.up(state_dir, real_nodes=args.real_nodes,
                             default_kind="real" if args.real_nodes else "kwok")
        print(f"cluster ready in {time.monotonic() - started:.1f}s at {running.server}",
              file=sys.stderr)
        print(f"export KUBECONFIG={running.kubeconfig}")
        return 0
    if args.action == "down":
        cluster.down(state_dir)
        return 0
    found = cluster.load(state_dir)
    if found is None:
        print(f"no cluster recorded in {state_dir}; run: make cluster-up", file=sys.stderr)
        return 1
    if args.action == "kubeconfig":
        print(found.kubeconfig)
        return 0
    # status
    rows = [(p.name, p.pid, "running" if p.alive() else "exited") for p in found.processes]
    for name, pid, state in rows:
        print(f"{name:<26} {pid:>8}  {state}")
    return 0 if all(state == "running" for _, _, state in rows) else 1


def _images(args: argparse.Namespace) -> int:
    from agentpool_dev import images  # imported lazily: only image commands need it

    if args.action == "lock":
        from agentpool_dev.images.lock import write_lock

        write_lock()
        return 0
    if args.action == "keys":
        for key, digest in images.keys().items():
            print(f"{key:<12} {digest}  {images.catalog()[key].name}")
        return 0
    started = time.monotonic()
    built = images.ensure(args.names or None)
    for item in built.values():
        print(f"{item.image.name}\t{item.archive}")
    print(f"images ready in {time.monotonic() - started:.1f}s", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentpool_dev")
    sub = parser.add_subparsers(dest="component", required=True)
    c = sub.add_parser("cluster", help="the loopback Kubernetes control plane")
    c.add_argument("action", choices=["up", "down", "status", "kubeconfig"])
    c.add_argument("--state-dir", help="where its files live (default: under AGENTPOOL_STATE_DIR)")
    c.add_argument("--real-nodes", type=int, default=0, metavar="N",
                   help="start N real nodes (root); pods then go to real nodes by default")
    i = sub.add_parser("images", help="container images built locally (no registry)")
    i.add_argument("action", choices=["build", "keys", "lock"])
    i.add_argument("names", nargs="*", help="catalog keys (default: all)")
    s = sub.add_parser("services", help="PostgreSQL, Redis, PgBouncer and Prometheus on loopback")
    s.add_argument("rest", nargs=argparse.REMAINDER)
    u = sub.add_parser("up", help="everything: cluster with a real node, images, services, "
                                  "CRD, operator, example pool, a batch of tasks")
    u.add_argument("--kwok", action="store_true",
                   help="API-only: KWOK's simulated pods, no images or containers")
    sub.add_parser("down", help="stop everything `up` started")
    args = parser.parse_args(argv)
    if args.component == "cluster":
        return _cluster(args)
    if args.component == "images":
        return _images(args)
    if args.component in ("up", "down"):
        from agentpool_dev import quickstart

        return quickstart.up(real=not args.kwok) if args.component == "up" else quickstart.down()
    from agentpool_dev import services  # imported lazily: it is optional for cluster commands

    return services.main(args.rest)


if __name__ == "__main__":
    sys.exit(main())

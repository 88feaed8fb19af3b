"""`agentpool-operator` / `python -m agentpool_operator`: run the operator until signalled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import kopf

from agent_runtime.queue.backlog import BacklogReader
from agentpool_operator import login, logs, watches
from agentpool_operator.budget_status import BudgetStatusWriter
from agentpool_operator.budget_usage import BudgetUsageReader
from agentpool_operator.budgets import BudgetId
from agentpool_operator.certkeeper import CertKeeper
from agentpool_operator.childwatch import start_in_turn
from agentpool_operator.deletioncost import DeletionCostKeeper
from agentpool_operator.health import build_app, serve
from agentpool_operator.instrumentation import OperatorMetrics
from agentpool_operator.k8s import Kube
from agentpool_operator.leader import LeaderElector
from agentpool_operator.memoryreports import MemoryReportPoster
from agentpool_operator.publisher import DirectoryPublisher
from agentpool_operator.queuedir import parse_reference
from agentpool_operator.reconcile import Reconciler
from agentpool_operator.resync import Resyncer
from agentpool_operator.settings import Settings, parse
from agentpool_operator.store import PoolKey
from agentpool_operator.workqueue import WorkQueue

log = logging.getLogger("agentpool_operator")


async def run(settings: Settings) -> int:
    """Serve health and metrics, and reconcile: at once, or while holding the leader lease.
    The exit code: 0 after a signal, 1 when leadership was lost."""
    reconciler: Reconciler | None = None
    # The pool gauges read the conditions the status writer last computed, the autoscaler
    # gauge the HPA conditions the store last watched.
    metrics = OperatorMetrics(
        lambda: reconciler.status.conditions if reconciler else {},
        pool_details=lambda: reconciler.status.details if reconciler else {},
        autoscalers=lambda: reconciler.store.autoscalers if reconciler else {})
    kube = Kube.from_environment(count_write=metrics.count_write)
    election = settings.leader_election
    elector = None if election is None else LeaderElector(
        kube.leases(election.namespace, election.name), election.identity,
        lease_duration=election.lease_duration, renew_deadline=election.renew_deadline,
        retry_period=election.retry_period)
    reconciler = Reconciler.for_cluster(kube, metrics)
    queue: WorkQueue[PoolKey] = WorkQueue(reconciler, workers=settings.workers)
    metrics.queue_depth.set_function(lambda: len(queue))
    resyncer = Resyncer(kube, queue, reconciler, settings, on_resync=metrics.resyncs.inc)
    metrics.watch_stalled.set_function(lambda: float(resyncer.stalled))

    def leading() -> bool:
        return elector is None or elector.leading

    def ready() -> bool:
        # A standby is ready once it reads the lease: a rolling update waits for it, and
        # it takes over from there.
        return resyncer.listed_once if leading() else elector is not None and \
            elector.observed_once

    metrics.leader.set_function(lambda: float(leading()))
    runner = await serve(
        build_app(metrics.registry, live=lambda: not (leading() and resyncer.stalled),
                  ready=ready),
        settings.health_host, settings.health_port,
    )
    try:
        if elector is None:
            await operate(settings, kube, reconciler, queue, resyncer)
            return 0
        return await elected(elector, lambda: operate(settings, kube, reconciler, queue,
                                                      resyncer))
    finally:
        await runner.cleanup()
        await kube.close()


async def elected(elector: LeaderElector,
                  lead: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """Stand by until this replica holds the lease, then `lead` until a signal (0) or until
    the lease is lost (the process exits 1 at once: `_exit_lost`)."""
    # Until this replica leads, a signal just ends it; kopf handles them while it leads.
    main = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if main is not None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, main.cancel)
    log.info("waiting to lead", extra={"identity": elector.identity})
    try:
        return 0 if await elector.run(lead, _exit_lost) else 1
    except asyncio.CancelledError:
        return 0


def _exit_lost() -> None:
    """Leadership lost: stop at once, before anything else is written (another replica may
    take over once the lease expires), as client-go's components do; the kubelet restarts
    this one as a candidate."""
    log.error("leader lease lost: exiting")
    logging.shutdown()
    os._exit(1)


async def operate(settings: Settings, kube: Kube, reconciler: Reconciler,
                  queue: WorkQueue[PoolKey], resyncer: Resyncer) -> None:
    """Reconcile until kopf stops (a signal): watches (kopf's and the children's), work
    queue, resync and side jobs."""
    usage = BudgetUsageReader()
    budget_queue: WorkQueue[BudgetId] = WorkQueue(
        BudgetStatusWriter(kube, reconciler.store, lambda: resyncer.listed_once,
                           queues=reconciler.queues, usage=usage), workers=1)

    registry = watches.build_registry(queue, resyncer, reconciler, budget_queue)

    kopf.on.login(registry=registry)(login.login)

    kopf_settings = kopf.OperatorSettings()
    watches.configure(kopf_settings)
    queue.start()
    budget_queue.start()
    tasks = [asyncio.create_task(resyncer.run(), name="resync"), *start_in_turn(
        watches.child_watchers(kube, queue, reconciler.store, settings.namespaces))]
    reader = BacklogReader(client_name="agentpool-operator")
    if settings.deletion_cost_seconds > 0:
        keeper = DeletionCostKeeper(kube, reconciler.queues, reader)
        tasks.append(asyncio.create_task(keeper.run(settings.deletion_cost_seconds),
                                         name="deletion-cost"))
        reports = MemoryReportPoster(kube, reconciler.queues, reader)
        tasks.append(asyncio.create_task(reports.run(settings.deletion_cost_seconds),
                                         name="memory-reports"))
    if settings.queue_directory:
        publisher = DirectoryPublisher(
            kube, reconciler.queues, *parse_reference(settings.queue_directory),
            listing=lambda: resyncer.last_list, verify_seconds=settings.resync_seconds,
            key=settings.queue_directory_key)
        tasks.append(asyncio.create_task(publisher.run(), name="queue-directory"))
    if settings.certs is not None:
        certificates = CertKeeper(kube, settings.certs, metrics=reconciler.metrics)
        tasks.append(asyncio.create_task(certificates.run(), name="certificates"))
    log.info("operator started", extra={"namespaces": ",".join(settings.namespaces) or "*"})
    try:
        await kopf.operator(
            registry=registry, settings=kopf_settings, standalone=True,
            clusterwide=settings.clusterwide, namespaces=settings.namespaces,
        )
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await queue.stop()
        await budget_queue.stop()
        await reader.close()
        await usage.close()


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse(argv)
    logs.configure(settings.log_level)
    return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())

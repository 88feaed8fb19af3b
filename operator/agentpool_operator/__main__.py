"""`agentpool-operator` / `python -m agentpool_operator`: run the operator until signalled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence

import kopf

from agent_runtime.queue.backlog import BacklogReader
from agentpool_operator import login, logs, watches
from agentpool_operator.budget_status import BudgetStatusWriter
from agentpool_operator.budgets import BudgetId
from agentpool_operator.deletioncost import DeletionCostKeeper
from agentpool_operator.health import build_app, serve
from agentpool_operator.instrumentation import OperatorMetrics
from agentpool_operator.k8s import Kube
from agentpool_operator.memoryreports import MemoryReportPoster
from agentpool_operator.publisher import DirectoryPublisher
from agentpool_operator.queuedir import parse_reference
from agentpool_operator.reconcile import Reconciler
from agentpool_operator.resync import Resyncer
from agentpool_operator.settings import Settings, parse
from agentpool_operator.store import PoolKey
from agentpool_operator.workqueue import WorkQueue

log = logging.getLogger("agentpool_operator")


async def run(settings: Settings) -> None:
    # The pools gauge reads the conditions the status writer last computed.
    metrics = OperatorMetrics(lambda: reconciler.status.conditions)
    kube = Kube.from_environment(count_write=metrics.count_write)
    reconciler = Reconciler.for_cluster(kube, metrics)
    queue: WorkQueue[PoolKey] = WorkQueue(reconciler, workers=settings.workers)
    metrics.queue_depth.set_function(lambda: len(queue))
    resyncer = Resyncer(kube, queue, reconciler, settings, on_resync=metrics.resyncs.inc)
    metrics.watch_stalled.set_function(lambda: float(resyncer.stalled))

    budget_queue: WorkQueue[BudgetId] = WorkQueue(
        BudgetStatusWriter(kube, reconciler.store, lambda: resyncer.listed_once,
                           queues=reconciler.queues), workers=1)

    registry = watches.build_registry(queue, resyncer, reconciler, budget_queue)

    kopf.on.login(registry=registry)(login.login)

    kopf_settings = kopf.OperatorSettings()
    watches.configure(kopf_settings)
    runner = await serve(
        build_app(metrics.registry, live=lambda: not resyncer.stalled,
                  ready=lambda: resyncer.listed_once),
        settings.health_host, settings.health_port,
    )
    queue.start()
    budget_queue.start()
    tasks = [asyncio.create_task(resyncer.run(), name="resync")]
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
            listing=lambda: resyncer.last_list, verify_seconds=settings.resync_seconds)
        tasks.append(asyncio.create_task(publisher.run(), name="queue-directory"))
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
        await runner.cleanup()
        await kube.close()


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse(argv)
    logs.configure(settings.log_level)
    asyncio.run(run(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())

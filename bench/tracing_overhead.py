"""What tracing costs per task: off (no endpoint), and on (exporting to a local receiver).

    python -m bench tracing                       # 5 000 tasks x 5 repetitions per mode
    python -m bench tracing --tasks 200 --reps 1  # smoke (the tests run this)

Two parts:

* Hooks, in-process (ns per task): what the code added to the per-task path does with tracing
  off (the submitter outside a trace reads its current span twice; the worker tests
  `tracing is None` three times), against the same steps with the hooks compiled out; and
  the worker's spans of one task with tracing on (process, queue wait, execute; export
  included: the batch exporter's thread CPU is counted).
* End to end, real supervisors (the throughput benchmark's no-op tasks, `bench throughput`):
  tasks/s and the runtime's CPU per task with tracing off, on with the submitter outside a
  trace (the worker starts one per task), and on with every task submitted inside a trace.
Ratios are against tracing off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry import trace

from agent_runtime import tracing
from agent_runtime.config import RuntimeConfig, RuntimeSecrets, RuntimeSettings
from bench.peers.agentpool import AgentPool
from bench.results_watch import ResultWatcher
from bench.runtime_common import TOTAL_CONCURRENCY, Versions, db_url, machine, median, table
from bench.runtime_throughput import Throughput, measure_costs, warm_up

__all__ = ["add_arguments", "hooks", "main", "run"]


# -- a local OTLP/HTTP receiver -----------------------------------------------------------------

@dataclass
class Receiver:
    url: str = ""
    exports: int = 0
    bytes: int = 0
    arrived: threading.Event = field(default_factory=threading.Event)
    """Set by every export (the receiver serves from a thread of its own)."""


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    """Accepts OTLP/HTTP exports and counts them (decoding is the collector's cost, not ours).
    It serves from a thread of its own: the benchmark's loop blocks while it stops a
    supervisor, which is when the workers flush their last spans."""
    found = Receiver()
    ready = threading.Event()
    loop = asyncio.new_event_loop()

    async def export(request: web.Request) -> web.Response:
        found.exports += 1
        found.bytes += len(await request.read())
        found.arrived.set()
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def serve() -> web.AppRunner:
        app = web.Application()
        app.router.add_post("/v1/traces", export)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        found.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return runner

    runners: list[web.AppRunner] = []

    def main() -> None:
        asyncio.set_event_loop(loop)
        runners.append(loop.run_until_complete(serve()))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=main, name="otlp-receiver", daemon=True)
    thread.start()
    ready.wait(10)
    runner = runners[0]
    try:
        yield found
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# -- part 1: the hooks, in-process -------------------------------------------------------------

def _ns_per_call(step: Callable[[], Any], calls: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in range(calls):
            step()
        best = min(best, (time.perf_counter_ns() - start) / calls)
    return best


class _Off:
    tracing: tracing.WorkerTracing | None = None


def _worker_hooks_off(owner: _Off) -> str:
    # The execution path's hooks as written in worker/execution.py, tracing off.
    trace_ = None if owner.tracing is None else owner.tracing.task("noop", "t", 1, 0.0, 0.0, "")
    trace_id = "" if trace_ is None else trace_.trace_id
    if trace_ is not None:
        trace_.executed("success", None)
    if trace_ is not None:
        trace_.end()
    return trace_id


def _submitter_off() -> str:
    with tracing.submitting("noop"):
        return tracing.traceparent()


def _compiled_out() -> str:
    return ""


@dataclass
class HookCosts:
    compiled_out_ns: float
    submitter_off_ns: float
    worker_off_ns: float
    worker_on_ns: float  # wall time of the spans in the task's thread
    worker_on_cpu_ns: float  # process CPU per task, the exporter's thread included
    exports: int


async def hooks(tasks: int) -> HookCosts:
    calls = max(tasks * 20, 20_000)
    compiled = _ns_per_call(_compiled_out, calls)
    submitter = _ns_per_call(_submitter_off, calls)
    owner = _Off()
    worker_off = _ns_per_call(lambda: _worker_hooks_off(owner), calls)
    async with receiver() as found:
        config = RuntimeConfig(pool="bench", handler="m:f", tracing_endpoint=found.url)
        settings = RuntimeSettings(config=config,
                                   secrets=RuntimeSecrets.model_validate({"redis_url": "x"}),
                                   pod_name="bench")
        on = tracing.WorkerTracing.start(settings, "bench-0")
        assert on is not None
        now = time.time()
        cpu, wall = time.process_time_ns(), 0
        for i in range(tasks):
            start = time.perf_counter_ns()
            span = on.task("noop", "t", 1, now, now, "")
            span.executed("success", None)
            span.end()
            wall += time.perf_counter_ns() - start
            if i % 64 == 0:
                await asyncio.sleep(0)  # let the receiver take exports meanwhile
        await on.shutdown()  # every span exported
        cpu_used = time.process_time_ns() - cpu
    return HookCosts(compiled, submitter, worker_off, wall / tasks, cpu_used / tasks,
                     found.exports)


# -- part 2: end to end, real supervisors ------------------------------------------------------

@dataclass
class Mode:
    name: str
    traced_submitter: bool
    endpoint: bool
    result: Throughput = field(default_factory=lambda: Throughput("agentpool", 0))


EXPORT_WAIT_SECONDS = 15.0


async def _run_mode(mode: Mode, tasks: int, reps: int, found: Receiver) -> None:
    overrides: dict[str, Any] = {"tracing_endpoint": found.url} if mode.endpoint else {}
    system = AgentPool(db_url("agentpool"), **overrides)
    mode.result = Throughput(mode.name, tasks)
    found.arrived.clear()
    system.start()
    tracer = trace.get_tracer("bench")
    try:
        async with system.watch_results() as watcher:
            await warm_up(system, watcher, TOTAL_CONCURRENCY * 4)
            for _ in range(reps):
                system.check_alive()
                await _measure(system, watcher, tasks, mode, tracer)
            if mode.endpoint:
                # The workers export in batches (every few seconds): let one arrive before
                # stopping them, so a stop that beats the final flush cannot hide the exports.
                await asyncio.to_thread(found.arrived.wait, EXPORT_WAIT_SECONDS)
    finally:
        await system.close()
        system.stop()


async def _measure(system: AgentPool, watcher: ResultWatcher, tasks: int, mode: Mode,
                   tracer: trace.Tracer) -> None:
    if not mode.traced_submitter:
        await measure_costs(system, watcher, tasks, 600.0, mode.result)
        return
    # A span of the application around the whole batch: every envelope carries its context.
    with tracer.start_as_current_span("bench batch"):
        await measure_costs(system, watcher, tasks, 600.0, mode.result)


async def end_to_end(tasks: int, reps: int) -> tuple[list[Mode], Receiver]:
    _application_tracing()
    modes = [Mode("off", traced_submitter=False, endpoint=False),
             Mode("off, submitted in a trace", traced_submitter=True, endpoint=False),
             Mode("on, worker starts the trace", traced_submitter=False, endpoint=True),
             Mode("on, submitted in a trace", traced_submitter=True, endpoint=True)]
    async with receiver() as found:
        for mode in modes:
            await _run_mode(mode, tasks, reps, found)
    return modes, found


def _application_tracing() -> None:
    """The benchmark as an application with OpenTelemetry set up (spans made, not exported),
    so a submitter inside a trace has a recording span and its publish spans cost what they
    would."""
    from opentelemetry.sdk.trace import TracerProvider
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        trace.set_tracer_provider(TracerProvider())


# -- report -----------------------------------------------------------------------------------

def report(costs: HookCosts, modes: list[Mode], found: Receiver) -> str:
    added_off = costs.worker_off_ns - costs.compiled_out_ns
    added_submit = costs.submitter_off_ns - costs.compiled_out_ns
    hook_rows = [
        ["hooks compiled out (an empty call)", f"{costs.compiled_out_ns:.0f}", "1.00x"],
        ["worker hooks, tracing off", f"{costs.worker_off_ns:.0f}",
         f"{costs.worker_off_ns / costs.compiled_out_ns:.2f}x"],
        ["submitter outside a trace", f"{costs.submitter_off_ns:.0f}",
         f"{costs.submitter_off_ns / costs.compiled_out_ns:.2f}x"],
        ["worker spans, tracing on (in the task)", f"{costs.worker_on_ns:.0f}", ""],
        ["worker spans, tracing on (CPU incl. export)", f"{costs.worker_on_cpu_ns:.0f}", ""],
    ]
    off = next(m for m in modes if m.name == "off").result
    off_cpu = median(off.cpu_ms_per_task)
    rows = [[m.name, str(m.result.tasks), str(len(m.result.rates)),
             f"{m.result.median:,.0f} [{min(m.result.rates):,.0f}-{max(m.result.rates):,.0f}]",
             f"{m.result.median / off.median:.2f}x",
             f"{median(m.result.cpu_ms_per_task):.3f}",
             f"{median(m.result.cpu_ms_per_task) / off_cpu:.2f}x"]
            for m in modes]
    per_task_off_ns = off_cpu * 1e6
    summary = (f"Tracing off adds {added_off:.0f} ns (worker) + {added_submit:.0f} ns "
               f"(submitter) per task: {100 * (added_off + added_submit) / per_task_off_ns:.3f} % "
               f"of the runtime's {off_cpu:.3f} ms CPU per no-op task. "
               f"Receiver: {found.exports} exports, {found.bytes / 1e6:.1f} MB.")
    return "\n".join([
        "## Tracing overhead", machine(), Versions.line(), "",
        "Per-task hooks, in-process (ns per task, best of 5):", "",
        table(["step", "ns/task", "vs compiled out"], hook_rows), "",
        "End to end, no-op tasks through real supervisors (2 workers x 8):", "",
        table(["mode", "tasks", "reps", "tasks/s median [min-max]", "vs off",
               "runtime CPU ms/task", "CPU vs off"], rows), "", summary])


async def run(tasks: int, reps: int) -> tuple[HookCosts, list[Mode], Receiver]:
    modes, found = await end_to_end(tasks, reps)
    costs = await hooks(tasks)  # last: it sets this process's global tracer provider
    return costs, modes, found


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tasks", type=int, default=5_000)
    parser.add_argument("--reps", type=int, default=5)


def main(args: argparse.Namespace) -> str:
    costs, modes, found = asyncio.run(run(args.tasks, args.reps))
    return report(costs, modes, found)

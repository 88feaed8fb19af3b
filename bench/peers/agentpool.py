"""AgentPool runtime: `agentpool-runtime run` (the pod's command), tasks through `TaskClient`.

2 warm workers x 8 concurrent slots; the init hook imports the heavy libraries during warm-up
(what a pool would do for its real dependencies). Results are read from the pool's result key,
where `TaskClient.get` reads them (no PostgreSQL: the Redis-only configuration).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis

from agent_runtime.config import RuntimeConfig
from agent_runtime.queue.envelope import TaskResult
from agent_runtime.queue.keys import Keys
from agent_runtime.sdk.client import TaskClient
from agent_runtime.sdk.context import TaskContext
from bench import handlers
from bench.peers.base import System, python
from bench.runtime_common import PROCESSES, SLOTS_PER_PROCESS

POOL = "bench"


async def noop(payload: Any, ctx: TaskContext) -> dict[str, int]:
    return handlers.noop_value()


async def heavy(payload: Any, ctx: TaskContext) -> dict[str, Any]:
    return handlers.heavy_value()


async def chaos(payload: Any, ctx: TaskContext) -> dict[str, str]:
    return await handlers.chaos_async(str(payload["task"]))


def config(**overrides: Any) -> RuntimeConfig:
    here = "bench.peers.agentpool"
    return RuntimeConfig.model_validate({
        "pool": POOL, "handler": f"{here}:noop",
        "handlers": {"noop": f"{here}:noop", "heavy": f"{here}:heavy", "chaos": f"{here}:chaos"},
        "init_hook": "bench.handlers:warm_heavy", "workers": PROCESSES,
        "concurrency": SLOTS_PER_PROCESS, "metrics_host": "127.0.0.1", "metrics_port": 0,
        "log_level": "WARNING", "heartbeat_interval_seconds": 0.5, **overrides})


class AgentPool(System):
    name = "agentpool"

    def __init__(self, url: str, **overrides: Any) -> None:
        super().__init__(url)
        self.config = config(**overrides)
        self.keys = Keys.for_config(self.config)
        self._client: TaskClient | None = None

    def start(self) -> None:
        path = self.logdir / "runtime.json"
        path.write_text(json.dumps(self.config.model_dump(mode="json")))
        env = self.env()
        env.update({"AGENTPOOL_CONFIG": str(path), "AGENTPOOL_REDIS_URL": self.url,
                    "AGENTPOOL_POD_NAME": "bench-pod"})
        env.pop("AGENTPOOL_DATABASE_URL", None)
        self.spawn([python(), "-m", "agent_runtime.cli", "run"], env)

    async def client(self) -> TaskClient:
        if self._client is None:
            self._client = await TaskClient.connect(self.url, self.config)
        return self._client

    async def submit(self, kind: str, args: Sequence[str]) -> list[str]:
        client = await self.client()
        if len(args) == 1:
            return [await client.submit({"task": args[0]}, handler=kind)]
        return await client.submit_many([{"task": a} for a in args], handler=kind)

    def result_key(self, task_id: str) -> str:
        return self.keys.result(task_id)

    async def timeline(self, result_keys: Sequence[str]) -> dict[str, tuple[float, float, float]]:
        rows = {}
        async with Redis.from_url(self.url) as redis:
            for start in range(0, len(result_keys), 1000):
                chunk = result_keys[start:start + 1000]
                for key, raw in zip(chunk, await redis.mget(chunk), strict=True):
                    if raw is None:
                        continue
                    r = TaskResult.from_json(raw)
                    if r.enqueued_at and r.started_at and r.finished_at:
                        rows[key] = (r.enqueued_at, r.started_at, r.finished_at)
        return rows

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None

    def worker_pids(self) -> list[int]:
        """The workers: children of the multiprocessing fork server the supervisor started
        (they inherit its command line, so the parent link is what tells them apart)."""
        import psutil
        pids: list[int] = []
        for proc in self.procs:
            try:
                children = psutil.Process(proc.pid).children()
            except psutil.Error:
                continue
            for child in children:
                try:
                    if "forkserver" in " ".join(child.cmdline()):
                        pids.extend(p.pid for p in child.children())
                except psutil.Error:
                    continue
        return pids

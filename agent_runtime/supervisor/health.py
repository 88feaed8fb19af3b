"""The supervisor's HTTP endpoints: `/metrics`, `/healthz` (liveness), `/readyz` (readiness).

Started by `supervisor.py` on its own event loop. Liveness only says the supervisor's loop is
turning (a restart would help otherwise); readiness says the pod can take work now: Redis
reachable, at least one warm worker, not draining, memory breaker closed, schema in place.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from agent_runtime.supervisor.pod_metrics import RuntimeMetrics

Probe = Callable[[], tuple[bool, str]]
Extra = Callable[[], Awaitable[bytes]]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class HealthServer:
    def __init__(self, metrics: RuntimeMetrics, live: Probe, ready: Probe,
                 extra: Extra | None = None) -> None:
        self._metrics = metrics
        self._live = live
        self._ready = ready
        # Series read from elsewhere at scrape time (PgBouncer's), appended to ours.
        self._extra = extra
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._serve_metrics)
        app.router.add_get("/healthz", self._probe(self._live))
        app.router.add_get("/readyz", self._probe(self._ready))
        return app

    async def _serve_metrics(self, _request: web.Request) -> web.Response:
        body = self._metrics.render()
        if self._extra is not None:
            body += await self._extra()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    @staticmethod
    def _probe(probe: Probe) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(_request: web.Request) -> web.StreamResponse:
            ok, detail = probe()
            return web.Response(status=200 if ok else 503, text=detail + "\n")
        return handler

    async def start(self, host: str, port: int) -> int:
        self._runner = web.AppRunner(self._app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

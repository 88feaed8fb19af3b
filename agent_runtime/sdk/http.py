"""HTTP helper for handlers: one shared aiohttp session per worker, with latency metrics.

Handlers reach it as `ctx.http`. One session per worker process keeps connections alive across
tasks (no TCP/TLS handshake per call); the connector's limits bound how hard one worker can hit
an API. Every call is timed into `agentpool_external_request_duration_seconds{api, operation,
outcome}`; `api` and `operation` are names the handler chooses from a small fixed set (never a
URL, which would make unbounded series).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from agent_runtime.config import RuntimeConfig
from agent_runtime.sdk.jsonstream import JsonStreamParser
from agent_runtime.sdk.metrics_sink import MetricsSink

METRIC = "agentpool_external_request_duration_seconds"


def outcome_of(status: int | None) -> str:
    if status is None:
        return "error"
    if status >= 500:
        return "server_error"
    if status >= 400:
        return "client_error"
    return "success"


class HttpClient:
    def __init__(self, config: RuntimeConfig, stats: MetricsSink | None = None) -> None:
        self._config = config
        self._stats = stats
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared session, created on first use (inside the worker's event loop)."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self._config.http_limit,
                limit_per_host=self._config.http_limit_per_host,
                keepalive_timeout=self._config.http_keepalive_seconds,
                ttl_dns_cache=300,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self._config.http_timeout_seconds),
                raise_for_status=False,
            )
        return self._session

    def _record(self, api: str, operation: str, outcome: str, started: float) -> None:
        if self._stats is not None:
            self._stats.observe(METRIC, {"api": api, "operation": operation, "outcome": outcome},
                                time.perf_counter() - started)

    @asynccontextmanager
    async def request(self, api: str, method: str, url: str, *, operation: str | None = None,
                      **kwargs: Any) -> AsyncIterator[aiohttp.ClientResponse]:
        """`async with ctx.http.request("search", "GET", url) as resp:`; the latency covers
        the whole block, including reading the body."""
        started = time.perf_counter()
        status: int | None = None
        try:
            async with self.session.request(method, url, **kwargs) as response:
                status = response.status
                yield response
        except BaseException:
            # raise_for_status() inside the block: the HTTP status is the better label.
            failed = outcome_of(status) if status is not None and status >= 400 else "error"
            self._record(api, operation or method.upper(), failed, started)
            raise
        self._record(api, operation or method.upper(), outcome_of(status), started)

    async def json(self, api: str, method: str, url: str, *, operation: str | None = None,
                   **kwargs: Any) -> Any:
        """Call and decode a JSON response; raises aiohttp.ClientResponseError on 4xx/5xx."""
        async with self.request(api, method, url, operation=operation, **kwargs) as response:
            response.raise_for_status()
            return await response.json(content_type=None)

    async def stream_json(self, api: str, url: str, *, method: str = "GET",
                          operation: str | None = None, chunk_size: int = 65536,
                          **kwargs: Any) -> AsyncIterator[Any]:
        """Yield the items of a large JSON array (or NDJSON) response as they arrive."""
        parser = JsonStreamParser()
        async with self.request(api, method, url, operation=operation, **kwargs) as response:
            response.raise_for_status()
            async for chunk in response.content.iter_chunked(chunk_size):
                for item in parser.feed(chunk):
                    yield item
            for item in parser.close():
                yield item

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()

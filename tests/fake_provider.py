"""A fake LLM provider on loopback (or the cluster bridge, for real pods) that enforces its
limits exactly, as a real one would.

Requests per second and minute (sliding windows of arrival times), tokens per minute (each
request is charged the `tokens` its JSON body reserves, then what it `used`), and concurrent
requests; anything beyond them is answered 429 with a Retry-After, and counted. Every accepted
request's arrival is kept, so a test can check every window afterwards.

The provider serves from its own thread and event loop, as a remote provider would: in the
test's loop, its arrival times were delayed by whatever the test's callers were doing (a 429
now and then from that skew alone, beyond the limiter's 2 % margin, on a loaded machine).
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from aiohttp import web


@dataclass
class ProviderLimits:
    requests_per_second: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    concurrent_requests: int | None = None


@dataclass
class FakeProvider:
    limits: ProviderLimits
    latency_seconds: float = 0.0
    host: str = "127.0.0.1"
    """Where it listens: loopback, or the cluster bridge's address for real pods."""
    accepted: list[float] = field(default_factory=list)
    """Arrival time (monotonic) of every accepted request."""
    throttled: int = 0
    refused: list[float] = field(default_factory=list)
    """Arrival time (monotonic) of every request answered 429."""
    in_flight: int = 0
    most_in_flight: int = 0
    in_flight_from: dict[str, int] = field(default_factory=dict)
    """Requests in flight per caller's address (a pod's IP)."""
    _charges: deque[tuple[float, list[int]]] = field(default_factory=deque)
    url: str = ""
    _runner: web.AppRunner | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None

    def _window_count(self, now: float, span: float) -> int:
        return sum(1 for at in reversed(self.accepted[-5000:]) if at > now - span)

    def _tokens_in_minute(self, now: float) -> int:
        while self._charges and self._charges[0][0] <= now - 60:
            self._charges.popleft()
        return sum(charge[0] for _, charge in self._charges)

    def _refusal(self, now: float, tokens: int) -> float | None:
        """Seconds until the request would fit, or None if it fits now."""
        lim = self.limits
        if lim.concurrent_requests and self.in_flight >= lim.concurrent_requests:
            return 1.0
        if lim.requests_per_second and self._window_count(now, 1.0) >= lim.requests_per_second:
            return 1.0
        if lim.requests_per_minute and self._window_count(now, 60.0) >= lim.requests_per_minute:
            return 60.0
        if lim.tokens_per_minute and self._tokens_in_minute(now) + tokens > lim.tokens_per_minute:
            return 60.0
        return None

    async def _complete(self, request: web.Request) -> web.Response:
        body = await request.json()
        tokens, used = int(body.get("tokens", 0)), int(body.get("used", body.get("tokens", 0)))
        now = time.monotonic()
        wait = self._refusal(now, tokens)
        if wait is not None:
            self.throttled += 1
            self.refused.append(now)
            return web.json_response({"error": "rate limited"}, status=429,
                                     headers={"Retry-After": str(math.ceil(wait))})
        self.accepted.append(now)
        charge = [tokens]
        self._charges.append((now, charge))
        caller = request.remote or ""
        self.in_flight += 1
        self.in_flight_from[caller] = self.in_flight_from.get(caller, 0) + 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.latency_seconds:
                await asyncio.sleep(self.latency_seconds)
        finally:
            self.in_flight -= 1
            self.in_flight_from[caller] -= 1
        charge[0] = used
        return web.json_response({"usage": {"total_tokens": used}})

    async def start(self) -> str:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="fake-provider",
                                        daemon=True)
        self._thread.start()
        self.url = await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(self._serve(), loop))
        return self.url

    async def _serve(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/complete", self._complete)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        port = self._runner.addresses[0][1]
        return f"http://{self.host}:{port}/v1/complete"

    async def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._runner is not None:
            await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop))
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.to_thread(thread.join, 10)
        loop.close()
        self._loop = self._thread = None

    def most_in_any_window(self, span: float) -> int:
        times = sorted(self.accepted)
        most, start = 0, 0
        for end, at in enumerate(times):
            while times[start] <= at - span:
                start += 1
            most = max(most, end - start + 1)
        return most

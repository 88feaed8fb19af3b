"""Loading and calling user handlers given as `module:function` (async or sync).

Used by the supervisor (to import handlers before workers fork, so the code is shared
copy-on-write), and by `worker.py` (to resolve a task's handler and call it). A handler takes the
payload, or the payload and a `TaskContext`:

    async def handle(payload: dict, ctx: TaskContext) -> Any     # runs on the worker's loop
    def handle(payload: dict) -> Any                             # runs in a thread

The return value must be JSON-serialisable; it becomes the task's result.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent_runtime.config import RuntimeConfig
from agent_runtime.errors import HandlerError


def load_ref(ref: str) -> Callable[..., Any]:
    """Import `module:function` (or `module:Class.method`, an attribute path), with an error
    message that says what failed."""
    module_name, _, path = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code is a handler error
        raise HandlerError(f"cannot import handler module {module_name!r}: {exc!r}") from exc
    target: Any = module
    for attr in path.split("."):
        target = getattr(target, attr, None)
        if target is None:
            raise HandlerError(f"{ref!r}: module {module_name!r} has no attribute {path!r}")
    if not callable(target):
        raise HandlerError(f"{ref!r}: {path!r} in module {module_name!r} is not callable")
    return target  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Handler:
    name: str
    ref: str
    func: Callable[..., Any]
    is_async: bool
    wants_context: bool

    @classmethod
    def from_ref(cls, name: str, ref: str) -> Handler:
        func = load_ref(ref)
        try:
            params = inspect.signature(func).parameters
        except (TypeError, ValueError):
            params = {}  # type: ignore[assignment]
        positional = [p for p in params.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        return cls(name=name, ref=ref, func=func,
                   is_async=inspect.iscoroutinefunction(func),
                   wants_context=len(positional) >= 2 or any(
                       p.kind is p.VAR_POSITIONAL for p in params.values()))

    async def __call__(self, payload: Any, ctx: Any,
                       on_thread: Callable[[asyncio.Future[None]], None] | None = None) -> Any:
        """Run the handler. A sync one runs in the loop's default executor, so the loop keeps
        heartbeating and serving other tasks meanwhile; `on_thread` receives a future that
        completes when its thread has really finished (cancelling the await does not stop a
        thread)."""
        args = (payload, ctx) if self.wants_context else (payload,)
        if self.is_async:
            return await self.func(*args)
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()
        if on_thread is not None:
            on_thread(finished)

        def call() -> Any:
            try:
                return self.func(*args)
            finally:
                with contextlib.suppress(RuntimeError):  # the loop closed: the process ends
                    loop.call_soon_threadsafe(_resolve, finished)

        return await loop.run_in_executor(None, call)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class HandlerRegistry:
    """The handlers a pool allows. Tasks name one; anything else is an unknown handler."""

    def __init__(self, handlers: dict[str, Handler]) -> None:
        self._by_name = handlers
        # A task may also name a handler by its `module:function` reference, but only one the
        # pool configured: the queue must never make a worker import arbitrary modules.
        self._by_ref = {h.ref: h for h in handlers.values()}

    @classmethod
    def load(cls, config: RuntimeConfig) -> HandlerRegistry:
        return cls({name: Handler.from_ref(name, ref) for name, ref in config.handler_map.items()})

    def resolve(self, name: str) -> Handler | None:
        return self._by_name.get(name) or self._by_ref.get(name)

    @property
    def names(self) -> list[str]:
        return sorted(self._by_name)


async def run_hook(ref: str) -> None:
    """Run the user's init hook (async or sync) once during warm-up."""
    hook = load_ref(ref)
    outcome = hook()
    if inspect.isawaitable(outcome):
        await outcome

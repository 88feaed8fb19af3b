"""OpenTelemetry tracing through the queue: the one module that knows about OpenTelemetry.

Submitter side (`sdk/client.py`): when the caller is inside a span (its application set up
OpenTelemetry), `submitting` wraps the submission in a PRODUCER span and `traceparent` is
stored in the envelope's `trace` field (W3C Trace Context). Outside a span neither does
anything beyond reading the current span.

Worker side (`worker/`): with `tracing_endpoint` set in the pool's config, `WorkerTracing.start`
builds a tracer provider exporting over OTLP/HTTP (protobuf) in a background thread (batches),
and each task gets

    <handler> process        CONSUMER, a child of the submitter's span (and linked to it),
      queue wait             from `enqueued_at` to the start of execution
      <handler> execute      the handler; current while it runs, so the spans below, and any
        HTTP <METHOD>        span the handler makes itself, are its children
        db <statement>       asyncpg queries, after the fact (asyncpg's query logger)
      db ...                 recording the outcome (a database store's queries)

Without an endpoint `WorkerTracing.start` returns None: no provider, no exporter thread, and
every hook is a single `is None` test (see `bench/tracing_overhead.py`). The trace id of a task
also goes to the supervisor with its start and end, which attaches it as an exemplar to the
task histograms (`supervisor/pod_metrics.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace import Span as Span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from agent_runtime.config import RuntimeSettings

log = logging.getLogger(__name__)

INSTRUMENTATION = "agent_runtime"
TRACES_PATH = "/v1/traces"
MAX_QUEUED_SPANS = 8192
_W3C = TraceContextTextMapPropagator()
_NOTHING: AbstractContextManager[None] = nullcontext()


# -- submitter side ---------------------------------------------------------------------------

def traceparent() -> str:
    """The W3C `traceparent` of the caller's current span, or "" outside a trace."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return ""
    return (f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-"
            f"{int(span_context.trace_flags):02x}")


def submitting(handler: str, tasks: int = 1) -> AbstractContextManager[None]:
    """A PRODUCER span around a submission, made with the application's tracer provider, when
    the caller is inside a span; nothing otherwise (tasks submitted outside a trace start one
    in the worker)."""
    if not trace.get_current_span().get_span_context().is_valid:
        return _NOTHING
    return _producer_span(handler, tasks)


@contextmanager
def _producer_span(handler: str, tasks: int) -> Iterator[None]:
    tracer = trace.get_tracer(INSTRUMENTATION)
    with tracer.start_as_current_span(
            f"{handler} publish", kind=SpanKind.PRODUCER,
            attributes={"messaging.system": "agentpool", "messaging.operation.type": "send",
                        "messaging.batch.message_count": tasks}):
        yield


# -- worker side ------------------------------------------------------------------------------

def _ns(unix_seconds: float) -> int:
    return int(unix_seconds * 1e9)


def trace_id_of(span: Span) -> str:
    """The span's trace id as 32 hex digits ("" when it is not recorded)."""
    span_context = span.get_span_context()
    return f"{span_context.trace_id:032x}" if span.is_recording() else ""


class TaskTrace:
    """The spans of one task execution (made by `WorkerTracing.task`). The execute span is the
    current span of the task's asyncio task from creation until `executed`."""

    __slots__ = ("_done", "_execute", "_task", "_token", "trace_id")

    def __init__(self, tracer: Tracer, handler: str, task_id: str, attempt: int,
                 enqueued_at: float, started: float, parent: str) -> None:
        parent_context = _W3C.extract({"traceparent": parent}) if parent else None
        submitter = trace.get_current_span(parent_context).get_span_context()
        links = [Link(submitter)] if submitter.is_valid else None
        attributes: dict[str, str | int] = {
            "messaging.system": "agentpool", "messaging.operation.type": "process",
            "messaging.message.id": task_id, "agentpool.handler": handler,
            "agentpool.attempt": attempt}
        self._task = tracer.start_span(f"{handler} process", context=parent_context,
                                       kind=SpanKind.CONSUMER, links=links,
                                       attributes=attributes, start_time=_ns(enqueued_at))
        task_context = trace.set_span_in_context(self._task)
        tracer.start_span("queue wait", context=task_context,
                          start_time=_ns(enqueued_at)).end(end_time=_ns(started))
        self._execute = tracer.start_span(f"{handler} execute", context=task_context,
                                          start_time=_ns(started))
        self._token: object | None = otel_context.attach(
            trace.set_span_in_context(self._execute))
        self._done = False
        self.trace_id = trace_id_of(self._task)

    def executed(self, outcome: str, error: str | None) -> None:
        """The handler returned (or failed): end the execute span; recording the outcome
        happens under the task span."""
        if self._done:
            return
        self._done = True
        self._detach()
        self._task.set_attribute("agentpool.outcome", outcome)
        if error is not None and outcome != "success":
            self._execute.set_status(Status(StatusCode.ERROR, error[:500]))
            self._task.set_status(Status(StatusCode.ERROR, error[:500]))
        self._execute.end()
        self._token = otel_context.attach(trace.set_span_in_context(self._task))

    def end(self) -> None:
        """The task's outcome is recorded (or the execution was interrupted: drain)."""
        if not self._done:
            self._done = True
            self._task.set_attribute("agentpool.outcome", "interrupted")
            self._execute.end()
        self._detach()
        self._task.end()

    def _detach(self) -> None:
        if self._token is not None:
            otel_context.detach(self._token)  # type: ignore[arg-type]
            self._token = None


class WorkerTracing:
    """A worker's tracer provider and exporter; exists only while tracing is on."""

    def __init__(self, provider: Any) -> None:
        self._provider = provider
        self._tracer: Tracer = provider.get_tracer(INSTRUMENTATION)

    @classmethod
    def start(cls, settings: RuntimeSettings, worker: str) -> WorkerTracing | None:
        """The worker's tracing, or None (and nothing imported or started) without an
        endpoint. Also the process's global provider, so handlers' own spans join the task."""
        config = settings.config
        if not config.tracing_endpoint:
            return None
        # The SDK and the exporter are loaded only when tracing is on.
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        resource = Resource.create({
            "service.name": f"agentpool-{config.pool}",
            "service.instance.id": worker,
            "k8s.pod.name": settings.pod_name,
            **({"k8s.namespace.name": config.namespace} if config.namespace else {}),
        })
        provider = TracerProvider(
            resource=resource, sampler=ParentBased(TraceIdRatioBased(config.tracing_sample_ratio)))
        endpoint = config.tracing_endpoint.rstrip("/") + TRACES_PATH
        # Three spans per task at thousands of tasks/s: a queue that holds a few seconds of
        # them, exported every half second (the SDK drops spans, never blocks, when it is full).
        provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=endpoint, timeout=10), max_queue_size=MAX_QUEUED_SPANS,
            schedule_delay_millis=500, max_export_batch_size=1024))
        trace.set_tracer_provider(provider)
        log.info("tracing: exporting spans to %s", endpoint)
        return cls(provider)

    def task(self, handler: str, task_id: str, attempt: int, enqueued_at: float,
             started: float, parent: str) -> TaskTrace:
        return TaskTrace(self._tracer, handler, task_id, attempt, enqueued_at, started, parent)

    @contextmanager
    def http(self, api: str, operation: str, method: str, url: str,
             request: MutableMapping[str, Any]) -> Iterator[Span]:
        """A CLIENT span around one `ctx.http` call; its context goes out in the request's
        headers (`request` holds the call's keyword arguments), so the API joins the trace."""
        parts = urlsplit(url)
        attributes: dict[str, str | int] = {
            "http.request.method": method.upper(), "server.address": parts.hostname or "",
            "url.full": f"{parts.scheme}://{parts.netloc}{parts.path}",
            "agentpool.api": api, "agentpool.operation": operation}
        if parts.port:
            attributes["server.port"] = parts.port
        with self._tracer.start_as_current_span(f"{method.upper()} {api}", kind=SpanKind.CLIENT,
                                                attributes=attributes) as span:
            given = request.get("headers") or {}
            headers = dict(given.items() if isinstance(given, Mapping) else given)
            _W3C.inject(headers)
            request["headers"] = headers
            yield span

    def query_logger(self, record: Any) -> None:
        """asyncpg's query logger (`Connection.add_query_logger`): a CLIENT span per query
        after the fact, in the context of the task that ran it (asyncpg calls loggers with
        `call_soon`, which copies the caller's context)."""
        parent = trace.get_current_span()
        if not parent.is_recording():
            return
        end = time.time_ns()
        statement = " ".join(str(record.query).split())
        span = self._tracer.start_span(
            f"db {statement.split(' ', 1)[0].upper()}", kind=SpanKind.CLIENT,
            start_time=end - int(record.elapsed * 1e9),
            attributes={"db.system.name": "postgresql", "db.query.text": statement[:2000]})
        if record.exception is not None:
            span.set_status(Status(StatusCode.ERROR, f"{type(record.exception).__name__}"))
        span.end(end_time=end)

    async def on_db_connection(self, connection: Any) -> None:
        """asyncpg's pool `init` callback: every new connection reports its queries."""
        connection.add_query_logger(self.query_logger)

    async def shutdown(self) -> None:
        """Export what is buffered (bounded by the exporter's timeout), off the event loop."""
        await asyncio.to_thread(self._provider.shutdown)



def http_outcome(span: Span, status: int | None, outcome: str) -> str:
    """What a `ctx.http` call came to, on its span; returns the trace id (for the exemplar)."""
    if status is not None:
        span.set_attribute("http.response.status_code", status)
    if outcome != "success":
        span.set_status(Status(StatusCode.ERROR, outcome))
    return trace_id_of(span)

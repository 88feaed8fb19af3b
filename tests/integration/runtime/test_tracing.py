"""Tracing through the queue, end to end: a real supervisor whose workers export over OTLP/HTTP
to a receiver in the test (aiohttp on loopback, decoding the protobuf with opentelemetry-proto),
a submitter inside a span of its own, and a handler calling an API and the database.

With tracing on, one trace holds the submitter's span, the publish span, the task's process
span, its queue wait, its execution, the HTTP call (whose context reached the API) and the
query; the task histograms carry the trace id as an exemplar. With tracing off, the task still
carries the submitter's context, but the worker loads no OpenTelemetry SDK, starts no
exporter, makes no span, and nothing reaches the receiver.
"""

from __future__ import annotations

import asyncio
import gzip
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from agent_runtime.sdk.client import TaskClient
from tests.plugins.runtime import RunningSupervisor, RuntimePool, StartSupervisor

KIND_NAMES = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


@dataclass
class ReceivedSpan:
    trace_id: str
    span_id: str
    parent_id: str
    name: str
    kind: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    start_ns: int
    end_ns: int
    links: list[str]


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    return getattr(value, which) if which else None


@dataclass
class Receiver:
    """An OTLP/HTTP trace receiver and a small JSON API on one loopback server."""

    url: str = ""
    spans: list[ReceivedSpan] = field(default_factory=list)
    exports: int = 0
    api_headers: list[dict[str, str]] = field(default_factory=list)

    async def export(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        decoded = ExportTraceServiceRequest.FromString(body)
        self.exports += 1
        for resource_spans in decoded.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.append(ReceivedSpan(
                        trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_id=span.parent_span_id.hex(), name=span.name,
                        kind=KIND_NAMES.get(span.kind, str(span.kind)),
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        resource=resource, start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        links=[link.span_id.hex() for link in span.links]))
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    async def api(self, request: web.Request) -> web.Response:
        self.api_headers.append(dict(request.headers))
        return web.json_response({"answer": 42})

    def in_trace(self, trace_id: str) -> dict[str, ReceivedSpan]:
        return {span.name: span for span in self.spans if span.trace_id == trace_id}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    found = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", found.export)
    app.router.add_get("/api", found.api)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    found.url = f"http://127.0.0.1:{port}"
    yield found
    await runner.cleanup()


@pytest.fixture
def submitter_spans() -> Iterator[InMemorySpanExporter]:
    """The test process as an application with OpenTelemetry set up: its spans, in memory."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    yield exporter
    processor.shutdown()  # its exporter takes nothing more


async def _submit_in_span(client: TaskClient, url: str) -> tuple[str, str, dict[str, Any]]:
    tracer = trace.get_tracer("tests")
    with tracer.start_as_current_span("checkout request") as root:
        task_id = await client.submit({"url": f"{url}/api"}, handler="traced")
    value = await client.result(task_id, max_wait=30)
    return f"{root.get_span_context().trace_id:032x}", task_id, value


def _open_metrics(supervisor: RunningSupervisor) -> str:
    request = urllib.request.Request(
        supervisor.url("/metrics"),
        headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        return str(response.read().decode())


def _exemplars(text: str, sample_name: str) -> set[str]:
    found = set()
    for family in text_string_to_metric_families(text):  # type: ignore[no-untyped-call]
        for sample in family.samples:
            if sample.name == sample_name and sample.exemplar is not None:
                found.add(sample.exemplar.labels["trace_id"])
    return found


async def _wait_for(receiver: Receiver, trace_id: str, names: set[str],
                    within: float = 20.0) -> dict[str, ReceivedSpan]:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        spans = receiver.in_trace(trace_id)
        if names <= spans.keys():
            return spans
        await asyncio.sleep(0.1)
    pytest.fail(f"spans of trace {trace_id}: {sorted(receiver.in_trace(trace_id))}, "
                f"expected {sorted(names)}; all: {[s.name for s in receiver.spans]}")


async def _process_span(receiver: Receiver, task_id: str) -> ReceivedSpan:
    for _ in range(200):
        for span in receiver.spans:
            if span.attributes.get("messaging.message.id") == task_id:
                await asyncio.sleep(0.5)  # its children are in the same batch, or the next
                return span
        await asyncio.sleep(0.1)
    pytest.fail(f"no process span for task {task_id}")


@pytest.mark.services
async def test_one_trace_spans_submit_queue_wait_execution_http_and_database(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        receiver: Receiver, submitter_spans: InMemorySpanExporter,
        pgbouncer_dsn: str) -> None:
    runtime_pool.update(tracing_endpoint=receiver.url, workers=1)
    supervisor = start_supervisor(runtime_pool, database_url=pgbouncer_dsn)

    trace_id, task_id, value = await _submit_in_span(task_client, receiver.url)

    assert value["body"] == {"answer": 42}
    assert value["span_recording"] is True
    spans = await _wait_for(receiver, trace_id, {
        "traced process", "queue wait", "traced execute", "GET downstream", "db SELECT"})
    # The submitter's side: its request span and the publish span (exported by the app).
    mine = {span.name: span for span in submitter_spans.get_finished_spans()
            if f"{span.context.trace_id:032x}" == trace_id}
    publish = mine["traced publish"]
    assert publish.kind == trace.SpanKind.PRODUCER
    assert publish.parent is not None
    assert publish.parent.span_id == mine["checkout request"].context.span_id
    publish_id = f"{publish.context.span_id:016x}"
    # The worker's side, received over OTLP/HTTP: one tree under the publish span.
    process, wait = spans["traced process"], spans["queue wait"]
    execute, http = spans["traced execute"], spans["GET downstream"]
    query = spans["db SELECT"]
    assert (process.parent_id, process.kind) == (publish_id, "consumer")
    assert process.links == [publish_id]
    assert process.attributes["messaging.message.id"] == task_id
    assert process.attributes["agentpool.outcome"] == "success"
    assert process.resource["service.name"] == f"agentpool-{runtime_pool.config.pool}"
    assert wait.parent_id == execute.parent_id == process.span_id
    assert process.start_ns == wait.start_ns <= wait.end_ns <= execute.start_ns
    assert execute.end_ns <= process.end_ns
    assert (http.parent_id, http.kind) == (execute.span_id, "client")
    assert http.attributes["http.response.status_code"] == 200
    assert http.attributes["url.full"] == f"{receiver.url}/api"
    assert query.parent_id == execute.span_id
    assert query.attributes["db.query.text"] == "SELECT 1"
    # The API called saw the HTTP span's context.
    version, called_trace, parent, flags = receiver.api_headers[-1]["traceparent"].split("-")
    assert (version, called_trace, parent) == ("00", trace_id, http.span_id)
    assert int(flags, 16) & 1  # sampled
    # A slow bucket links to a trace: the task and HTTP histograms carry the trace id.
    text = await asyncio.to_thread(_open_metrics, supervisor)
    assert trace_id in _exemplars(text, "agentpool_task_duration_seconds_bucket")
    assert trace_id in _exemplars(text, "agentpool_task_queue_duration_seconds_bucket")
    assert trace_id in _exemplars(text, "agentpool_external_request_duration_seconds_bucket")
    assert text.endswith("# EOF\n")


@pytest.mark.services
async def test_a_task_submitted_outside_a_trace_starts_one_in_the_worker(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        receiver: Receiver) -> None:
    runtime_pool.update(tracing_endpoint=receiver.url, workers=1)
    start_supervisor(runtime_pool)

    task_id = await task_client.submit({"url": f"{receiver.url}/api"}, handler="traced")
    await task_client.result(task_id, max_wait=30)

    process = await _process_span(receiver, task_id)
    assert (process.parent_id, process.links) == ("", [])
    assert {"queue wait", "traced execute", "GET downstream"} <= receiver.in_trace(
        process.trace_id).keys()


@pytest.mark.services
async def test_with_tracing_off_the_worker_does_no_tracing_and_exports_nothing(
        runtime_pool: RuntimePool, start_supervisor: StartSupervisor, task_client: TaskClient,
        receiver: Receiver, submitter_spans: InMemorySpanExporter) -> None:
    runtime_pool.update(workers=1)
    supervisor = start_supervisor(runtime_pool)

    _trace_id, _task_id, value = await _submit_in_span(task_client, receiver.url)

    assert value["body"] == {"answer": 42}
    # Inside the worker: no current span, the SDK never imported, no exporter thread.
    assert value["span_recording"] is False
    assert value["sdk_loaded"] is False
    assert not [name for name in value["threads"] if "Otel" in name or "Batch" in name]
    # The HTTP call carried no trace context, and nothing was exported.
    assert "traceparent" not in receiver.api_headers[-1]
    await asyncio.sleep(1.5)  # longer than an exporter's batch delay
    assert receiver.exports == 0
    text = await asyncio.to_thread(_open_metrics, supervisor)
    assert not _exemplars(text, "agentpool_task_duration_seconds_bucket")

"""Tracing's pure pieces: the envelope's trace field, exemplars from worker deltas, the
submitter side outside a trace, and the worker's tracing staying off without an endpoint."""

from __future__ import annotations

from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, use_span
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from pydantic import SecretStr

from agent_runtime import tracing
from agent_runtime.config import RuntimeConfig, RuntimeSecrets, RuntimeSettings
from agent_runtime.queue.envelope import TaskEnvelope
from agent_runtime.supervisor.pod_metrics import RuntimeMetrics
from agent_runtime.worker.stats import WorkerStats

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = f"00-{TRACE}-b7ad6b7169203331-01"


def test_the_envelope_carries_the_traceparent_and_keeps_it_across_retries() -> None:
    envelope = TaskEnvelope("t1", "default", "{}", 1.0, traceparent=PARENT)
    fields = envelope.to_fields()
    assert fields["trace"] == PARENT
    assert TaskEnvelope.from_fields(fields).traceparent == PARENT
    assert TaskEnvelope.from_fields(envelope.for_retry("boom", 1).to_fields()).traceparent \
        == PARENT
    assert "trace" not in TaskEnvelope("t2", "default", "{}", 1.0).to_fields()


def test_the_submitter_side_reads_the_current_span_and_does_nothing_outside_one() -> None:
    assert tracing.traceparent() == ""
    assert tracing.submitting("default") is tracing.submitting("other")  # one shared no-op
    remote = NonRecordingSpan(SpanContext(int(TRACE, 16), 0xB7AD6B7169203331, True,
                                          TraceFlags(1)))
    with use_span(remote):
        assert tracing.traceparent() == PARENT


def _exemplars(metrics: RuntimeMetrics) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    text = metrics.render(open_metrics=True).decode() + "# EOF\n"
    for family in text_string_to_metric_families(text):  # type: ignore[no-untyped-call]
        for sample in family.samples:
            if sample.exemplar is not None:
                found.setdefault(sample.name, set()).add(sample.exemplar.labels["trace_id"])
    return found


def test_trace_ids_become_exemplars_of_task_and_worker_observations() -> None:
    metrics = RuntimeMetrics(["default"])
    stats = WorkerStats()
    stats.observe("agentpool_external_request_duration_seconds",
                  {"api": "search", "operation": "GET", "outcome": "success"}, 7.0, TRACE)
    stats.observe("agentpool_external_request_duration_seconds",
                  {"api": "search", "operation": "GET", "outcome": "success"}, 0.01)
    metrics.apply_worker_stats(stats.drain())
    metrics.task_started("default", 0.2, TRACE)
    metrics.task_finished("default", "success", 42.0, False, None, 1.0, TRACE)
    metrics.task_finished("default", "success", 0.01, False, None, 1.0)

    assert _exemplars(metrics) == {
        "agentpool_external_request_duration_seconds_bucket": {TRACE},
        "agentpool_task_queue_duration_seconds_bucket": {TRACE},
        "agentpool_task_duration_seconds_bucket": {TRACE}}
    # The exemplar's label never becomes a series label; both observations counted.
    text = metrics.render().decode()
    assert "trace_id" not in text
    assert ('agentpool_external_request_duration_seconds_count{api="search",operation="GET",'
            'outcome="success"} 2.0') in text


def test_without_an_endpoint_a_worker_has_no_tracing() -> None:
    settings = RuntimeSettings(config=RuntimeConfig(pool="p", handler="m:f"),
                               secrets=RuntimeSecrets(redis_url=SecretStr("redis://x")),
                               pod_name="pod")
    assert tracing.WorkerTracing.start(settings, "w") is None

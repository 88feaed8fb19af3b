"""The AgentPool spec/status models: required set, defaults, aliases, examples, catalogue."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from agentpool_operator.api import (
    API_VERSION,
    KIND,
    AgentPoolSpec,
    AgentPoolStatus,
    Condition,
    parse_quantity,
)

REPO = Path(__file__).resolve().parents[2]
INVALID = sorted((REPO / "tests/data/invalid").glob("*.yaml"))
MINIMAL: dict[str, Any] = {
    "image": "registry.example.com/agents/echo:1",
    "handler": "echo_agent.tasks:handle",
    "queue": {"redis": {"urlSecretRef": {"name": "redis", "key": "url"}}},
}


def agentpools(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return [d for d in docs if d["kind"] == KIND]


def test_the_minimal_spec_is_image_handler_and_queue_secret() -> None:
    spec = AgentPoolSpec.model_validate(MINIMAL)
    assert spec.replicas == 1
    assert (spec.min_replicas, spec.max_replicas) == (1, 10)
    assert spec.queue.stream is None  # derived per pool by the runtime
    assert spec.queue.consumer_group == "workers"
    assert spec.database is None
    assert spec.autoscaling.scale_down.stabilization_window_seconds == 300
    for missing in MINIMAL:
        with pytest.raises(ValidationError, match=missing):
            AgentPoolSpec.model_validate({k: v for k, v in MINIMAL.items() if k != missing})


def test_json_is_camel_case_and_python_is_snake_case() -> None:
    spec = AgentPoolSpec.model_validate(
        {**MINIMAL, "workers": {"perPod": 3, "maxMemoryPerWorker": "1Gi"}}
    )
    assert spec.workers.per_pod == 3
    assert spec.workers.max_memory_per_worker == "1Gi"
    dumped = spec.to_json()
    assert dumped["workers"]["perPod"] == 3
    assert "per_pod" not in dumped["workers"]
    # populate_by_name: Python code may build specs with attribute names too.
    by_name = AgentPoolSpec.model_validate({**MINIMAL, "max_replicas": 4, "min_replicas": 2})
    assert by_name.max_replicas == 4


def test_dump_and_reparse_is_the_identity() -> None:
    spec = AgentPoolSpec.model_validate(MINIMAL)
    assert AgentPoolSpec.model_validate(spec.to_json()) == spec


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError, match="replica"):
        AgentPoolSpec.model_validate({**MINIMAL, "replica": 3})


@pytest.mark.parametrize(
    ("field", "value"),
    [("handler", "no_colon"), ("handler", "a-b:c"), ("image", "has space:1"),
     ("replicas", -1), ("imagePullPolicy", "Sometimes")],
)
def test_field_formats_are_checked_in_python_too(field: str, value: object) -> None:
    with pytest.raises(ValidationError):
        AgentPoolSpec.model_validate({**MINIMAL, field: value})


@pytest.mark.parametrize("example", ["agentpool-minimal.yaml", "agentpool-full.yaml"])
def test_examples_parse(example: str) -> None:
    (pool,) = agentpools(REPO / "examples" / example)
    assert pool["apiVersion"] == API_VERSION
    spec = AgentPoolSpec.model_validate(pool["spec"])
    assert spec.image
    assert spec.handler


def test_the_full_example_sets_every_section_and_honours_the_rules() -> None:
    (pool,) = agentpools(REPO / "examples/agentpool-full.yaml")
    spec = AgentPoolSpec.model_validate(pool["spec"])
    assert set(pool["spec"]) == {f.alias for f in AgentPoolSpec.model_fields.values()}
    assert spec.database is not None
    assert spec.max_replicas * spec.database.pgbouncer.default_pool_size <= (
        spec.database.connection_budget)
    assert spec.resources.limits is not None
    assert spec.workers.max_memory_per_worker is not None
    assert parse_quantity(spec.workers.max_memory_per_worker) < parse_quantity(
        spec.resources.limits["memory"])


def test_the_full_example_ships_everything_it_references() -> None:
    """Applied as is into a fresh namespace, nothing it names is missing: its Secrets (the
    pods' env too), pull secret, ServiceAccount and PriorityClass."""
    docs = [d for d in yaml.safe_load_all((REPO / "examples/agentpool-full.yaml").read_text())]
    secrets = {(d["metadata"]["name"], key) for d in docs if d["kind"] == "Secret"
               for key in d["stringData"]}
    shipped = {(d["kind"], d["metadata"]["name"]) for d in docs}
    (pool,) = agentpools(REPO / "examples/agentpool-full.yaml")
    spec = AgentPoolSpec.model_validate(pool["spec"])
    assert spec.database is not None
    assert spec.cache.redis is not None
    for ref in (spec.queue.redis.url_secret_ref, spec.cache.redis.url_secret_ref,
                spec.database.dsn_secret_ref):
        assert (ref.name, ref.key) in secrets
    pod = pool["spec"]["pod"]
    for env in pod["env"]:
        if "valueFrom" in env:
            ref = env["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) in secrets
    for pull in pod["imagePullSecrets"]:
        assert ("Secret", pull["name"]) in shipped
    assert ("ServiceAccount", pod["serviceAccountName"]) in shipped
    assert ("PriorityClass", pod["priorityClassName"]) in shipped


def test_status_serializes_in_the_crd_shape() -> None:
    status = AgentPoolStatus(
        observed_generation=3, replicas=2, ready_replicas=1, available_replicas=1,
        selector="app.kubernetes.io/instance=x", queue_backlog=7,
        conditions=[Condition(type="Ready", status="False", reason="PodsNotReady", message="1/2",
                              last_transition_time=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))],
    )
    assert status.to_json() == {
        "observedGeneration": 3, "replicas": 2, "readyReplicas": 1, "availableReplicas": 1,
        "selector": "app.kubernetes.io/instance=x", "queueBacklog": 7,
        "conditions": [{"type": "Ready", "status": "False", "reason": "PodsNotReady",
                        "message": "1/2", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }
    assert AgentPoolStatus.model_validate(status.to_json()) == status
    assert AgentPoolStatus().to_json() == {}


def test_the_invalid_catalogue_is_large_and_well_formed() -> None:
    assert len(INVALID) >= 30
    for path in INVALID:
        header = path.read_text().splitlines()[:2]
        assert header[0].startswith("# "), path.name
        assert header[1].startswith("# expect: "), path.name
        assert len(header[1]) > 15, path.name
        (doc,) = yaml.safe_load_all(path.read_text())
        assert (doc["apiVersion"], doc["kind"]) == (API_VERSION, KIND), path.name

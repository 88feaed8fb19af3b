"""The generated CRD installs cleanly, documents every field and accepts the examples."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from agentpool_tools.crd import openapi_schema

from agentpool_dev.cluster import Cluster
from agentpool_operator.api import AgentPoolSpec
from tests.plugins.crd import load_manifests
from tests.waiting import eventually

pytestmark = pytest.mark.cluster

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_crd_is_established_and_structural(agentpool_crd: dict[str, Any]) -> None:
    conditions = {c["type"]: c for c in agentpool_crd["status"]["conditions"]}
    assert conditions["Established"]["status"] == "True"
    assert conditions["NamesAccepted"]["status"] == "True"
    assert "NonStructuralSchema" not in conditions
    assert agentpool_crd["status"]["acceptedNames"]["shortNames"] == ["ap", "apool"]


def object_paths(schema: Mapping[str, Any], path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every node with documented fields (objects, and objects inside arrays)."""
    node = schema.get("items", schema)
    if "properties" in node:
        yield path, node["properties"]
        for name, child in node["properties"].items():
            yield from object_paths(child, f"{path}.{name}")


def normalized(text: str) -> str:
    return " ".join(text.split())


def test_kubectl_explain_documents_every_field(
    cluster: Cluster, agentpool_crd: dict[str, Any]
) -> None:
    schema = openapi_schema()["properties"]
    paths = [*object_paths(schema["spec"], "agentpool.spec"),
             *object_paths(schema["status"], "agentpool.status")]
    assert len(paths) > 20
    # The API server publishes a new CRD's OpenAPI (which explain reads) a moment later.
    eventually(lambda: cluster.kubectl("explain", "agentpool.spec", check=False).returncode == 0,
               timeout=60)
    for path, fields in paths:
        shown = normalized(cluster.kubectl("explain", path).stdout)
        for name, field in fields.items():
            assert re.search(rf"\b{name}\b", shown), f"{path}.{name} missing from explain"
            assert normalized(field["description"]) in shown, f"{path}.{name} undocumented"


def apply_examples(cluster: Cluster, namespace: str, name: str) -> list[dict[str, Any]]:
    text = (EXAMPLES / name).read_text()
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=text)
    return [d for d in load_manifests(text) if d["kind"] == "AgentPool"]


@pytest.mark.parametrize("example", ["agentpool-minimal.yaml", "agentpool-full.yaml"])
def test_examples_apply_cleanly_and_default_like_the_models(
    cluster: Cluster, agentpool_crd: dict[str, Any], namespace: str, example: str
) -> None:
    for written in apply_examples(cluster, namespace, example):
        stored = cluster.kubectl_json("get", "agentpool", written["metadata"]["name"],
                                      "-n", namespace)
        # The API server filled in exactly the defaults the models have ...
        expected = AgentPoolSpec.model_validate(written["spec"]).to_json()
        assert stored["spec"] == expected
        # ... and what it stores reads back into the same model, unchanged.
        assert AgentPoolSpec.model_validate(stored["spec"]).to_json() == stored["spec"]


def test_the_minimal_example_shows_its_defaults(
    cluster: Cluster, agentpool_crd: dict[str, Any], namespace: str
) -> None:
    apply_examples(cluster, namespace, "agentpool-minimal.yaml")
    stored = cluster.kubectl("get", "agentpool", "echo", "-n", namespace, "-o", "yaml").stdout
    for shown in ("replicas: 1", "maxReplicas: 10", "perPod: 2", "consumerGroup: workers",
                  "stabilizationWindowSeconds: 300", "drainGracePeriodSeconds: 330"):
        assert shown in stored


def test_short_names_categories_and_printer_columns(
    cluster: Cluster, agentpool_crd: dict[str, Any], namespace: str
) -> None:
    apply_examples(cluster, namespace, "agentpool-minimal.yaml")
    for resource in ("ap", "apool", "agentpool", "agentpools.agentpool.dev", "agentpool"):
        found = cluster.kubectl("get", resource, "-n", namespace, "-o", "name").stdout.split()
        assert found == ["agentpool.agentpool.dev/echo"], resource
    everything = cluster.kubectl("get", "all", "-n", namespace, "-o", "name").stdout.split()
    assert "agentpool.agentpool.dev/echo" in everything
    header = cluster.kubectl("get", "ap", "-n", namespace).stdout.splitlines()[0].split()
    assert header == ["NAME", "READY", "REPLICAS", "AVAILABLE", "BACKLOG", "AGE"]
    wide = cluster.kubectl("get", "ap", "-n", namespace, "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "READY", "REPLICAS", "AVAILABLE", "BACKLOG", "REASON",
                               "AGE"]
    assert json.loads(cluster.kubectl("get", "ap", "echo", "-n", namespace, "-o", "json").stdout)[
        "spec"]["replicas"] == 1

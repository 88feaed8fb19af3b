"""The AgentBudget API: its models refuse what the runtime could not enforce, and its CRD is
generated like AgentPool's (structural, documented, committed, listed by `kubectl get`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from agentpool_tools import gen_crd
from agentpool_tools.crd import AGENTBUDGET, CRDS, build_crd, openapi_schema, structural_violations
from agentpool_tools.monitoring import gen
from pydantic import ValidationError

from agentpool_operator.api import AgentBudgetSpec, AgentPoolSpec, BudgetReference

REPO = Path(__file__).resolve().parents[2]
KEY = {"name": "openai", "requestsPerMinute": 500, "tokensPerMinute": 90_000,
       "secretRef": {"name": "openai", "key": "api-key"}}


def nodes(schema: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from nodes(child, f"{path}.{name}")
    if isinstance(schema.get("items"), Mapping):
        yield from nodes(schema["items"], f"{path}[*]")


def test_every_crd_file_is_what_the_models_generate() -> None:
    assert gen_crd.main(["--check"]) == 0, "run `make crds`"
    for source in CRDS:
        assert (REPO / "crds" / source.file_name).read_text() == gen_crd.render(source)
        chart = REPO / "charts" / "agentpool-operator" / gen.CRD_TEMPLATES_DIR / source.file_name
        assert chart.read_text() == gen.crd_template(source)


def test_the_budget_crd_is_structural_and_documented() -> None:
    schema = openapi_schema(AGENTBUDGET)
    assert structural_violations(schema) == []
    for root in ("spec", "status"):
        for path, node in nodes(schema["properties"][root], root):
            for name, prop in node.get("properties", {}).items():
                assert len(prop.get("description", "")) > 10, f"{path}.{name}"


def test_the_budget_crd_names_and_columns() -> None:
    crd = build_crd(AGENTBUDGET)
    assert crd["metadata"]["name"] == "agentbudgets.agentpool.dev"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["shortNames"], names["categories"]) == (
        "AgentBudget", "agentbudgets", ["agb"], [])
    (version,) = crd["spec"]["versions"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in version["additionalPrinterColumns"]}
    assert list(columns) == ["Keys", "Pools", "Ready", "Saturated", "Shared", "Age"]
    assert columns["Saturated"] == '.status.conditions[?(@.type=="Saturated")].status'
    spec = version["schema"]["openAPIV3Schema"]["properties"]
    assert "poolCount" in spec["status"]["properties"]
    keys = spec["spec"]["properties"]["keys"]
    assert keys["x-kubernetes-list-type"] == "map"
    assert keys["x-kubernetes-list-map-keys"] == ["name"]
    assert keys["minItems"] == 1
    (rule,) = keys["items"]["x-kubernetes-validations"]
    assert "has(self.tokensPerMinute)" in rule["rule"]


def test_a_budget_key_needs_a_limit_and_a_name_the_runtime_accepts() -> None:
    assert AgentBudgetSpec.model_validate({"keys": [KEY]}).keys[0].tokens_per_minute == 90_000
    with pytest.raises(ValidationError, match="sets no limit"):
        AgentBudgetSpec.model_validate({"keys": [{"name": "openai"}]})
    with pytest.raises(ValidationError, match="pattern"):
        AgentBudgetSpec.model_validate({"keys": [{**KEY, "name": "Open_AI"}]})
    with pytest.raises(ValidationError, match="unique"):
        AgentBudgetSpec.model_validate({"keys": [KEY, KEY]})
    with pytest.raises(ValidationError, match="greater than or equal to 1"):
        AgentBudgetSpec.model_validate({"keys": [{**KEY, "requestsPerMinute": 0}]})


def test_sharing_is_granted_by_the_budget_per_namespace() -> None:
    spec = AgentBudgetSpec.model_validate({"keys": [KEY], "sharedWith": {"namespaces": ["b"]}})
    assert spec.shared_with_namespace("a", own_namespace="a")
    assert spec.shared_with_namespace("b", own_namespace="a")
    assert not spec.shared_with_namespace("c", own_namespace="a")
    alone = AgentBudgetSpec.model_validate({"keys": [KEY]})
    assert not alone.shared_with_namespace("b", own_namespace="a")


def test_a_pool_references_budgets_by_name_and_namespace() -> None:
    spec = AgentPoolSpec.model_validate({
        "image": "x:1", "handler": "m:f",
        "queue": {"redis": {"urlSecretRef": {"name": "r", "key": "url"}}},
        "budgets": [{"name": "llm"}, {"name": "shared", "namespace": "platform",
                                      "secretRef": {"name": "llm-keys"}}]})
    assert spec.budgets == [BudgetReference(name="llm"), BudgetReference.model_validate(
        {"name": "shared", "namespace": "platform", "secretRef": {"name": "llm-keys"}})]
    budgets = openapi_schema()["properties"]["spec"]["properties"]["budgets"]
    assert budgets["maxItems"] == 16

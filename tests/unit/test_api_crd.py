"""The generated CRD: structural, documented, defaulted like the models, and committed."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from agentpool_tools import gen_crd
from agentpool_tools.crd import (
    SchemaError,
    build_crd,
    openapi_schema,
    structural_violations,
    to_structural,
)

from agentpool_operator.api import AgentPoolSpec
from tests.plugins.crd import apply_defaults

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "crds" / "agentpool.dev_agentpools.yaml"
MINIMAL: dict[str, Any] = {
    "image": "registry.example.com/agents/echo:1",
    "handler": "echo_agent.tasks:handle",
    "queue": {"redis": {"urlSecretRef": {"name": "redis", "key": "url"}}},
}


def version() -> dict[str, Any]:
    (v,) = build_crd()["spec"]["versions"]
    return dict(v)


def nodes(schema: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every schema node with its path."""
    yield path, schema
    for name, child in schema.get("properties", {}).items():
        yield from nodes(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), Mapping):
            yield from nodes(schema[key], f"{path}[*]")


def test_the_committed_crd_is_what_the_models_generate() -> None:
    assert gen_crd.main(["--check", "--output", str(COMMITTED)]) == 0, "run `make crds`"


def test_check_fails_with_a_diff_on_a_stale_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stale = tmp_path / "crd.yaml"
    stale.write_text(gen_crd.render().replace("maxReplicas", "maximumReplicas", 1))
    assert gen_crd.main(["--check", "--output", str(stale)]) == 1
    assert "-" in capsys.readouterr().out
    assert gen_crd.main(["--output", str(stale)]) == 0
    assert gen_crd.main(["--check", "--output", str(stale)]) == 0


def test_the_schema_is_structural() -> None:
    assert structural_violations(openapi_schema()) == []
    for path, node in nodes(openapi_schema()):
        assert not {"$ref", "$defs", "title", "anyOf", "const"} & set(node) or (
            node.get("x-kubernetes-int-or-string")), path
        assert node.get("additionalProperties") is not False, path


def test_every_field_has_a_description() -> None:
    spec_and_status = {k: v for k, v in openapi_schema()["properties"].items() if k != "metadata"}
    for root, schema in spec_and_status.items():
        for path, node in nodes(schema, root):
            for name, prop in node.get("properties", {}).items():
                description = prop.get("description", "")
                assert len(description) > 10, f"{path}.{name} has no description"
                assert "\n" not in description, f"{path}.{name}: docstring line breaks remain"


def test_schema_defaults_are_the_model_defaults() -> None:
    spec_schema = openapi_schema()["properties"]["spec"]
    defaulted = apply_defaults(dict(MINIMAL), spec_schema)
    assert defaulted == AgentPoolSpec.model_validate(MINIMAL).to_json()


def test_replicas_is_defaulted_so_get_scale_never_fails() -> None:
    assert openapi_schema()["properties"]["spec"]["properties"]["replicas"]["default"] == 1


def test_subresources_names_and_printer_columns() -> None:
    crd = build_crd()
    assert crd["metadata"]["name"] == "agentpools.agentpool.dev"
    names = crd["spec"]["names"]
    assert names["shortNames"] == ["ap", "apool"]
    assert "all" in names["categories"]
    v = version()
    assert v["subresources"] == {"status": {}, "scale": {
        "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector"}}
    columns = {c["name"]: c for c in v["additionalPrinterColumns"]}
    assert list(columns) == ["Ready", "Replicas", "Available", "Backlog", "Reason", "Age"]
    assert columns["Reason"]["priority"] == 1
    assert all("priority" not in c for n, c in columns.items() if n != "Reason")
    status = openapi_schema()["properties"]["status"]["properties"]
    assert status["selector"]["type"] == "string"
    for column in columns.values():  # each column points at a field that exists
        head = column["jsonPath"].split(".")[1:3]
        if head[0] in ("spec", "status"):
            field = head[1].split("[")[0]
            assert field in openapi_schema()["properties"][head[0]]["properties"], column


def test_conditions_are_a_map_list_in_the_metav1_shape() -> None:
    conditions = openapi_schema()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["required"]) == {"type", "status", "lastTransitionTime", "reason", "message"}
    assert item["properties"]["lastTransitionTime"]["format"] == "date-time"
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]


def rules() -> dict[str, list[dict[str, str]]]:
    return {path: node["x-kubernetes-validations"] for path, node in nodes(openapi_schema())
            if "x-kubernetes-validations" in node}


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        (".spec", "self.minReplicas <= self.maxReplicas"),
        (".spec", "self.replicas >= self.minReplicas && self.replicas <= self.maxReplicas"),
        (".spec", "self.maxReplicas * self.database.pgbouncer.defaultPoolSize"),
        (".spec", "quantity(string(self.workers.maxMemoryPerWorker)).isLessThan("),
        (".spec.queue", "self.stream == oldSelf.stream"),
        (".spec.queue.consumerGroup", "self == oldSelf"),
        (".spec.workers", "self.drainGracePeriodSeconds >= self.taskTimeoutSeconds"),
        ("", "self.metadata.name.size() <= 50"),
    ],
)
def test_cel_rules_are_in_place(path: str, fragment: str) -> None:
    assert any(fragment in r["rule"] for r in rules()[path]), rules().get(path)


def test_every_rule_has_a_message_that_says_how_to_fix_it() -> None:
    for path, entries in rules().items():
        for entry in entries:
            assert len(entry.get("message", "")) > 30, (path, entry)


def test_field_paths_of_rules_point_at_fields() -> None:
    by_path = dict(nodes(openapi_schema()))
    for path, entries in rules().items():
        for entry in entries:
            if "fieldPath" in entry:
                target = path + entry["fieldPath"]
                assert target in by_path, (path, entry)


# --- the post-processor on small inputs -----------------------------------------------------


def test_refs_are_inlined_and_the_fields_keywords_win() -> None:
    schema = {
        "$defs": {"Sub": {"type": "object", "title": "Sub", "description": "model doc",
                          "properties": {"a": {"type": "integer", "title": "A"}},
                          "additionalProperties": False}},
        "type": "object",
        "properties": {"sub": {"$ref": "#/$defs/Sub", "description": "field doc",
                               "default": {"a": 1}}},
    }
    assert to_structural(schema) == {
        "type": "object",
        "properties": {"sub": {"description": "field doc", "type": "object",
                               "default": {"a": 1}, "properties": {"a": {"type": "integer"}}}},
    }


def test_optional_becomes_not_required_not_nullable() -> None:
    schema = {"type": "object", "properties": {"x": {
        "anyOf": [{"type": "string", "maxLength": 3}, {"type": "null"}],
        "default": None, "description": "doc"}}}
    assert to_structural(schema)["properties"]["x"] == {
        "description": "doc", "type": "string", "maxLength": 3}


def test_draft_2020_keywords_are_translated() -> None:
    out = to_structural({"type": "object", "properties": {
        "n": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "c": {"type": "string", "const": "x"},
        "f": {"type": "string", "format": "path"},
    }})["properties"]
    assert out["n"] == {"type": "number", "minimum": 0, "exclusiveMinimum": True,
                        "maximum": 1, "exclusiveMaximum": True}
    assert out["c"] == {"type": "string", "enum": ["x"]}
    assert out["f"] == {"type": "string"}


def test_free_form_values_preserve_unknown_fields() -> None:
    out = to_structural({"type": "object", "properties": {
        "any": {"description": "anything"},
        "map": {"type": "object", "additionalProperties": True},
        "typed": {"type": "object", "additionalProperties": {"type": "string"}},
    }})["properties"]
    assert out["any"] == {"description": "anything", "type": "object",
                          "x-kubernetes-preserve-unknown-fields": True}
    assert out["map"] == {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    assert out["typed"] == {"type": "object", "additionalProperties": {"type": "string"}}


def test_rules_of_a_model_and_of_its_field_are_both_kept() -> None:
    schema = {
        "$defs": {"Sub": {"type": "object", "x-kubernetes-validations": [{"rule": "model"}]}},
        "type": "object",
        "properties": {"sub": {"$ref": "#/$defs/Sub",
                               "x-kubernetes-validations": [{"rule": "field"}]}},
    }
    out = to_structural(schema)["properties"]["sub"]
    assert [r["rule"] for r in out["x-kubernetes-validations"]] == ["model", "field"]


def test_untranslatable_constructs_fail_loudly() -> None:
    recursive = {"$defs": {"Node": {"type": "object", "properties": {
        "next": {"$ref": "#/$defs/Node"}}}}, "$ref": "#/$defs/Node"}
    with pytest.raises(SchemaError, match="recursive"):
        to_structural(recursive)
    union = {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]}
    with pytest.raises(SchemaError, match="unions"):
        to_structural(union)


def test_violations_are_reported_with_their_path() -> None:
    bad = {"type": "object", "properties": {
        "a": {"$ref": "#/x"}, "b": {"type": "array", "uniqueItems": True, "items": {}},
        "c": {"type": "object", "additionalProperties": False},
        "d": {"oneOf": [{"type": "string"}]},
    }}
    found = "\n".join(structural_violations(bad))
    for expected in (".a: forbidden keyword $ref", ".b: uniqueItems", ".b[*]: no type",
                     ".c: additionalProperties: false", ".d: oneOf"):
        assert expected in found

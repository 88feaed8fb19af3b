"""Models -> Kubernetes structural schema -> the API group's CustomResourceDefinitions (pure).

pydantic emits JSON Schema draft 2020-12, which a CRD does not accept as is: `$ref`s into
`$defs`, `anyOf` with `{type: null}` for optional fields, `additionalProperties: false`,
titles, `const` and numeric `exclusiveMinimum`. `to_structural` rewrites such a schema into
the structural subset the API server accepts (the approach of kube-rs'
`StructuralSchemaRewriter`), and `structural_violations` checks the result, so a model that
needs a construct we do not translate fails the generator instead of the `kubectl apply`.

Callers: `gen_crd` (writes `crds/`), the unit tests, and the e2e fixture that installs it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from agent_runtime import contract
from agentpool_operator import api
from agentpool_operator.api import budget
from agentpool_operator.api.models import AGENTPOOL_DESCRIPTION, AgentPoolSpec
from agentpool_operator.api.status import AgentPoolStatus

Schema = dict[str, Any]

# Keywords structural schemas forbid, or that have no meaning for the API server.
_DROPPED = frozenset({"title", "$schema", "examples", "$defs", "definitions"})
_FORBIDDEN = frozenset(
    {"$ref", "$defs", "definitions", "dependencies", "deprecated", "discriminator", "id",
     "patternProperties", "readOnly", "writeOnly", "xml", "const", "prefixItems", "examples"}
)
_JUNCTORS = ("anyOf", "allOf", "oneOf", "not")
# `format` values the API server validates (apiextensions-apiserver's supported formats).
_FORMATS = frozenset(
    {"bsonobjectid", "uri", "email", "hostname", "ipv4", "ipv6", "cidr", "mac", "uuid",
     "uuid3", "uuid4", "uuid5", "isbn", "isbn10", "isbn13", "creditcard", "ssn", "hexcolor",
     "rgbcolor", "byte", "password", "date", "duration", "datetime", "date-time"}
)
_KEY_ORDER = {"description": 0, "type": 1, "format": 2, "enum": 3, "default": 4,
              "properties": 60, "required": 61, "additionalProperties": 62, "items": 63}
# The pool's name: the runtime's grammar (it names a Service, label values, child objects).
MAX_NAME_LENGTH = contract.POOL_NAME_MAX_LENGTH


class SchemaError(ValueError):
    """The models use a JSON-schema construct that has no structural translation."""


def to_structural(schema: Mapping[str, Any]) -> Schema:
    """Rewrite a pydantic JSON schema (with its `$defs`) into a structural CRD schema."""
    return _rewrite(schema, schema.get("$defs", {}), ())


def model_schema(model: type[BaseModel]) -> Schema:
    """The structural schema of one model, in its camelCase (alias) form."""
    return to_structural(model.model_json_schema(by_alias=True, mode="validation"))


def _rewrite(node: Mapping[str, Any], defs: Mapping[str, Any], stack: tuple[str, ...]) -> Schema:
    out: Schema = dict(node)
    if "$ref" in out:
        out = _inline_ref(out, defs, stack)
    if "allOf" in out and len(out["allOf"]) == 1:  # pydantic's wrapper for a $ref + siblings
        out = _merge(_rewrite(out.pop("allOf")[0], defs, stack), out)
    if "anyOf" in out:
        out = _drop_null(out, defs, stack)
    _fix_keywords(out)
    _rewrite_object(out, defs, stack)
    if "items" in out:
        out["items"] = _rewrite(out["items"], defs, stack)
    if "type" not in out and not _is_escape(out) and "anyOf" not in out:
        out["type"] = "object"  # `Any`: a free-form value, kept as written
        out["x-kubernetes-preserve-unknown-fields"] = True
    return _ordered(out)


def _fix_keywords(out: Schema) -> None:
    """Drop or translate the keywords of one node that a structural schema does not take."""
    for key in _DROPPED:
        out.pop(key, None)
    if "const" in out:
        out["enum"] = [out.pop("const")]
    if out.get("default", 0) is None:  # `None` means "unset": absent, not null
        del out["default"]
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if bound in out and not isinstance(out[bound], bool):  # draft 2020-12 -> draft 4
            out[bound.replace("exclusiveM", "m")] = out[bound]
            out[bound] = True
    if "format" in out and out["format"] not in _FORMATS:
        del out["format"]
    if "description" in out:
        out["description"] = _one_paragraph(out["description"])


def _ordered(node: Schema) -> Schema:
    # A stable, readable key order for the generated YAML (the API server ignores order).
    def rank(key: str) -> tuple[int, str]:
        position = _KEY_ORDER.get(key, 50 if not key.startswith("x-") else 90)
        return position, key

    return {key: node[key] for key in sorted(node, key=rank)}


def _inline_ref(out: Schema, defs: Mapping[str, Any], stack: tuple[str, ...]) -> Schema:
    name = out.pop("$ref").rsplit("/", 1)[-1]
    if name in stack:
        raise SchemaError(f"recursive model {name!r} cannot be a structural schema")
    # The field's own keywords (its description, default, rules) win over the model's.
    return _merge(_rewrite(defs[name], defs, (*stack, name)), out)


def _drop_null(out: Schema, defs: Mapping[str, Any], stack: tuple[str, ...]) -> Schema:
    variants = [v for v in out["anyOf"] if v != {"type": "null"}]
    if len(variants) == len(out["anyOf"]) and out.get("x-kubernetes-int-or-string"):
        return out  # the int-or-string pattern is the one anyOf structural schemas allow
    if len(variants) != 1:
        raise SchemaError(f"unions other than Optional[X] are not supported: {out['anyOf']}")
    del out["anyOf"]
    return _merge(_rewrite(variants[0], defs, stack), out)


def _rewrite_object(out: Schema, defs: Mapping[str, Any], stack: tuple[str, ...]) -> None:
    extra = out.get("additionalProperties")
    if extra is False:
        del out["additionalProperties"]
    elif extra is True:  # extra="allow" or dict[str, Any]: keep unknown fields
        del out["additionalProperties"]
        out["x-kubernetes-preserve-unknown-fields"] = True
    elif isinstance(extra, Mapping):
        out["additionalProperties"] = _rewrite(extra, defs, stack)
    if "properties" in out:
        out["properties"] = {k: _rewrite(v, defs, stack) for k, v in out["properties"].items()}


def _merge(base: Schema, override: Mapping[str, Any]) -> Schema:
    merged = {**base, **override}
    rules = [*base.get("x-kubernetes-validations", []),
             *override.get("x-kubernetes-validations", [])]
    if rules:  # a field's rules add to its model's rules instead of replacing them
        merged["x-kubernetes-validations"] = rules
    return merged


def _is_escape(node: Mapping[str, Any]) -> bool:
    return bool(node.get("x-kubernetes-int-or-string")
                or node.get("x-kubernetes-preserve-unknown-fields"))


def _one_paragraph(text: str) -> str:
    # Docstring line breaks are source formatting; blank lines separate real paragraphs.
    return "\n\n".join(" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip()))


def structural_violations(schema: Mapping[str, Any], path: str = "") -> list[str]:
    """Why `schema` is not a structural schema the API server accepts (empty when it is)."""
    found = [f"{path or '.'}: forbidden keyword {key}" for key in _FORBIDDEN if key in schema]
    if schema.get("additionalProperties") is False:
        found.append(f"{path or '.'}: additionalProperties: false")
    if "additionalProperties" in schema and "properties" in schema:
        found.append(f"{path or '.'}: both properties and additionalProperties")
    if schema.get("uniqueItems") is True:
        found.append(f"{path or '.'}: uniqueItems: true")
    if "type" not in schema and not _is_escape(schema):
        found.append(f"{path or '.'}: no type")
    for junctor in _JUNCTORS:
        if junctor in schema and not (
            junctor == "anyOf" and schema.get("x-kubernetes-int-or-string")
        ):
            found.append(f"{path or '.'}: {junctor} is not supported here")
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if bound in schema and not isinstance(schema[bound], bool):
            found.append(f"{path or '.'}: numeric {bound}")
    for name, child in _children(schema, path):
        found.extend(structural_violations(child, name))
    return found


def _children(schema: Mapping[str, Any], path: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    for key, child in schema.get("properties", {}).items():
        yield f"{path}.{key}", child
    if isinstance(schema.get("items"), Mapping):
        yield f"{path}[*]", schema["items"]
    if isinstance(schema.get("additionalProperties"), Mapping):
        yield f"{path}[*]", schema["additionalProperties"]


@dataclass(frozen=True)
class CrdSource:
    """What one generated CRD is made of: its names, its models, its root rules, printer
    columns and subresources. Every CRD of the API group is one of these (`CRDS`)."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    categories: tuple[str, ...]
    description: str
    spec_model: type[BaseModel]
    status_model: type[BaseModel]
    printer_columns: tuple[dict[str, Any], ...]
    root_rules: tuple[dict[str, Any], ...] = ()
    subresources: Mapping[str, Any] = field(default_factory=lambda: {"status": {}})

    @property
    def name(self) -> str:
        return f"{self.plural}.{api.GROUP}"

    @property
    def file_name(self) -> str:
        """`<group>_<plural>.yaml`, the name of its file in crds/ and the chart."""
        return f"{api.GROUP}_{self.plural}.yaml"


def openapi_schema(source: CrdSource | None = None) -> Schema:
    """The CRD version's `openAPIV3Schema`: the whole object (AgentPool by default)."""
    source = source or AGENTPOOL
    schema: Schema = {
        "type": "object",
        "description": source.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {
                "type": "string",
                "description": "APIVersion of this representation of the object: "
                f"{api.API_VERSION}.",
            },
            "kind": {"type": "string", "description": f"Kind of the object: {source.kind}."},
            "metadata": {"type": "object"},
            "spec": model_schema(source.spec_model),
            "status": model_schema(source.status_model),
        },
    }
    if source.root_rules:
        schema["x-kubernetes-validations"] = [dict(rule) for rule in source.root_rules]
    return schema


# Checked when a pool is created, never again: a name cannot change, and a root rule is
# evaluated on every write, status included, so a pool stored under an older, laxer CRD could
# otherwise never be told (in its status) why it is not built.
_POOL_NAME_RULES: tuple[dict[str, Any], ...] = ({
    "rule": f"oldSelf.hasValue() || self.metadata.name.size() <= {MAX_NAME_LENGTH}",
    "optionalOldSelf": True,
    "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters: it is "
    "used in label values and in the names of the objects the operator creates",
}, {
    "rule": f"oldSelf.hasValue() || self.metadata.name.matches('{contract.POOL_NAME_PATTERN}')",
    "optionalOldSelf": True,
    "message": "metadata.name must be lowercase letters, digits and '-', start with a "
    "letter and end with a letter or digit (no dots): it names the pool's Service, "
    "an RFC 1035 label",
})

PRINTER_COLUMNS: tuple[dict[str, Any], ...] = (
    {"name": "Ready", "type": "string", "description": "Status of the Ready condition.",
     "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Replicas", "type": "integer", "description": "Desired pods.",
     "jsonPath": ".spec.replicas"},
    {"name": "Available", "type": "integer", "description": "Available pods.",
     "jsonPath": ".status.availableReplicas"},
    {"name": "Backlog", "type": "integer", "description": "Queued and running tasks.",
     "jsonPath": ".status.queueBacklog"},
    {"name": "Reason", "type": "string", "priority": 1,
     "description": "Reason of the Ready condition.",
     "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
)
BUDGET_PRINTER_COLUMNS: tuple[dict[str, Any], ...] = (
    # A printer column shows only a JSONPath's first result: the key names cannot be listed.
    {"name": "Keys", "type": "integer", "description": "Keys the budget defines.",
     "jsonPath": ".status.keyCount"},
    {"name": "Pools", "type": "integer", "description": "AgentPools using the budget.",
     "jsonPath": ".status.poolCount"},
    {"name": "Ready", "type": "string", "description": "Status of the Ready condition.",
     "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Saturated", "type": "string",
     "description": "Status of the Saturated condition: True while any key is saturated.",
     "jsonPath": '.status.conditions[?(@.type=="Saturated")].status'},
    {"name": "Shared", "type": "string", "priority": 1,
     "description": "Other namespaces whose pools may use the budget.",
     "jsonPath": ".spec.sharedWith.namespaces"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
)

AGENTPOOL = CrdSource(
    kind=api.KIND, plural=api.PLURAL, singular=api.SINGULAR, short_names=api.SHORT_NAMES,
    categories=api.CATEGORIES, description=AGENTPOOL_DESCRIPTION, spec_model=AgentPoolSpec,
    status_model=AgentPoolStatus, printer_columns=PRINTER_COLUMNS, root_rules=_POOL_NAME_RULES,
    subresources={
        "status": {},
        "scale": {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        },
    },
)
AGENTBUDGET = CrdSource(
    kind=budget.BUDGET_KIND, plural=budget.BUDGET_PLURAL, singular=budget.BUDGET_SINGULAR,
    short_names=budget.BUDGET_SHORT_NAMES, categories=budget.BUDGET_CATEGORIES,
    description=budget.AGENTBUDGET_DESCRIPTION, spec_model=budget.AgentBudgetSpec,
    status_model=budget.AgentBudgetStatus, printer_columns=BUDGET_PRINTER_COLUMNS,
)
CRDS: tuple[CrdSource, ...] = (AGENTPOOL, AGENTBUDGET)
"""Every CRD of the API group, each generated into crds/ and the chart."""
CRD_NAME = AGENTPOOL.name


def build_crd(source: CrdSource | None = None) -> Schema:
    """The complete CustomResourceDefinition (AgentPool's by default), ready to serialize."""
    source = source or AGENTPOOL
    schema = openapi_schema(source)
    problems = structural_violations(schema)
    if problems:
        raise SchemaError(f"generated {source.kind} schema is not structural:\n"
                          + "\n".join(problems))
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": source.name, "labels": {"app.kubernetes.io/part-of": "agentpool"}},
        "spec": {
            "group": api.GROUP,
            "names": {
                "kind": source.kind,
                "listKind": f"{source.kind}List",
                "plural": source.plural,
                "singular": source.singular,
                "shortNames": list(source.short_names),
                "categories": list(source.categories),
            },
            "scope": "Namespaced",
            "versions": [{
                "name": api.VERSION,
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": schema},
                "subresources": {k: dict(v) for k, v in source.subresources.items()},
                "additionalPrinterColumns": [dict(c) for c in source.printer_columns],
            }],
        },
    }

"""Building blocks shared by the AgentPool API models: the base model and schema helpers.

Every model of the API (`models.py`, `pod.py`, `conditions.py`) derives from `ApiModel`, so
all of them read and write Kubernetes-style camelCase JSON while Python code uses snake_case,
and all of them take their CRD descriptions from attribute docstrings. `crd.py` turns the JSON
schema these models emit into the CRD; the helpers here only attach Kubernetes-specific
keywords (`x-kubernetes-validations`, defaults) that pydantic has no notion of.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

# RFC 1123 DNS subdomain: the format of most Kubernetes object names (Secrets, classes, ...).
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# Keys inside a Secret or ConfigMap.
CONFIG_KEY = r"^[-._a-zA-Z0-9]+$"


class ApiModel(BaseModel):
    """Base of every AgentPool API model.

    `extra="forbid"` makes the operator's own parsing strict (the API server has already pruned
    unknown fields, so this only catches mistakes in Python code and tests); `crd.py` drops the
    `additionalProperties: false` this emits, which structural schemas forbid.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="forbid",
        frozen=True,
    )

    def to_json(self) -> dict[str, Any]:
        """The object as Kubernetes JSON: camelCase keys, unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def cel(
    rule: str,
    message: str | None = None,
    *,
    message_expression: str | None = None,
    field_path: str | None = None,
    reason: str | None = None,
) -> dict[str, str]:
    """One `x-kubernetes-validations` entry (a CEL rule the API server evaluates)."""
    entry = {"rule": rule}
    if message is not None:
        entry["message"] = message
    if message_expression is not None:
        entry["messageExpression"] = message_expression
    if field_path is not None:
        entry["fieldPath"] = field_path
    if reason is not None:
        entry["reason"] = reason
    return entry


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    """`json_schema_extra` carrying CEL rules, for `Field(...)` or `model_config`."""
    return {"x-kubernetes-validations": list(rules)}


def immutable(what: str, why: str) -> dict[str, Any]:
    """A transition rule that rejects any change after creation, with a message saying why."""
    return validations(
        cel("self == oldSelf", f"{what} is immutable: {why}", reason="FieldValueForbidden")
    )


def section(model: type[BaseModel], **extra: Any) -> Any:
    """A sub-object field that is always present, filled with its own defaults.

    The schema default is the model's fully defaulted form rather than `{}`: the API server
    validates a default (CEL rules included) as written, without first applying the nested
    defaults, so rules such as `self.a >= self.b` would fail on `{}`. Either way
    `kubectl get -o yaml` shows every defaulted field, as the model does in Python.
    """
    defaults = model().model_dump(mode="json", by_alias=True, exclude_none=True)
    return Field(default_factory=model, json_schema_extra={"default": defaults, **extra})


class SecretKeyRef(ApiModel):
    """A key of a Secret in the AgentPool's namespace (the `secretKeyRef` shape)."""

    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN)
    """Name of the Secret, in the same namespace as the AgentPool."""
    key: str = Field(max_length=253, pattern=CONFIG_KEY, json_schema_extra=validations(cel(
        "self != '.' && !self.startsWith('..')",
        "a Secret key must not be '.' or start with '..' (Kubernetes reserves them)")))
    """Key within the Secret whose value is used."""

    @field_validator("key")
    @classmethod
    def _not_reserved(cls, value: str) -> str:
        # Mirrors the CEL rule, for objects stored before it existed.
        if value == "." or value.startswith(".."):
            raise ValueError("a Secret key must not be '.' or start with '..'")
        return value


class LocalObjectReference(ApiModel):
    """A reference to an object by name in the AgentPool's namespace."""

    name: str = Field(max_length=253, pattern=DNS_SUBDOMAIN)
    """Name of the referenced object."""

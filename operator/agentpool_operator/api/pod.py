"""Pod-level parts of the AgentPool spec: container resources and pod overrides.

These mirror Kubernetes core types closely enough that the operator can copy them into the
Deployment's pod template unchanged. Types that are cheap to describe (tolerations, env,
topology spread) are typed so the API server checks them; deep ones (affinity, `valueFrom`,
label selectors) are kept as free-form objects (`x-kubernetes-preserve-unknown-fields`) and
are validated when the Deployment is applied.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from agent_runtime import contract
from agentpool_operator.api.common import (
    DNS_SUBDOMAIN,
    ApiModel,
    LocalObjectReference,
    cel,
    validations,
)
from agentpool_operator.api.labels import RESERVED_KEY_PREFIX, RESERVED_LABELS
from agentpool_operator.api.quantity import (
    QuantityError,
    ResourceQuantity,
    parse_quantity,
    whole_bytes,
)

# Environment variables the operator sets to configure the runtime.
RESERVED_ENV_PREFIX = contract.RESERVED_ENV_PREFIX

LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
_QUALIFIED_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)

ResourceList = dict[str, ResourceQuantity]
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]


def _keys_rules(kind: str, reserved: tuple[str, ...]) -> dict[str, Any]:
    """CEL rules for a label/annotation map: well-formed keys, none the operator owns."""
    taken = " || ".join(f"k == '{name}'" for name in reserved)
    owned = f"k.startsWith('{RESERVED_KEY_PREFIX}')" + (f" || {taken}" if taken else "")
    reserved_text = ", ".join((f"{RESERVED_KEY_PREFIX}*", *reserved))
    return validations(
        cel(
            f"self.all(k, k.size() <= 317 && k.matches('{_QUALIFIED_KEY}'))",
            f"{kind} keys must be qualified names: an optional DNS-subdomain prefix and '/', "
            "then up to 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric",
        ),
        cel(
            f"self.all(k, !({owned}))",
            f"{kind} {reserved_text} are reserved for the operator; use other keys",
            reason="FieldValueForbidden",
        ),
    )


def _request_within_limit(resource: str) -> dict[str, str]:
    # Only cpu and memory: a rule over every key costs more than the API server's CEL budget.
    # Values are int-or-string (CEL `dyn`), hence `string()`; `isQuantity` leaves malformed
    # values to the schema's pattern check instead of failing here too.
    request, limit = (f"string(self.{part}['{resource}'])" for part in ("requests", "limits"))
    return cel(
        f"!has(self.requests) || !has(self.limits) || !('{resource}' in self.requests) || "
        f"!('{resource}' in self.limits) || !isQuantity({request}) || !isQuantity({limit}) || "
        f"quantity({request}).compareTo(quantity({limit})) <= 0",
        f"resources.requests.{resource} must not exceed resources.limits.{resource}; lower the "
        "request or raise the limit",
    )


def _memory_in_whole_bytes(part: str) -> dict[str, str]:
    # The kubelet rounds a fractional byte count silently; a limit of 0 would mean no limit
    # to Kubernetes but a broken memory breaker to the runtime.
    value = f"string(self.{part}['memory'])"
    positive = f" && quantity({value}).compareTo(quantity('0')) > 0" if part == "limits" else ""
    return cel(
        f"!has(self.{part}) || !('memory' in self.{part}) || !isQuantity({value}) || "
        f"(quantity({value}).isInteger(){positive})",
        f"resources.{part}.memory must be a whole number of bytes"
        + (" above 0" if positive else "")
        + ", e.g. 512Mi or 1Gi (the suffix m means thousandths: 500m is half a byte)",
        field_path=f".{part}",
    )


def _cpu_in_millicores(part: str) -> dict[str, str]:
    value = f"string(self.{part}['cpu'])"
    return cel(
        f"!has(self.{part}) || !('cpu' in self.{part}) || !isQuantity({value}) || "
        f"quantity({value}).compareTo(quantity('0')) == 0 || "
        f"quantity({value}).compareTo(quantity('1m')) >= 0",
        f"resources.{part}.cpu must be 0 or at least 1m (a thousandth of a CPU): Kubernetes "
        "cannot represent less",
        field_path=f".{part}",
    )


# Containers take the standard resources and extended ones (`<domain>/<name>`, outside the
# kubernetes.io domains); hugepages are not offered (they need more than a quantity).
STANDARD_RESOURCES = ("cpu", "memory", "ephemeral-storage")
_EXTENDED_RESOURCE = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?\\.)+[a-z0-9]([-a-z0-9]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"  # noqa: E501
_RESOURCE_NAMES = "[" + ", ".join(f"'{name}'" for name in STANDARD_RESOURCES) + "]"


def _resource_list_rules(part: str) -> dict[str, Any]:
    return validations(
        cel(
            f"self.all(k, k in {_RESOURCE_NAMES} || (k.matches('{_EXTENDED_RESOURCE}') && "
            "!k.contains('kubernetes.io/') && !k.startsWith('requests.')))",
            f"resources.{part} names must be cpu, memory, ephemeral-storage or an extended "
            "resource <domain>/<name> outside kubernetes.io, e.g. nvidia.com/gpu",
        ),
        cel(
            "self.all(k, !k.contains('/') || !isQuantity(string(self[k])) || "
            "quantity(string(self[k])).isInteger())",
            f"resources.{part} of an extended resource (<domain>/<name>) must be whole "
            "numbers: such devices cannot be shared",
        ),
    )


def _extended_requests_equal_limits() -> dict[str, str]:
    value = "string(self.{}[k])"
    request, limit = value.format("requests"), value.format("limits")
    return cel(
        "!has(self.requests) || self.requests.all(k, !k.contains('/') || "
        f"(has(self.limits) && k in self.limits && isQuantity({request}) && "
        f"isQuantity({limit}) && quantity({request}).compareTo(quantity({limit})) == 0))",
        "an extended resource (<domain>/<name>) requested in resources.requests needs the "
        "same amount in resources.limits: Kubernetes does not overcommit devices",
    )


_EXTENDED_RESOURCE_RE = re.compile(_EXTENDED_RESOURCE.replace("\\\\", "\\"))


def _check_resource(part: str, name: str, value: int | str) -> None:
    # Mirrors _resource_list_rules, for objects stored before they existed.
    if name in STANDARD_RESOURCES:
        return
    if (not _EXTENDED_RESOURCE_RE.match(name) or "kubernetes.io/" in name
            or name.startswith("requests.")):
        raise ValueError(f"{part}: {name!r} is not cpu, memory, ephemeral-storage or an "
                         "extended resource <domain>/<name>")
    amount = parse_quantity(value)
    if amount != amount.to_integral_value():
        raise ValueError(f"{part}.{name} must be a whole number")


class ResourceRequirements(ApiModel):
    """Compute resources of the worker container (the Kubernetes ResourceRequirements shape)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            _request_within_limit("cpu"), _request_within_limit("memory"),
            _request_within_limit("ephemeral-storage"), _extended_requests_equal_limits(),
            _memory_in_whole_bytes("requests"), _memory_in_whole_bytes("limits"),
            _cpu_in_millicores("requests"), _cpu_in_millicores("limits"),
        )
    )

    requests: ResourceList | None = Field(default=None, max_length=8,
                                          json_schema_extra=_resource_list_rules("requests"))
    """Minimum resources the scheduler reserves per pod, e.g. {cpu: 500m, memory: 1Gi}."""
    limits: ResourceList | None = Field(default=None, max_length=8,
                                        json_schema_extra=_resource_list_rules("limits"))
    """Maximum resources per pod. A memory limit is enforced for the whole pod's container:
    when any worker pushes it over, the kernel kills every worker in the pod (see
    workers.maxMemoryPerWorker)."""

    @model_validator(mode="after")
    def _sensible_amounts(self) -> ResourceRequirements:
        # Mirrors the CEL rules, for objects stored before they existed.
        for part, values in (("requests", self.requests), ("limits", self.limits)):
            values = values or {}
            try:
                if "memory" in values and (
                        part == "limits" or parse_quantity(values["memory"]) != 0):
                    whole_bytes(values["memory"])
                cpu = parse_quantity(values["cpu"]) if "cpu" in values else None
            except QuantityError as exc:
                raise ValueError(f"{part}.memory: {exc}") from None
            if cpu is not None and 0 < cpu < parse_quantity("1m"):
                raise ValueError(f"{part}.cpu must be 0 or at least 1m")
            for name, value in values.items():
                _check_resource(part, name, value)
        limits = self.limits or {}
        for name, value in (self.requests or {}).items():
            if "/" in name and (name not in limits
                                or parse_quantity(value) != parse_quantity(limits[name])):
                raise ValueError(f"requests.{name}: an extended resource needs the same "
                                 "amount in limits")
        return self


class Toleration(ApiModel):
    """Lets worker pods schedule onto nodes with a matching taint."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.operator != 'Exists' || !has(self.value) || self.value == ''",
                "a toleration with operator Exists matches any value: remove value",
                field_path=".value",
            ),
            cel(
                "has(self.key) || self.operator == 'Exists'",
                "a toleration without key must use operator Exists (it then tolerates "
                "every taint)",
                field_path=".operator",
            ),
        )
    )

    key: str | None = Field(default=None, max_length=317)
    """Taint key the toleration applies to; empty with operator Exists matches all keys."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists matches any value of the key; Equal requires the value to match."""
    value: str | None = Field(default=None, max_length=63)
    """Taint value to match when operator is Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""
    toleration_seconds: int | None = Field(default=None, ge=0)
    """For NoExecute: how long the pod stays bound after the taint appears; unset = forever."""


class TopologySpreadConstraint(ApiModel):
    """How to spread worker pods across a topology domain (zones, nodes).

    Fields not listed here (minDomains, nodeAffinityPolicy, ...) are kept and passed to the
    pod template unchanged.
    """

    model_config = ConfigDict(extra="allow")

    max_skew: int = Field(ge=1)
    """Largest allowed difference in pod count between any two domains."""
    topology_key: str = Field(min_length=1, max_length=317)
    """Node label that defines a domain, e.g. topology.kubernetes.io/zone."""
    when_unsatisfiable: Literal["DoNotSchedule", "ScheduleAnyway"]
    """What to do when the constraint cannot be met: DoNotSchedule or ScheduleAnyway."""
    label_selector: dict[str, Any] | None = None
    """Pods counted when computing skew (a LabelSelector); defaults to this pool's pods."""


class EnvVar(ApiModel):
    """An environment variable for the worker container (the Kubernetes EnvVar shape)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!(has(self.value) && has(self.valueFrom))",
                "set either value or valueFrom, not both",
            ),
        )
    )

    name: str = Field(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    """Variable name. Names starting with AGENTPOOL_ are set by the operator and reserved."""
    value: str | None = None
    """Literal value."""
    value_from: dict[str, Any] | None = None
    """Source for the value (secretKeyRef, configMapKeyRef, fieldRef, resourceFieldRef)."""


class PodOverrides(ApiModel):
    """Scheduling and metadata settings copied into the worker pods' template."""

    node_selector: dict[str, LabelValue] | None = Field(default=None, max_length=64)
    """Node labels a node must have for worker pods to run on it."""
    tolerations: list[Toleration] | None = Field(default=None, max_length=64)
    """Taints the worker pods tolerate."""
    affinity: dict[str, Any] | None = None
    """Node and pod (anti-)affinity (the Kubernetes Affinity shape: nodeAffinity, podAffinity,
    podAntiAffinity); checked by the API server when the operator applies the Deployment."""
    priority_class_name: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN)
    """PriorityClass of the worker pods."""
    topology_spread_constraints: list[TopologySpreadConstraint] | None = Field(
        default=None, max_length=16,
        # Kubernetes' own list-map keys: two constraints on one key and policy are refused.
        json_schema_extra={"x-kubernetes-list-type": "map",
                           "x-kubernetes-list-map-keys": ["topologyKey", "whenUnsatisfiable"]},
    )
    """How worker pods spread across zones or nodes."""
    service_account_name: str | None = Field(default=None, max_length=253, pattern=DNS_SUBDOMAIN)
    """ServiceAccount the worker pods run as; defaults to the namespace's default one."""
    image_pull_secrets: list[LocalObjectReference] | None = Field(default=None, max_length=16)
    """Secrets with registry credentials for pulling the image."""
    env: list[EnvVar] | None = Field(
        default=None,
        max_length=128,
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["name"],
            **validations(
                cel(
                    f"self.all(e, !e.name.startsWith('{RESERVED_ENV_PREFIX}'))",
                    f"env names starting with {RESERVED_ENV_PREFIX} are reserved: the operator "
                    "sets them from the spec; use the matching spec field instead",
                    reason="FieldValueForbidden",
                )
            ),
        },
    )
    """Extra environment variables for the worker container (names must be unique)."""
    labels: dict[str, LabelValue] | None = Field(
        default=None,
        max_length=64,
        json_schema_extra=_keys_rules("pod.labels", RESERVED_LABELS),
    )
    """Extra labels for the worker pods."""
    annotations: dict[str, str] | None = Field(
        default=None, max_length=64, json_schema_extra=_keys_rules("pod.annotations", ())
    )
    """Extra annotations for the worker pods."""

"""hypothesis strategies over the whole grammar of the AgentPool CRD, hostile values included.

Unlike `tests.plugins.crd.agentpool_specs` (valid specs only), these walk the CRD's own
OpenAPI schema, so every field the CRD has (and every field it gains later) is drawn: each
integer at and around its bounds, each string from its pattern or from a catalogue of
realistic and hostile values, quantities at their edges (0, negative, fractions of a byte,
exponents, the int64 limit), every handler form, names up to and past their limits with dots
and leading digits, maps with the operator's own label keys. Cross-field CEL rules are not
modelled; instead a spec is made consistent (bounds ordered, budgets sufficient) most of the
time, so that the API server accepts a useful share of them and the rest probe its rules.

Used by the pure property test (every spec builds or is reported, nothing raises) and by the
e2e test against the real API server (whatever it accepts, the operator builds and the API
server accepts the children).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agentpool_tools.crd import openapi_schema
from hypothesis import strategies as st

from agentpool_operator.api.labels import RESERVED_LABELS

Spec = dict[str, Any]
Strategy = st.SearchStrategy[Any]

# Each catalogue is (usual values, hostile values); a spec draws hostile ones only in its
# hostile half, so the other half is mostly accepted and exercises the builders.
Catalogue = tuple[tuple[Any, ...], tuple[Any, ...]]
QUANTITY_EDGES: Catalogue = (
    (1, "1", "+1Ki", "1.5Gi", "1e3", "1E", "2Ei", 512 * 2**20, "128Mi", "64Mi", "250m", "2",
     "1Gi", "10Gi", "100m"),
    (0, "0", "-1", "-1Gi", "500m", "100u", "1n", "0.5", ".5Mi", "1e-3", "8Ei",
     "9223372036854775807"),
)
NAMES: Catalogue = (
    ("a", "echo", "research-agents", "a" * 50, "x9", "pool-" + "9" * 45),
    ("a" * 51, "a" * 63, "echo.v2", "2nd-pool", "a-", "a..b"),
)
HANDLERS: Catalogue = (
    ("m:f", "echo_agent.tasks:handle", "pkg.mod:Class.method", "_p._q:_r", "a1.b2:c3"),
    ("m:f:g", "m:", ":f", "m.f", "m:f.", "módulo:f", "m :f", "a-b:c", "m:" + "f" * 300),
)
IMAGES: Catalogue = (("registry.example.com/agents/echo:1.0.0", "echo", "img@sha256:0"),
                     ("a b", "x" * 513, " lead"))
LABEL_KEYS: Catalogue = (
    ("team", "example.com/tier", "a" * 63, "app.kubernetes.io/version", "ok_key"),
    ("a" * 64, "-bad", *RESERVED_LABELS, "agentpool.dev/pool", "UPPER/key"),
)
TOLERATION_KEYS: Catalogue = (("dedicated", "example.com/gpu", "node.kubernetes.io/not-ready"),
                              ("bad key!", "-x"))
TOPOLOGY_KEYS: Catalogue = (("topology.kubernetes.io/zone", "kubernetes.io/hostname"),
                            ("bad key!",))
FREE_FORM: dict[str, Catalogue] = {
    ".pod.affinity": ((
        {},
        {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
        {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
            {"weight": 50, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                               "labelSelector": {"matchLabels": {"a": "b"}}}}]}},
    ), ({"nodeAffinity": {"bogus": 1}},)),
    ".pod.env[].valueFrom": ((
        {"fieldRef": {"fieldPath": "metadata.name"}},
        {"secretKeyRef": {"name": "s", "key": "k"}},
        {"configMapKeyRef": {"name": "c", "key": "k", "optional": True}},
        {"resourceFieldRef": {"resource": "limits.memory"}},
    ), ({"fieldRef": {"fieldPath": "no.such.field"}}, {})),
    ".pod.topologySpreadConstraints[].labelSelector": ((
        {"matchLabels": {"app": "x"}},
        {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
    ), ({"matchLabels": {"bad key!": "x"}},)),
}
CATALOGUES: dict[str, Catalogue] = {
    ".handler": HANDLERS,
    ".image": IMAGES,
    ".database.pgbouncer.image": IMAGES,
    ".monitoring.pgbouncerExporter.image": IMAGES,
    ".pod.tolerations[].key": TOLERATION_KEYS,
    ".pod.tolerations[].value": (("", "true", "x" * 63), ("bad value!",)),
    ".pod.topologySpreadConstraints[].topologyKey": TOPOLOGY_KEYS,
}
_RESOURCES: Catalogue = (("cpu", "memory", "ephemeral-storage", "nvidia.com/gpu"), ("bogus!",))
MAP_KEYS: dict[str, Catalogue] = {
    ".pod.labels": LABEL_KEYS,
    ".pod.annotations": LABEL_KEYS,
    ".pod.nodeSelector": LABEL_KEYS,
    ".resources.requests": _RESOURCES,
    ".resources.limits": _RESOURCES,
    ".monitoring.pgbouncerExporter.resources.requests": (("cpu", "memory"), ()),
    ".monitoring.pgbouncerExporter.resources.limits": (("cpu", "memory"), ()),
}
PORT_EDGES = (1024, 6432, 9090, 9127, 65535)


def _rarely(usual: Strategy, unusual: Strategy, hostile: bool) -> Strategy:
    """In a hostile spec, `unusual` one draw in eight: enough to probe each rule, not enough
    to sink every spec; never in the other specs."""
    if not hostile:
        return usual
    return st.integers(0, 7).flatmap(lambda roll: unusual if roll == 0 else usual)


def _pick(catalogue: Catalogue, hostile: bool) -> Strategy:
    usual, unusual = catalogue
    if not unusual:
        return st.sampled_from(usual)
    return _rarely(st.sampled_from(usual), st.sampled_from(unusual), hostile)


def _integer(node: Mapping[str, Any], path: str, hostile: bool) -> Strategy:
    low, high = node.get("minimum", 0), node.get("maximum", 2**31 - 1)
    edges = sorted({v for v in (low, low + 1, high - 1, high, 8) if low <= v <= high})
    if path.endswith(("Port", ".port")):
        edges += [p for p in PORT_EDGES if low <= p <= high]
    inside = st.one_of(st.sampled_from(edges), st.integers(low, min(high, low + 1000)))
    # One past a bound: the API server must refuse it, and so must the operator's model.
    return _rarely(inside, st.sampled_from([low - 1, high + 1]), hostile)


def _string(node: Mapping[str, Any], path: str, hostile: bool) -> Strategy:
    if path in CATALOGUES:
        return _pick(CATALOGUES[path], hostile)
    if "enum" in node:
        return _rarely(st.sampled_from(node["enum"]), st.just("Bogus"), hostile)
    limit = min(int(node.get("maxLength", 40)), 63)
    if "pattern" in node:
        drawn = st.from_regex(node["pattern"], fullmatch=True).filter(
            lambda s: len(s) <= node.get("maxLength", 10**6))
        return _rarely(drawn, st.text(max_size=8), hostile)
    characters = st.characters(codec="utf-8")
    if not hostile:  # no control characters
        characters = st.characters(codec="utf-8", exclude_categories=["C"])
    return st.text(characters, min_size=node.get("minLength", 0), max_size=limit)


def from_schema(node: Mapping[str, Any], path: str = "", hostile: bool = True) -> Strategy:
    """Values for one schema node (and its children)."""
    if path in FREE_FORM:
        return _pick(FREE_FORM[path], hostile)
    if node.get("x-kubernetes-int-or-string"):
        return st.one_of(_pick(QUANTITY_EDGES, hostile),
                         st.from_regex(node["pattern"], fullmatch=True))
    kind = node.get("type")
    if kind == "boolean":
        return st.booleans()
    if kind == "integer":
        return _integer(node, path, hostile)
    if kind == "string":
        return _string(node, path, hostile)
    if kind == "array":
        items = from_schema(node["items"], f"{path}[]", hostile)
        unique = node.get("x-kubernetes-list-map-keys")
        return st.lists(items, min_size=node.get("minItems", 0),
                        max_size=min(node.get("maxItems", 3), 3),
                        unique_by=(lambda item: item.get(unique[0])) if unique else None)
    if kind == "object":
        return _object(node, path, hostile)
    return st.none()


def _object(node: Mapping[str, Any], path: str, hostile: bool) -> Strategy:
    properties = node.get("properties")
    if properties is None:
        values = node.get("additionalProperties")
        if not isinstance(values, Mapping):
            return st.just({})
        keys = _pick(MAP_KEYS.get(path, (("k", "key-2", "x.y/z"), ())), hostile)
        return st.dictionaries(keys, from_schema(values, f"{path}{{}}", hostile),
                               max_size=min(node.get("maxProperties", 4), 4))
    required = set(node.get("required", ()))
    fields = {name: from_schema(child, f"{path}.{name}", hostile)
              for name, child in properties.items()}
    return st.fixed_dictionaries(
        {name: fields[name] for name in sorted(required)},
        optional={name: fields[name] for name in sorted(set(fields) - required)})


def _consistent(spec: Spec) -> Spec:
    """The cross-field CEL rules, satisfied where the drawn values allow (API server's view:
    its defaults applied)."""
    low, high = spec.get("minReplicas", 1), spec.get("maxReplicas", 10)
    low, high = min(low, high), max(low, high)
    if (spec.get("autoscaling") or {}).get("enabled"):
        low = max(low, 1)
        high = max(high, low)
    spec |= {"minReplicas": low, "maxReplicas": high,
             "replicas": min(max(spec.get("replicas", 1), low), high)}
    workers = spec.setdefault("workers", {})
    timeout = workers.get("taskTimeoutSeconds", 300)
    workers["drainGracePeriodSeconds"] = max(workers.get("drainGracePeriodSeconds", 330),
                                             timeout)
    database = spec.get("database")
    if database is not None:
        bouncer = database.setdefault("pgbouncer", {})
        need = workers.get("perPod", 2) * workers.get("concurrency", 8)
        bouncer["maxClientConnections"] = max(bouncer.get("maxClientConnections", 100),
                                              min(need, 100_000))
        database["connectionBudget"] = min(100_000, max(
            database.get("connectionBudget", 1), high * bouncer.get("defaultPoolSize", 5)))
    return spec


_SPEC_SCHEMA = openapi_schema()["properties"]["spec"]
_SPECS = {hostile: from_schema(_SPEC_SCHEMA, "", hostile) for hostile in (False, True)}


@st.composite
def hostile_specs(draw: st.DrawFn) -> Spec:
    """A raw AgentPool spec over the CRD's whole grammar (see the module docstring): half of
    them hostile, most of them made consistent across fields."""
    spec: Spec = draw(_SPECS[draw(st.booleans())])
    if draw(st.integers(0, 3)):  # three times in four
        spec = _consistent(spec)
    return spec


pool_names = st.one_of(
    _pick(NAMES, hostile=True),
    st.from_regex(r"[a-z]([-a-z0-9]{0,48}[a-z0-9])?", fullmatch=True),
    st.from_regex(r"[a-z0-9]([-a-z0-9.]{0,60}[a-z0-9])?", fullmatch=True),
)
"""AgentPool names the API server may or may not accept (DNS subdomains, dots, digits)."""

dsns = st.one_of(
    st.sampled_from((
        "postgresql://app:pw@db.example:5432/agents",
        "postgresql://app:p%40ss@db/agents?sslmode=verify-full&connect_timeout=5",
        "postgresql://app:pw@db/agents?application_name=research",
        "postgresql://app:pa\nss@db/agents",
        "postgresql://app:pw@db/agents?keepalives=1",
        "postgresql://app:pw@db1,db2/agents",
        "postgresql://app:pw@db/pgbouncer",
        "postgresql://app@db/agents",
        "postgresql://app:p#w@db/agents",
        "postgresql://agentpool_stats:pw@db/agents",
        "",
    )),
    st.text(max_size=60).map(lambda tail: f"postgresql://u:{tail}@db/d"),
)
"""Database DSNs a Secret might hold: good, hostile and broken."""

"""pytest plugin for the AgentPool CRD: install it into the test cluster; valid-spec strategies.

`agentpool_crd` (session) applies the CRDs generated from the models (AgentPool's and
AgentBudget's: the same text as the committed `crds/` files, which a unit test keeps in step)
to the `cluster` fixture's API server and waits until they are Established and served.
`agentpool_specs()` is a hypothesis strategy of valid AgentPool specs (camelCase dicts
honouring every schema limit and CEL rule), shared by the unit round-trip test and the e2e
test that sends them to the real API server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from agentpool_tools.crd import CRD_NAME, CRDS
from agentpool_tools.gen_crd import render
from hypothesis import strategies as st

from tests.waiting import eventually

if TYPE_CHECKING:
    from agentpool_dev.cluster import Cluster

Spec = dict[str, Any]


@pytest.fixture(scope="session")
def agentpool_crd(cluster: Cluster) -> dict[str, Any]:
    """The installed AgentPool CRD (as the API server returns it), Established and served;
    the group's other CRDs (AgentBudget) are installed and served with it."""
    cluster.kubectl(
        "apply", "--server-side", "--force-conflicts", "--field-manager=agentpool-tests",
        "-f", "-", input="---\n".join(render(source) for source in CRDS),
    )
    for source in CRDS:
        cluster.wait_condition(f"crd/{source.name}", "Established")
        # Established can precede discovery by a moment; wait until kubectl can list the kind.
        eventually(lambda: cluster.kubectl("get", source.plural, "-A",  # noqa: B023
                                           check=False).returncode == 0, timeout=30)
    installed: dict[str, Any] = json.loads(
        cluster.kubectl("get", "crd", CRD_NAME, "-o", "json").stdout
    )
    return installed


def apply_defaults(value: Any, schema: Mapping[str, Any]) -> Any:
    """The API server's structural defaulting (apiextensions' algorithm), in Python."""
    if isinstance(value, dict):
        props = schema.get("properties", {})
        for name, prop in props.items():
            if name not in value and "default" in prop:
                value[name] = prop["default"]
        for name, child in value.items():
            sub = props.get(name) or schema.get("additionalProperties")
            if isinstance(sub, Mapping):
                apply_defaults(child, sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for item in value:
            apply_defaults(item, schema["items"])
    return value


def load_manifests(text: str) -> list[dict[str, Any]]:
    """The YAML documents of a manifest file (empty documents skipped)."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


# --- hypothesis strategies -------------------------------------------------------------

_IDENT = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,7}", fullmatch=True)
_DNS_LABEL = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?", fullmatch=True)
_LABEL_VALUE = st.from_regex(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?)?", fullmatch=True)
_LABEL_KEY = st.builds(
    lambda prefix, name: f"{prefix}/{name}" if prefix else name,
    st.one_of(st.none(), st.sampled_from(["example.com", "team.example.org", "a1"])),
    st.from_regex(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?", fullmatch=True),
).filter(lambda k: not k.startswith("agentpool.dev/") and not k.startswith("app.kubernetes.io/"))
_SECRET_REF = st.fixed_dictionaries(
    {"name": _DNS_LABEL, "key": st.from_regex(r"[-._a-zA-Z0-9]{1,12}", fullmatch=True).filter(
        lambda key: key != "." and not key.startswith(".."))}
)
_REDIS = st.fixed_dictionaries({"urlSecretRef": _SECRET_REF})
_STREAM = st.from_regex(r"[A-Za-z0-9][-A-Za-z0-9:._{}]{0,20}", fullmatch=True)
_MI = 1024 * 1024


def _memory(mebibytes: int) -> st.SearchStrategy[int | str]:
    """One memory amount written in any of the forms users write."""
    forms: list[int | str] = [mebibytes * _MI, f"{mebibytes}Mi", f"{mebibytes * 1024}Ki"]
    if mebibytes % 1024 == 0:
        forms.append(f"{mebibytes // 1024}Gi")
    return st.sampled_from(forms)


def _cpu(millis: int) -> st.SearchStrategy[int | str]:
    forms: list[int | str] = [f"{millis}m"]
    if millis % 1000 == 0:
        forms += [millis // 1000, str(millis // 1000)]
    return st.sampled_from(forms)


def _maybe(draw: st.DrawFn, spec: Spec, key: str, value: Any) -> None:
    """Set `key` or leave it to the default (for optional, unconstrained-by-default fields)."""
    if draw(st.booleans()):
        spec[key] = value


@st.composite
def _workers_and_resources(draw: st.DrawFn) -> tuple[Spec, Spec]:
    workers: Spec = {}
    timeout = draw(st.integers(1, 3600))
    workers["taskTimeoutSeconds"] = timeout
    workers["drainGracePeriodSeconds"] = draw(st.integers(timeout, timeout + 600))
    _maybe(draw, workers, "perPod", draw(st.integers(1, 16)))
    _maybe(draw, workers, "concurrency", draw(st.integers(1, 32)))
    _maybe(draw, workers, "maxTasksPerWorker", draw(st.integers(0, 100_000)))
    resources: Spec = {}
    if draw(st.booleans()):
        limit_mi = draw(st.integers(64, 64 * 1024))
        request_mi = draw(st.integers(1, limit_mi))
        limit_m = draw(st.integers(1, 16)) * 250
        resources["limits"] = {"memory": draw(_memory(limit_mi)), "cpu": draw(_cpu(limit_m))}
        resources["requests"] = {"memory": draw(_memory(request_mi)),
                                 "cpu": draw(_cpu(draw(st.integers(1, limit_m))))}
        if draw(st.booleans()):
            workers["maxMemoryPerWorker"] = draw(_memory(draw(st.integers(1, limit_mi - 1))))
    elif draw(st.booleans()):
        workers["maxMemoryPerWorker"] = draw(_memory(draw(st.integers(1, 8192))))
    return workers, resources


@st.composite
def _pod(draw: st.DrawFn) -> Spec:
    pod: Spec = {}
    _maybe(draw, pod, "nodeSelector", draw(st.dictionaries(_LABEL_KEY, _LABEL_VALUE, max_size=3)))
    _maybe(draw, pod, "labels", draw(st.dictionaries(_LABEL_KEY, _LABEL_VALUE, max_size=3)))
    _maybe(draw, pod, "annotations", draw(st.dictionaries(_LABEL_KEY, st.text(max_size=20),
                                                          max_size=3)))
    _maybe(draw, pod, "priorityClassName", draw(_DNS_LABEL))
    _maybe(draw, pod, "serviceAccountName", draw(_DNS_LABEL))
    _maybe(draw, pod, "tolerations", draw(st.lists(st.one_of(
        st.fixed_dictionaries({"key": _DNS_LABEL, "operator": st.just("Equal"),
                               "value": _LABEL_VALUE},
                              optional={"effect": st.sampled_from(["NoSchedule", "NoExecute"])}),
        st.fixed_dictionaries({"operator": st.just("Exists")},
                              optional={"tolerationSeconds": st.integers(0, 3600)}),
    ), max_size=3)))
    _maybe(draw, pod, "topologySpreadConstraints", draw(st.lists(st.fixed_dictionaries(
        {"maxSkew": st.integers(1, 5), "topologyKey": st.just("topology.kubernetes.io/zone"),
         "whenUnsatisfiable": st.sampled_from(["DoNotSchedule", "ScheduleAnyway"])},
        optional={"minDomains": st.integers(1, 3)},  # kept although the model does not type it
    ), max_size=2, unique_by=lambda c: (c["topologyKey"], c["whenUnsatisfiable"]))))
    env_names = draw(st.lists(st.from_regex(r"[A-Z][A-Z0-9_]{0,10}", fullmatch=True)
                              .filter(lambda n: not n.startswith("AGENTPOOL_")),
                              unique=True, max_size=3))
    if env_names:
        pod["env"] = [{"name": n, "value": draw(st.text(max_size=10))} for n in env_names]
    return pod


@st.composite
def _database(draw: st.DrawFn, max_replicas: int, clients_needed: int) -> Spec:
    pool_size = draw(st.integers(1, 20))
    bouncer: Spec = {"defaultPoolSize": pool_size}
    _maybe(draw, bouncer, "poolMode", draw(st.sampled_from(["session", "transaction"])))
    bouncer["maxClientConnections"] = draw(st.integers(max(clients_needed, 1), 5000))
    return {
        "dsnSecretRef": draw(_SECRET_REF),
        "connectionBudget": draw(st.integers(max_replicas * pool_size, 100_000)),
        "pgbouncer": bouncer,
    }


@st.composite
def agentpool_specs(draw: st.DrawFn) -> Spec:
    """A valid AgentPool spec (camelCase, as a user would write it)."""
    modules = draw(st.lists(_IDENT, min_size=1, max_size=3))
    spec: Spec = {
        "image": draw(st.from_regex(r"[a-z0-9][a-z0-9./-]{0,30}(:[a-z0-9.]{1,8})?",
                                    fullmatch=True)),
        "handler": ".".join(modules) + ":" + draw(_IDENT),
        "queue": {"redis": draw(_REDIS)},
    }
    minimum = draw(st.integers(0, 20))
    maximum = draw(st.integers(max(minimum, 1), 200))
    spec.update(minReplicas=minimum, maxReplicas=maximum,
                replicas=draw(st.integers(minimum, maximum)))
    workers, resources = draw(_workers_and_resources())
    spec["workers"] = workers
    _maybe(draw, spec, "resources", resources)
    _maybe(draw, spec["queue"], "stream", draw(_STREAM))
    _maybe(draw, spec["queue"], "leaseSeconds", draw(st.integers(5, 3600)))
    _maybe(draw, spec["queue"], "maxDeliveries", draw(st.integers(1, 1000)))
    _maybe(draw, spec, "cache", {"enabled": draw(st.booleans()),
                                 "ttlSeconds": draw(st.integers(1, 86400))})
    if draw(st.booleans()):
        clients = workers.get("perPod", 2) * workers.get("concurrency", 8)
        spec["database"] = draw(_database(maximum, clients))
    if minimum >= 1:
        _maybe(draw, spec, "autoscaling", {
            "enabled": draw(st.booleans()),
            "targetBacklogPerWorker": draw(st.integers(1, 100)),
            "scaleDown": {"stabilizationWindowSeconds": draw(st.integers(0, 3600)),
                          "policies": [{"type": draw(st.sampled_from(["Pods", "Percent"])),
                                        "value": draw(st.integers(1, 100)),
                                        "periodSeconds": draw(st.integers(1, 1800))}]},
        })
    metrics = draw(st.booleans())
    spec["monitoring"] = {"metrics": metrics, "podMonitor": metrics and draw(st.booleans())}
    _maybe(draw, spec, "pod", draw(_pod()))
    _maybe(draw, spec, "imagePullPolicy", draw(st.sampled_from(["Always", "IfNotPresent"])))
    return spec

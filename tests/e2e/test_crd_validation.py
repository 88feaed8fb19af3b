"""The real API server rejects every manifest of the invalid catalogue, with its message.

Each file under tests/data/invalid/ says in a `# expect:` header line what the API server's
error must contain; those messages come from the CRD's schema and CEL rules only (nothing
is checked in Python first). Updates are covered too: immutable fields and the bounds that
`kubectl scale` must respect.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agentpool_dev.cluster import Cluster

pytestmark = pytest.mark.cluster

INVALID = sorted((Path(__file__).resolve().parents[1] / "data" / "invalid").glob("*.yaml"))
MINIMAL_SPEC: dict[str, Any] = {
    "image": "registry.example.com/agents/echo:1.0.0",
    "handler": "echo_agent.tasks:handle",
    "queue": {"redis": {"urlSecretRef": {"name": "redis", "key": "url"}}},
}


def expectations(path: Path) -> list[str]:
    prefix = "# expect: "
    return [line[len(prefix):] for line in path.read_text().splitlines()
            if line.startswith(prefix)]


def pool(name: str, namespace: str, **spec: Any) -> str:
    return json.dumps({"apiVersion": "agentpool.dev/v1alpha1", "kind": "AgentPool",
                       "metadata": {"name": name, "namespace": namespace},
                       "spec": {**MINIMAL_SPEC, **spec}})


def test_the_catalogue_has_at_least_30_cases() -> None:
    assert len(INVALID) >= 30


@pytest.mark.parametrize("manifest", INVALID, ids=lambda p: p.stem)
def test_invalid_manifest_is_rejected_with_a_clear_message(
    cluster: Cluster, agentpool_crd: dict[str, Any], namespace: str, manifest: Path
) -> None:
    expected = expectations(manifest)
    assert expected, f"{manifest.name} has no '# expect:' line"
    result = cluster.kubectl("apply", "-n", namespace, "-f", "-",
                             input=manifest.read_text(), check=False)
    assert result.returncode != 0, f"accepted: {result.stdout}"
    for fragment in expected:
        assert fragment in result.stderr
    assert cluster.kubectl("get", "agentpools", "-n", namespace, "-o", "name").stdout == ""


def patch(cluster: Cluster, namespace: str, name: str, kind: str, body: Any) -> Any:
    return cluster.kubectl("patch", "agentpool", name, "-n", namespace, f"--type={kind}",
                           "-p", json.dumps(body), check=False)


def test_queue_stream_cannot_be_set_changed_or_removed(
    cluster: Cluster, agentpool_crd: dict[str, Any], namespace: str
) -> None:
    cluster.kubectl("apply", "-f", "-", input=pool("derived", namespace))
    cluster.kubectl("apply", "-f", "-", input=pool(
        "named", namespace, queue={**MINIMAL_SPEC["queue"], "stream": "tasks-a"}))
    attempts = [
        ("derived", "merge", {"spec": {"queue": {"stream": "tasks-b"}}}),
        ("named", "merge", {"spec": {"queue": {"stream": "tasks-b"}}}),
        ("named", "json", [{"op": "remove", "path": "/spec/queue/stream"}]),
    ]
    for name, kind, body in attempts:
        result = patch(cluster, namespace, name, kind, body)
        assert result.returncode != 0, (name, body)
        assert "spec.queue.stream: Forbidden: queue.stream is immutable" in result.stderr
    assert cluster.kubectl_json("get", "agentpool", "named", "-n", namespace)["spec"]["queue"][
        "stream"] == "tasks-a"


def test_consumer_group_is_immutable_but_other_queue_fields_are_not(
    cluster: Cluster, agentpool_crd: dict[str, Any], namespace: str
) -> None:
    cluster.kubectl("apply", "-f", "-", input=pool("p", namespace))
    result = patch(cluster, namespace, "p", "merge",
                   {"spec": {"queue": {"consumerGroup": "others"}}})
    assert result.returncode != 0
    assert "spec.queue.consumerGroup: Forbidden: queue.consumerGroup is immutable" in result.stderr
    changed = patch(cluster, namespace, "p", "merge",
                    {"spec": {"queue": {"leaseSeconds": 45, "maxDeliveries": 2}}})
    assert changed.returncode == 0, changed.stderr


def test_kubectl_scale_respects_the_replica_bounds(
    cluster: Cluster, agentpool_crd: dict[str, Any], namespace: str
) -> None:
    cluster.kubectl("apply", "-f", "-", input=pool("p", namespace, maxReplicas=5))
    cluster.kubectl("scale", "agentpool/p", "-n", namespace, "--replicas=4")
    assert cluster.kubectl_json("get", "agentpool", "p", "-n", namespace)["spec"]["replicas"] == 4
    result = cluster.kubectl("scale", "agentpool/p", "-n", namespace, "--replicas=6", check=False)
    assert result.returncode != 0
    assert "spec.replicas must be between spec.minReplicas and spec.maxReplicas" in result.stderr
    # Cross-field rules hold on updates too, e.g. lowering maxReplicas below replicas.
    lowered = patch(cluster, namespace, "p", "merge", {"spec": {"maxReplicas": 2}})
    assert lowered.returncode != 0
    assert "spec.replicas must be between" in lowered.stderr

"""The reconcile's plan, applier and status writer against an in-memory cluster: which
requests one reconcile makes, what status it writes and what the work queue is told.

Table-driven: each case sets the cluster up, reconciles the pool once (or twice), and states
the requests, the Degraded reason and the outcome. The e2e tests run the same behaviour
against the real API server; these pin the exact request sequences cheaply.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from agentpool_operator.instrumentation import OperatorMetrics
from agentpool_operator.reconcile import Reconciler
from agentpool_operator.workqueue import Requeue
from tests.unit.operator.fake_cluster import FakeCluster

NS, NAME, UID = "agents", "echo", "pool-uid-1"
POOL_KEY = (NS, NAME)
REDIS = {"url": "redis://r:6379/0"}
SPEC: dict[str, Any] = {
    "image": "ghcr.io/example/echo-agent:0.1.0", "handler": "echo_agent.tasks:handle",
    "queue": {"redis": {"urlSecretRef": {"name": "echo-redis", "key": "url"}}},
}
DATABASE = {"dsnSecretRef": {"name": "db", "key": "dsn"}, "connectionBudget": 50}
CHILDREN = [("apply", "ConfigMap", "echo-config"), ("apply", "Service", "echo"),
            ("apply", "PodDisruptionBudget", "echo"), ("apply", "Deployment", "echo")]


def pool_object(spec: dict[str, Any], name: str = NAME, uid: str = UID,
                created: str = "2026-12-01T00:00:00Z") -> dict[str, Any]:
    return {"apiVersion": "agentpool.dev/v1alpha1", "kind": "AgentPool",
            "metadata": {"name": name, "namespace": NS, "uid": uid, "generation": 1,
                         "creationTimestamp": created},
            "spec": copy.deepcopy(spec)}


def reconciler(cluster: FakeCluster) -> Reconciler:
    metrics = OperatorMetrics(lambda: {})
    return Reconciler.for_cluster(cluster.as_kube(), metrics)


async def reconcile(r: Reconciler, cluster: FakeCluster, key: tuple[str, str] = POOL_KEY
                    ) -> str:
    """One reconcile of `key` as the work queue runs it; what the queue is told."""
    pool = cluster.objects[("agentpool.dev/v1alpha1", "AgentPool", *key)]
    r.store.pool_event(key, copy.deepcopy(pool), deleted=False)
    try:
        await r(key)
    except Requeue as requeue:
        return f"requeue {requeue.delay:.0f}s"
    return "done"


def degraded(cluster: FakeCluster, name: str = NAME) -> str | None:
    pool = cluster.objects[("agentpool.dev/v1alpha1", "AgentPool", NS, name)]
    conditions = {c["type"]: c for c in (pool.get("status") or {}).get("conditions", [])}
    condition = conditions.get("Degraded") or {}
    return condition.get("reason") if condition.get("status") == "True" else None


@dataclass
class Case:
    name: str
    spec: dict[str, Any] = field(default_factory=lambda: SPEC)
    setup: Callable[[FakeCluster], None] = lambda cluster: None
    requests: list[tuple[str, str, str]] = field(default_factory=list)
    """The writes (applies, deletes, status) of the reconcile, in order."""
    reason: str | None = None
    outcome: str = "done"


def _someone_elses_config_map(cluster: FakeCluster) -> None:
    cluster.put({"apiVersion": "v1", "kind": "ConfigMap", "data": {"mine": "yes"},
                 "metadata": {"name": "echo-config", "namespace": NS}})


def _refuse_deployments(cluster: FakeCluster) -> None:
    cluster.refuse[("apps/v1", "Deployment")] = 422


def _database(dsn: str) -> Callable[[FakeCluster], None]:
    def setup(cluster: FakeCluster) -> None:
        cluster.secrets[(NS, "db")] = {"dsn": dsn}
    return setup


CASES = [
    Case("a new pool gets its children in order and one status write",
         requests=[*CHILDREN, ("status", "AgentPool", "echo")]),
    Case("a database adds the derived Secret before the Deployment",
         spec={**SPEC, "database": DATABASE},
         setup=_database("postgresql://app:pw@db.example/agents"),
         requests=[("apply", "ConfigMap", "echo-config"), ("apply", "Secret", "echo-pgbouncer"),
                   *CHILDREN[1:], ("status", "AgentPool", "echo")]),
    Case("an object with a child's name that is not ours is reported, not applied",
         setup=_someone_elses_config_map, requests=[("status", "AgentPool", "echo")],
         reason="ChildConflict", outcome="requeue 30s"),
    Case("a referenced Secret that does not exist blocks and is looked for again",
         setup=lambda cluster: cluster.secrets.clear(),
         requests=[("status", "AgentPool", "echo")], reason="SecretMissing",
         outcome="requeue 10s"),
    Case("a DSN PgBouncer cannot carry out is reported and not retried",
         spec={**SPEC, "database": DATABASE},
         setup=_database("postgresql://app:pw@db/agents?keepalives=1"),
         requests=[("status", "AgentPool", "echo")], reason="InvalidDatabaseDSN"),
    Case("a child the API server refuses for good is reported, counted, not retried",
         setup=_refuse_deployments, requests=[*CHILDREN, ("status", "AgentPool", "echo")],
         reason="ApplyFailed"),
    Case("a spec the model refuses is InvalidSpec without a request",
         spec={**SPEC, "handler": "not a handler"}, requests=[("status", "AgentPool", "echo")],
         reason="InvalidSpec"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
async def test_one_reconcile(case: Case) -> None:
    cluster = FakeCluster(secrets={(NS, "echo-redis"): REDIS})
    cluster.put(pool_object(case.spec))
    case.setup(cluster)
    r = reconciler(cluster)
    outcome = await reconcile(r, cluster)
    assert cluster.writes() == case.requests
    assert degraded(cluster) == case.reason
    assert outcome == case.outcome


async def test_a_second_reconcile_of_an_unchanged_pool_writes_nothing() -> None:
    cluster = FakeCluster(secrets={(NS, "echo-redis"): REDIS})
    cluster.put(pool_object(SPEC))
    r = reconciler(cluster)
    await reconcile(r, cluster)
    before = len(cluster.writes())
    for child in [k for k in cluster.objects if k[1] != "AgentPool"]:
        r.store.child_event(child[0], child[1], cluster.objects[child], "ADDED")
    r.store.request_full(POOL_KEY)
    await reconcile(r, cluster)
    assert cluster.writes()[before:] == []


async def test_a_refused_manifest_is_not_sent_again_until_it_changes() -> None:
    cluster = FakeCluster(secrets={(NS, "echo-redis"): REDIS},
                          refuse={("apps/v1", "Deployment"): 422})
    cluster.put(pool_object(SPEC))
    r = reconciler(cluster)
    await reconcile(r, cluster)
    r.store.request_full(POOL_KEY)
    await reconcile(r, cluster)
    assert cluster.requests.count(("apply", "Deployment", "echo")) == 1
    assert [e[1] for e in cluster.events].count("ApplyFailed") == 1
    # A changed spec builds another manifest: it is sent.
    pool = cluster.objects[("agentpool.dev/v1alpha1", "AgentPool", NS, NAME)]
    pool["spec"]["workers"] = {"concurrency": 4}
    pool["metadata"]["generation"] = 2
    await reconcile(r, cluster)
    assert cluster.requests.count(("apply", "Deployment", "echo")) == 2


async def test_a_pdb_an_edit_made_invalid_for_our_apply_is_made_anew() -> None:
    cluster = FakeCluster(secrets={(NS, "echo-redis"): REDIS})
    cluster.put(pool_object(SPEC))
    r = reconciler(cluster)
    await reconcile(r, cluster)
    # Someone replaced our maxUnavailable with minAvailable: our apply cannot remove theirs.
    pdb_key = ("policy/v1", "PodDisruptionBudget", NS, NAME)
    spec = cluster.objects[pdb_key]["spec"]
    del spec["maxUnavailable"]
    spec["minAvailable"] = 1
    r.store.child_event("policy/v1", "PodDisruptionBudget", cluster.objects[pdb_key],
                        "MODIFIED")
    cluster.refuse_once[("policy/v1", "PodDisruptionBudget")] = 422
    first = len(cluster.requests)
    await reconcile(r, cluster)
    assert [w for w in cluster.requests[first:] if w[0] in ("apply", "delete")] == [
        ("apply", "PodDisruptionBudget", "echo"), ("delete", "PodDisruptionBudget", "echo"),
        ("apply", "PodDisruptionBudget", "echo")]
    assert "minAvailable" not in cluster.objects[pdb_key]["spec"]
    assert any("(re-created)" in message for _, _, message in cluster.events)


async def test_a_second_pool_on_the_same_queue_is_not_started() -> None:
    cluster = FakeCluster(secrets={(NS, "echo-redis"): REDIS})
    shared = {**SPEC, "queue": {**SPEC["queue"], "stream": "shared:tasks"}}
    cluster.put(pool_object(shared))
    cluster.put(pool_object(shared, name="echo-2", uid="pool-uid-2",
                            created="2026-12-02T00:00:00Z"))
    r = reconciler(cluster)
    for key in (POOL_KEY, (NS, "echo-2")):
        r.store.pool_event(key, cluster.objects[("agentpool.dev/v1alpha1", "AgentPool",
                                                 *key)], deleted=False)
    await reconcile(r, cluster, (NS, "echo-2"))
    assert degraded(cluster, "echo-2") == "QueueConflict"
    assert [w for w in cluster.writes() if w[0] == "apply"] == []
    await reconcile(r, cluster)
    assert degraded(cluster) is None

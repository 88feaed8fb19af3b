"""AgentBudgets against the real control plane and the operator: a pool referencing a budget
gets its keys in the runtime config and its API key by secretKeyRef (never the value); a pool
referencing a budget not shared with its namespace is Degraded until the budget's owner
shares it; the budget's status lists the pools using it, and shows a key saturated while work
waits on it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis

from agent_runtime.contract import BudgetKeys, budget_api_key_env
from agentpool_dev.cluster import Cluster
from tests.plugins.operator import OperatorProcess, Pools
from tests.waiting import eventually

pytestmark = pytest.mark.cluster
API_KEY = "sk-never-in-the-config-" + uuid.uuid4().hex


def budget(name: str, namespace: str, shared_with: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"keys": [
        {"name": "openai", "requestsPerMinute": 500, "tokensPerMinute": 90000,
         "secretRef": {"name": "openai", "key": "api-key"}},
        {"name": "search", "requestsPerSecond": 10}]}
    if shared_with is not None:
        spec["sharedWith"] = {"namespaces": shared_with}
    return {"apiVersion": "agentpool.dev/v1alpha1", "kind": "AgentBudget",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


@pytest.fixture
def platform(cluster: Cluster) -> Iterator[str]:
    name = f"platform-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def degraded_reason(pools: Pools, name: str) -> str | None:
    condition = pools.condition(name, "Degraded") or {}
    return condition.get("reason") if condition.get("status") == "True" else None


def budget_status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    body = json.loads(cluster.kubectl("-n", namespace, "get", "agentbudget", name,
                                      "-o", "json").stdout)
    status: dict[str, Any] = body.get("status") or {}
    return status


def test_a_pool_gets_its_budgets_keys_and_the_api_key_by_reference(
        operator: OperatorProcess, pools: Pools) -> None:
    pools.secret("openai", {"api-key": API_KEY})
    pools.cluster.kubectl("apply", "-f", "-", input=json.dumps(budget("llm", pools.namespace)))
    pools.create("nu", budgets=[{"name": "llm"}])
    pools.wait_ready("nu")

    config_map = pools.get("configmap", "nu-config") or {}
    config = json.loads(config_map["data"]["runtime.yaml"])
    assert [(k["name"], k["budget"]) for k in config["budgets"]] == [
        ("openai", f"{pools.namespace}/llm"), ("search", f"{pools.namespace}/llm")]
    assert config["budgets"][0]["tokens_per_minute"] == 90000
    deployment = pools.get("deployment", "nu") or {}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env[budget_api_key_env("openai")]["valueFrom"] == {
        "secretKeyRef": {"name": "openai", "key": "api-key"}}
    assert API_KEY not in json.dumps(config_map) + json.dumps(deployment)

    status = eventually(lambda: (s := budget_status(pools.cluster, pools.namespace, "llm"))
                        .get("poolCount") == 1 and s)
    assert status["pools"] == [f"{pools.namespace}/nu"]
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert (ready["status"], ready["observedGeneration"]) == ("True", 1)
    listed = pools.cluster.kubectl("-n", pools.namespace, "get", "agb").stdout.split()
    assert listed[:10] == ["NAME", "KEYS", "POOLS", "READY", "SATURATED", "AGE", "llm", "2",
                           "1", "True"]
    # Nothing uses the key; Unknown while the pool's Redis (a placeholder URL) is not read.
    assert listed[10] in ("False", "Unknown")
    # `kubectl get agentpool NAME` still finds the pool alone (no category shared with it).
    pools.cluster.kubectl("-n", pools.namespace, "get", "agentpool", "nu")


def test_a_budget_not_shared_with_the_pools_namespace_degrades_it_until_shared(
        operator: OperatorProcess, pools: Pools, platform: str) -> None:
    pools.cluster.kubectl("apply", "-f", "-", input=json.dumps(budget("shared", platform)))
    pools.create("xi", budgets=[{"name": "shared", "namespace": platform}])
    eventually(lambda: degraded_reason(pools, "xi") == "BudgetNotShared")
    message = (pools.condition("xi", "Degraded") or {})["message"]
    assert f"add '{pools.namespace}' to its spec.sharedWith.namespaces" in message
    assert pools.get("deployment", "xi") is None
    assert budget_status(pools.cluster, platform, "shared").get("poolCount", 0) == 0

    # The budget's owner shares it: the watch reconciles the pool at once (resync is longer).
    pools.cluster.kubectl("apply", "-f", "-",
                          input=json.dumps(budget("shared", platform, [pools.namespace])))
    pools.wait_ready("xi", timeout=30)
    assert degraded_reason(pools, "xi") is None
    config = json.loads((pools.get("configmap", "xi-config") or {})["data"]["runtime.yaml"])
    assert {k["budget"] for k in config["budgets"]} == {f"{platform}/shared"}
    # No copy of the API key in the pool's namespace was referenced: limits only.
    assert not any(k.get("has_api_key") for k in config["budgets"])
    eventually(lambda: budget_status(pools.cluster, platform, "shared").get("pools")
               == [f"{pools.namespace}/xi"])


def test_a_missing_budget_is_reported_and_its_creation_fixes_the_pool(
        operator: OperatorProcess, pools: Pools) -> None:
    pools.create("omicron", budgets=[{"name": "later"}])
    eventually(lambda: degraded_reason(pools, "omicron") == "BudgetNotFound")
    pools.cluster.kubectl("apply", "-f", "-",
                          input=json.dumps(budget("later", pools.namespace)))
    pools.wait_ready("omicron", timeout=30)


def saturation(cluster: Cluster, namespace: str, name: str
               ) -> tuple[str | None, dict[str, bool]]:
    """The Saturated condition's status and each key's `saturated`."""
    status = budget_status(cluster, namespace, name)
    condition: dict[str, Any] = next((c for c in status.get("conditions") or []
                      if c["type"] == "Saturated"), {})
    return condition.get("status"), {k["name"]: k["saturated"] for k in status.get("keys") or []}


@pytest.mark.services
@pytest.mark.slow
def test_the_budget_status_shows_a_key_saturated_while_work_waits_on_it(
        operator: OperatorProcess, pools: Pools, redis_url: str) -> None:
    pools.secret("pi-redis", {"url": redis_url})
    pools.cluster.kubectl("apply", "-f", "-", input=json.dumps(budget("waits", pools.namespace)))
    pools.create("pi", with_secret=False, budgets=[{"name": "waits"}])
    eventually(lambda: saturation(pools.cluster, pools.namespace, "waits") == (
        "False", {"openai": False, "search": False}), timeout=90)
    # What a pod's task waiting for a permit writes (no runtime runs on KWOK): its entry on
    # the key's board, with a far-future deadline so no refresh is needed.
    board = BudgetKeys.for_id(f"{pools.namespace}/waits/openai").waiting
    with Redis.from_url(redis_url) as redis:
        now_s, _ = redis.time()
        redis.zadd(board, {"task-1": (int(now_s) + 600) * 1000})
        try:
            eventually(lambda: saturation(pools.cluster, pools.namespace, "waits") == (
                "True", {"openai": True, "search": False}), timeout=90)
            key = budget_status(pools.cluster, pools.namespace, "waits")["keys"][0]
            assert (key["name"], key["reason"]) == ("openai", "TasksWaiting")
        finally:
            redis.delete(board)
    eventually(lambda: saturation(pools.cluster, pools.namespace, "waits") == (
        "False", {"openai": False, "search": False}), timeout=90)

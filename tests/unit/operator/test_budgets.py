"""A pool's AgentBudgets through one reconcile against the in-memory cluster: the keys reach
the runtime's config and the API keys its environment (by reference only); a budget that is
missing, not shared with the pool's namespace, or defining a key another one does, makes the
pool Degraded with its own reason and creates nothing; a budget's change reconciles the pools
naming it; the budget's status lists the pools using it and its keys' saturation, written only
when it changes."""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent_runtime.contract import budget_api_key_env
from agentpool_operator.api import AgentPoolSpec
from agentpool_operator.budget_saturation import KeyReading, ServerReading
from agentpool_operator.budget_status import BudgetStatusWriter
from agentpool_operator.budget_usage import BudgetUsageReader
from agentpool_operator.workqueue import Requeue
from tests.unit.operator.fake_cluster import FakeCluster
from tests.unit.operator.test_reconcile_steps import (
    CHILDREN,
    NS,
    POOL_KEY,
    REDIS,
    SPEC,
    degraded,
    pool_object,
    reconcile,
    reconciler,
)

API = "agentpool.dev/v1alpha1"
OPENAI = {"name": "openai", "requestsPerMinute": 500, "tokensPerMinute": 90_000,
          "secretRef": {"name": "openai", "key": "api-key"}}
SEARCH = {"name": "search", "requestsPerSecond": 10}


def budget(name: str, keys: list[dict[str, Any]], namespace: str = NS,
           shared_with: list[str] | None = None, generation: int = 1) -> dict[str, Any]:
    spec: dict[str, Any] = {"keys": keys}
    if shared_with is not None:
        spec["sharedWith"] = {"namespaces": shared_with}
    return {"apiVersion": API, "kind": "AgentBudget",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}",
                         "generation": generation},
            "spec": spec}


def with_budgets(*refs: dict[str, Any]) -> dict[str, Any]:
    return {**SPEC, "budgets": list(refs)}


def runtime_config(cluster: FakeCluster) -> dict[str, Any]:
    config_map = cluster.objects[("v1", "ConfigMap", NS, "echo-config")]
    parsed: dict[str, Any] = json.loads(config_map["data"]["runtime.yaml"])
    return parsed


def runtime_env(cluster: FakeCluster) -> dict[str, Any]:
    deployment = cluster.objects[("apps/v1", "Deployment", NS, "echo")]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("valueFrom", e.get("value")) for e in container["env"]}


async def test_a_budget_in_the_pools_namespace_gives_its_keys_and_api_key_by_reference(
) -> None:
    cluster = FakeCluster(secrets={(NS, "echo-redis"): REDIS})
    cluster.put(budget("llm", [OPENAI, SEARCH]))
    cluster.put(pool_object(with_budgets({"name": "llm"})))
    r = reconciler(cluster)
    assert await reconcile(r, cluster) == "done"
    assert degraded(cluster) is None
    assert runtime_config(cluster)["budgets"] == [
        {"name": "openai", "budget": f"{NS}/llm", "requests_per_minute": 500,
         "tokens_per_minute": 90_000, "has_api_key": True},
        {"name": "search", "budget": f"{NS}/llm", "requests_per_second": 10}]
    env = runtime_env(cluster)
    assert env[budget_api_key_env("openai")] == {
        "secretKeyRef": {"name": "openai", "key": "api-key"}}
    assert budget_api_key_env("search") not in env
    # The operator never read the API key's Secret.
    assert ("get", "Secret", "openai") not in cluster.requests


async def test_a_shared_budget_uses_the_pools_own_copy_of_the_api_key() -> None:
    cluster = FakeCluster(secrets={(NS, "echo-redis"): REDIS})
    cluster.put(budget("llm", [OPENAI], namespace="platform", shared_with=[NS]))
    cluster.put(pool_object(with_budgets(
        {"name": "llm", "namespace": "platform", "secretRef": {"name": "llm-keys"}})))
    r = reconciler(cluster)
    assert await reconcile(r, cluster) == "done"
    (key,) = runtime_config(cluster)["budgets"]
    assert (key["budget"], key["has_api_key"]) == ("platform/llm", True)
    assert runtime_env(cluster)[budget_api_key_env("openai")] == {
        "secretKeyRef": {"name": "llm-keys", "key": "openai"}}


async def test_a_shared_budget_without_the_pools_copy_gives_limits_but_no_api_key() -> None:
    cluster = FakeCluster(secrets={(NS, "echo-redis"): REDIS})
    cluster.put(budget("llm", [OPENAI], namespace="platform", shared_with=[NS]))
    cluster.put(pool_object(with_budgets({"name": "llm", "namespace": "platform"})))
    r = reconciler(cluster)
    assert await reconcile(r, cluster) == "done"
    (key,) = runtime_config(cluster)["budgets"]
    assert "has_api_key" not in key  # the default, False: a Secret in another namespace
    assert budget_api_key_env("openai") not in runtime_env(cluster)


@dataclass
class Refusal:
    name: str
    spec: dict[str, Any]
    budgets: list[dict[str, Any]] = field(default_factory=list)
    reason: str = ""
    says: str = ""


REFUSALS = [
    Refusal("a budget that does not exist", with_budgets({"name": "llm"}),
            reason="BudgetNotFound", says=f"AgentBudget {NS}/llm (referenced by "
            "spec.budgets[0]) does not exist"),
    Refusal("a budget of another namespace not shared with the pool's",
            with_budgets({"name": "llm", "namespace": "platform"}),
            [budget("llm", [OPENAI], namespace="platform", shared_with=["other"])],
            reason="BudgetNotShared",
            says=f"add '{NS}' to its spec.sharedWith.namespaces"),
    Refusal("two budgets defining the same key",
            with_budgets({"name": "a"}, {"name": "b"}),
            [budget("a", [OPENAI]), budget("b", [SEARCH, {**OPENAI, "requestsPerMinute": 9}])],
            reason="BudgetKeyConflict",
            says=f"AgentBudget {NS}/b (referenced by spec.budgets[1]) and AgentBudget {NS}/a "
            "both define the key 'openai'"),
]


@pytest.mark.parametrize("case", REFUSALS, ids=lambda case: case.name)
async def test_budgets_a_pool_cannot_use_degrade_it_and_create_nothing(case: Refusal) -> None:
    cluster = FakeCluster(secrets={(NS, "echo-redis"): REDIS})
    for body in case.budgets:
        cluster.put(body)
    cluster.put(pool_object(case.spec))
    r = reconciler(cluster)
    # Not retried on a timer: a budget's creation or change reconciles the pool (below).
    assert await reconcile(r, cluster) == "done"
    assert cluster.writes() == [("status", "AgentPool", "echo")]
    assert degraded(cluster) == case.reason
    pool = cluster.objects[(API, "AgentPool", NS, "echo")]
    (ready,) = [c for c in pool["status"]["conditions"] if c["type"] == "Degraded"]
    assert case.says in ready["message"]


async def test_sharing_the_budget_reconciles_the_pool_and_fixes_it() -> None:
    cluster = FakeCluster(secrets={(NS, "echo-redis"): REDIS})
    unshared = budget("llm", [OPENAI], namespace="platform")
    cluster.put(unshared)
    cluster.put(pool_object(with_budgets({"name": "llm", "namespace": "platform"})))
    r = reconciler(cluster)
    r.store.budget_event(("platform", "llm"), unshared, deleted=False)
    await reconcile(r, cluster)
    assert degraded(cluster) == "BudgetNotShared"
    # The budget's owner shares it: the watch event names the pool to reconcile.
    shared = cluster.put(budget("llm", [OPENAI], namespace="platform", shared_with=[NS],
                                generation=2))
    assert r.store.budget_event(("platform", "llm"), shared, deleted=False) == {POOL_KEY}
    assert r.store.take_full(POOL_KEY)
    r.store.request_full(POOL_KEY)
    await reconcile(r, cluster)
    assert degraded(cluster) is None
    assert [w for w in cluster.writes() if w[0] == "apply"] == CHILDREN
    # A status update of the budget (same generation) reconciles nobody.
    status_only = copy.deepcopy(shared)
    status_only["metadata"]["resourceVersion"] = "999"
    status_only["status"] = {"poolCount": 1}
    assert r.store.budget_event(("platform", "llm"), status_only, deleted=False) == set()


def _record_status_writes(cluster: FakeCluster) -> list[dict[str, Any]]:
    """Budget status patches go to the in-memory cluster and into the returned list."""
    writes: list[dict[str, Any]] = []

    async def patch_budget_status(namespace: str, name: str, status: dict[str, Any]
                                  ) -> dict[str, Any]:
        writes.append(status)
        body = cluster.objects[(API, "AgentBudget", namespace, name)]
        body["status"] = copy.deepcopy(status)
        return copy.deepcopy(body)

    cluster.patch_budget_status = patch_budget_status  # type: ignore[attr-defined]
    return writes


def _writer(cluster: FakeCluster, listed: Callable[[], bool] = lambda: True
            ) -> tuple[BudgetStatusWriter, Any]:
    r = reconciler(cluster)
    writer = BudgetStatusWriter(cluster.as_kube(), r.store, listed,
                                clock=lambda: dt.datetime(2026, 12, 5, tzinfo=dt.UTC))
    return writer, r.store


async def test_the_budget_status_lists_the_pools_using_it_and_is_written_once() -> None:
    cluster = FakeCluster()
    llm = cluster.put(budget("llm", [OPENAI], shared_with=["team-b"]))
    writes = _record_status_writes(cluster)
    writer, store = _writer(cluster)
    store.budget_event((NS, "llm"), llm, deleted=False)
    mine = pool_object(with_budgets({"name": "llm"}))
    theirs = pool_object(with_budgets({"name": "llm", "namespace": NS}), name="b")
    theirs["metadata"]["namespace"] = "team-b"
    outsider = pool_object(with_budgets({"name": "llm", "namespace": NS}), name="c")
    outsider["metadata"]["namespace"] = "team-c"
    for pool in (mine, theirs, outsider):
        store.pool_event((pool["metadata"]["namespace"], pool["metadata"]["name"]), pool,
                         deleted=False)
    assert store.take_budget_rechecks() == {(NS, "llm")}
    await writer((NS, "llm"))
    (status,) = writes
    assert status["pools"] == [f"{NS}/echo", "team-b/b"]
    assert (status["poolCount"], status["keyCount"]) == (2, 1)
    assert status["observedGeneration"] == 1
    (ready,) = status["conditions"]
    assert (ready["type"], ready["status"], ready["message"]) == (
        "Ready", "True", "served; used by 2 pools")
    # Unchanged: nothing written.
    store.budgets.put((NS, "llm"), cluster.objects[(API, "AgentBudget", NS, "llm")])
    await writer((NS, "llm"))
    assert len(writes) == 1
    # The pool going stops counting it.
    store.pool_event(POOL_KEY, mine, deleted=True)
    assert store.take_budget_rechecks() == {(NS, "llm")}
    await writer((NS, "llm"))
    assert writes[-1]["pools"] == ["team-b/b"]


async def test_the_budget_status_waits_for_the_first_list_of_pools() -> None:
    cluster = FakeCluster()
    writer, store = _writer(cluster, listed=lambda: False)
    store.budget_event((NS, "llm"), cluster.put(budget("llm", [OPENAI])), deleted=False)
    with pytest.raises(Requeue):
        await writer((NS, "llm"))


async def test_a_budget_whose_pools_queue_on_two_redis_servers_is_not_ready() -> None:
    cluster = FakeCluster()
    llm = cluster.put(budget("llm", [OPENAI], shared_with=["team-b"]))
    writes = _record_status_writes(cluster)
    r = reconciler(cluster)
    writer = BudgetStatusWriter(cluster.as_kube(), r.store, lambda: True, queues=r.queues,
                                clock=lambda: dt.datetime(2026, 12, 5, tzinfo=dt.UTC))
    r.store.budget_event((NS, "llm"), llm, deleted=False)
    mine = pool_object(with_budgets({"name": "llm"}))
    theirs = pool_object(with_budgets({"name": "llm", "namespace": NS}), name="b")
    theirs["metadata"]["namespace"] = "team-b"
    for pool in (mine, theirs):
        r.store.pool_event((pool["metadata"]["namespace"], pool["metadata"]["name"]), pool,
                           deleted=False)
    # Until the pools' reconciles have read their queues, the budget looks again later.
    with pytest.raises(Requeue):
        await writer((NS, "llm"))
    r.queues.record((NS, "echo"), AgentPoolSpec.model_validate(mine["spec"]),
                    "redis://:pw-a@redis-a.platform:6379/0")
    r.queues.record(("team-b", "b"), AgentPoolSpec.model_validate(theirs["spec"]),
                    "redis://:pw-b@redis-b.team-b:6379/0")
    await writer((NS, "llm"))
    (ready,) = writes[-1]["conditions"]
    assert (ready["status"], ready["reason"]) == ("False", "BudgetSplit")
    assert f"redis-a.platform:6379/0: {NS}/echo" in ready["message"]
    assert "redis-b.team-b:6379/0: team-b/b" in ready["message"]
    assert "pw-" not in json.dumps(writes)  # server names only, never credentials


class FakeUsage(BudgetUsageReader):
    """What the budget's keys hold, as the test sets it; records the URLs read."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: dict[str, KeyReading] = {}
        self.error: str | None = None
        self.urls: list[str] = []

    async def read(self, url: str, key_ids: Mapping[str, str]) -> ServerReading:
        self.urls.append(url)
        assert key_ids == {"openai": f"{NS}/llm/openai"}  # the runtime's BudgetKeyConfig.id
        return ServerReading("redis-a.platform:6379/0", dict(self.keys), error=self.error)


async def test_the_budget_status_is_written_only_when_a_key_flips_saturated() -> None:
    cluster = FakeCluster()
    llm = cluster.put(budget("llm", [OPENAI]))
    writes = _record_status_writes(cluster)
    r = reconciler(cluster)
    usage = FakeUsage()
    now = [dt.datetime(2026, 12, 5, tzinfo=dt.UTC)]
    writer = BudgetStatusWriter(cluster.as_kube(), r.store, lambda: True, queues=r.queues,
                                clock=lambda: now[0], usage=usage)
    r.store.budget_event((NS, "llm"), llm, deleted=False)
    mine = pool_object(with_budgets({"name": "llm"}))
    r.store.pool_event(POOL_KEY, mine, deleted=False)
    r.queues.record(POOL_KEY, AgentPoolSpec.model_validate(mine["spec"]),
                    "redis://:pw-a@redis-a.platform:6379/0")

    async def look(**keys: KeyReading) -> dict[str, Any]:
        usage.keys = keys
        now[0] += dt.timedelta(seconds=30)
        # A budget some pool uses is looked at again periodically.
        with pytest.raises(Requeue) as requeue:
            await writer((NS, "llm"))
        assert requeue.value.delay == 30
        r.store.budgets.put((NS, "llm"), cluster.objects[(API, "AgentBudget", NS, "llm")])
        return {c["type"]: c for c in writes[-1]["conditions"]}

    conditions = await look(openai=KeyReading(requests_last_minute=10))
    assert (conditions["Saturated"]["status"], len(writes)) == ("False", 1)
    assert writes[-1]["keys"][0]["saturated"] is False
    # Usage moving below the limits: nothing written.
    for used in (200, 300, 400):
        await look(openai=KeyReading(requests_last_minute=used))
    assert len(writes) == 1
    # 95 % of 500 requests per minute: the key and the condition flip, once.
    conditions = await look(openai=KeyReading(requests_last_minute=480))
    assert len(writes) == 2
    (key,) = writes[-1]["keys"]
    assert (key["name"], key["saturated"], key["reason"]) == ("openai", True,
                                                              "RequestsPerMinute")
    assert (conditions["Saturated"]["status"], conditions["Ready"]["status"]) == ("True", "True")
    # Still saturated, now waiting on a cool-down: nothing written.
    await look(openai=KeyReading(cooldown_seconds=3, waiting=2))
    assert len(writes) == 2
    # Redis unreachable: Unknown, once, however many looks.
    usage.error = "cannot read the budget's usage at redis redis-a.platform:6379/0: refused"
    conditions = await look()
    await look()
    assert len(writes) == 3
    assert (conditions["Saturated"]["status"], conditions["Saturated"]["reason"]) == (
        "Unknown", "RedisUnreachable")
    usage.error = None
    await look()
    assert len(writes) == 4
    assert writes[-1]["keys"][0]["saturated"] is False
    assert "pw-a" not in json.dumps(writes)
    assert set(usage.urls) == {"redis://:pw-a@redis-a.platform:6379/0"}
    # The pool going: no keys, not saturated, and no more looks.
    r.store.pool_event(POOL_KEY, mine, deleted=True)
    await writer((NS, "llm"))
    assert (writes[-1]["keys"], writes[-1]["conditions"][-1]["reason"]) == ([], "NotUsed")

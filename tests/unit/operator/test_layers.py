"""The operator's layers, as the README's architecture section draws them: each rule says what
a part of `agentpool_operator` may not import. Read from the source (ast), so a new import
that crosses a layer fails here, not in review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from agentpool_dev.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "operator" / "agentpool_operator"
KUBE_CLIENTS = ("kopf", "lightkube", "httpx", "httpx2")
RECONCILE = ("agentpool_operator.store", "agentpool_operator.apply",
             "agentpool_operator.reconcile", "agentpool_operator.status_writer",
             "agentpool_operator.resync", "agentpool_operator.watches",
             "agentpool_operator.k8s", "agentpool_operator.workqueue")

# (modules, as path globs under the package) -> import prefixes they must not use, and why.
RULES: list[tuple[str, tuple[str, ...], str]] = [
    ("api/*.py", ("agentpool_operator.builders", *RECONCILE, *KUBE_CLIENTS, "redis", "aiohttp"),
     "the API models are pure: the CRD, the operator and the metrics API all read them"),
    ("builders/*.py", (*RECONCILE, *KUBE_CLIENTS, "redis", "asyncpg", "asyncio", "os", "time",
                       "datetime", "random", "socket", "subprocess"),
     "builders are pure functions of a PoolContext"),
    ("plan.py", (*RECONCILE, *KUBE_CLIENTS), "the plan step is pure"),
    ("budgets.py", (*RECONCILE, *KUBE_CLIENTS, "redis"),
     "resolving a pool's budgets is pure: the reconcile reads them"),
    ("status.py", (*RECONCILE, *KUBE_CLIENTS), "status computation is pure"),
    ("store.py", ("agentpool_operator.k8s", "agentpool_operator.apply",
                  "agentpool_operator.reconcile", *KUBE_CLIENTS),
     "the store only keeps what the watches delivered; it makes no request"),
    ("metrics_api/*.py", ("agentpool_operator.builders", *RECONCILE, "kopf",
                          "agentpool_operator.plan"),
     "the network-facing metrics API depends only on the API models and the contract"),
    ("**/*.py", ("asyncpg", "psutil"), "the operator reads no database and polices no process"),
]
# What the operator may take from the runtime: the contract, the config it renders, and the
# queue's key names and backlog reader (they read the queue's own layout, so they live with
# the queue; the metrics API and the deletion-cost pass read the backlog). Never the
# supervisor, the workers, the SDK or the queue's consumer and producer.
FROM_THE_RUNTIME = ("agent_runtime.contract", "agent_runtime.config",
                    "agent_runtime.queue.keys", "agent_runtime.queue.backlog")
# Only these modules may use a Kubernetes client (everything else works on dicts): the
# operator's adapter and its kopf wiring, and the metrics API's adapter and the request
# types of its authoriser.
KUBE_CALLERS = {"k8s.py", "watches.py", "login.py", "diffbase.py", "__main__.py",
                "metrics_api/apiserver.py", "metrics_api/auth.py"}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _crossing(found: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(name for name in found for prefix in forbidden
                  if name == prefix or name.startswith(prefix + "."))


@pytest.mark.parametrize(("pattern", "forbidden", "why"), RULES, ids=[r[0] for r in RULES])
def test_no_module_imports_across_its_layer(pattern: str, forbidden: tuple[str, ...],
                                            why: str) -> None:
    modules = sorted(PACKAGE.glob(pattern))
    assert modules, f"no module matches {pattern}"
    crossings = {str(m.relative_to(PACKAGE)): _crossing(imports(m), forbidden)
                 for m in modules}
    assert not {m: c for m, c in crossings.items() if c}, why


def test_the_operator_takes_from_the_runtime_only_its_contract_config_and_queue_layout() -> None:
    taken = {str(m.relative_to(PACKAGE)): sorted(
        name for name in imports(m)
        if name.startswith("agent_runtime.") and not _crossing({name}, FROM_THE_RUNTIME))
        for m in PACKAGE.rglob("*.py")}
    assert not {m: names for m, names in taken.items() if names}


def test_only_the_adapters_import_a_kubernetes_client() -> None:
    callers = {str(m.relative_to(PACKAGE)) for m in PACKAGE.rglob("*.py")
               if _crossing(imports(m), KUBE_CLIENTS)}
    assert callers <= KUBE_CALLERS, callers - KUBE_CALLERS

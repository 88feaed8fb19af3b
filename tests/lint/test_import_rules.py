"""The runtime's import rules, checked on the source (the README's "Architecture" section
says the same in words).

Each row of `RULES` governs a module and everything under it (its scope): `may_import` lists the
first-party modules it may import besides those in its own scope (None: any), `never` the
modules it must not import at all, not even for type checking. Imports under
`if TYPE_CHECKING:` load nothing at run time, so only `never` applies to them. To add a rule,
add a row; the tests below check every row, that every row still governs code (a rename must
not leave a rule checking nothing), and that the checker does catch a violation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from agentpool_dev.paths import REPO_ROOT
from tests.lint.imports import Import, imports_of, modules_of, within

FIRST_PARTY = ("agent_runtime", "agentpool_operator", "agentpool_dev", "tests", "bench")
PACKAGES = {"agent_runtime": REPO_ROOT / "agent_runtime",
            "agentpool_operator": REPO_ROOT / "operator" / "agentpool_operator"}


@dataclass(frozen=True)
class Rule:
    scope: str
    why: str
    may_import: tuple[str, ...] | None = None
    never: tuple[str, ...] = ()


# -- the runtime -------------------------------------------------------------------------------
# Layers, bottom up: the foundation (contract, config, errors) and `aio`; `ipc` and `queue`;
# `db`; `sdk`; `worker`; `supervisor`; `cli` on top. Each may import the layers below it.
FOUNDATION = ("agent_runtime.contract", "agent_runtime.config", "agent_runtime.errors")
IO_LIBRARIES = ("redis", "asyncpg", "aiohttp", "psutil", "prometheus_client")
PURE = "pure: no I/O library, so the operator and every process can load it cheaply"

RUNTIME_RULES = [
    Rule("agent_runtime", never=("agentpool_operator", "agentpool_dev", "tests", "bench"),
         why="the runtime runs in every pool pod, without the operator or the test harness; "
             "the operator builds on the runtime's contract, never the reverse"),
    Rule("agent_runtime.contract", may_import=(), never=IO_LIBRARIES,
         why="the operator<->runtime contract; " + PURE),
    Rule("agent_runtime.config", may_import=("agent_runtime.contract",), never=IO_LIBRARIES,
         why="the only reader of the environment; the operator renders the config with it; "
             + PURE),
    Rule("agent_runtime.errors", may_import=(), never=IO_LIBRARIES,
         why="every layer raises these"),
    Rule("agent_runtime.aio", may_import=(), never=IO_LIBRARIES,
         why="asyncio building blocks under every layer; they know nothing of tasks"),
    Rule("agent_runtime.ipc", may_import=FOUNDATION,
         never=("redis", "asyncpg", "aiohttp", "prometheus_client"),
         why="the link the supervisor and its workers share: it knows neither side, so "
             "neither side's internals leak into the other"),
    Rule("agent_runtime.queue", may_import=(*FOUNDATION, "agent_runtime.aio"),
         never=("asyncpg", "aiohttp", "prometheus_client", "psutil"),
         why="the queue is under everything that uses it: the SDK, the worker, the "
             "supervisor and the operator's metrics API"),
    *(Rule(f"agent_runtime.queue.{module}", never=IO_LIBRARIES, why=PURE)
      for module in ("keys", "envelope", "validation", "scripts")),
    Rule("agent_runtime.ipc.messages", never=IO_LIBRARIES, why=PURE),
    Rule("agent_runtime.db", may_import=(*FOUNDATION, "agent_runtime.queue.envelope"),
         never=("redis", "aiohttp", "prometheus_client"),
         why="PostgreSQL only: results are the envelope's `TaskResult`, stored"),
    Rule("agent_runtime.sdk",
         may_import=(*FOUNDATION, "agent_runtime.aio", "agent_runtime.queue", "agent_runtime.db"),
         never=("prometheus_client",),
         why="what handler authors and clients use; it knows nothing of the processes that "
             "run it (it counts into a `MetricsSink`, not into a registry)"),
    Rule("agent_runtime.worker",
         may_import=(*FOUNDATION, "agent_runtime.aio", "agent_runtime.ipc",
                     "agent_runtime.queue", "agent_runtime.db", "agent_runtime.sdk"),
         never=("agent_runtime.supervisor", "prometheus_client"),
         why="a worker talks to its supervisor only through `ipc`"),
    Rule("agent_runtime.supervisor",
         may_import=(*FOUNDATION, "agent_runtime.aio", "agent_runtime.ipc",
                     "agent_runtime.queue", "agent_runtime.db", "agent_runtime.worker.process"),
         why="the supervisor starts workers (their process entry point) and talks to them "
             "only through `ipc`; it uses neither their internals nor the SDK"),
]

# The operator's layers, and what it may take from the runtime, are held by
# tests/unit/operator/test_layers.py.
RULES = RUNTIME_RULES


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package, directory in PACKAGES.items():
        found.update(modules_of(directory, package))
    return found


MODULES = _modules()


def _breaks(rule: Rule, found: Import, first_party: tuple[str, ...]) -> bool:
    target = found.target
    if any(within(target, never) for never in rule.never):
        return True
    return (rule.may_import is not None and not found.type_only
            and any(within(target, package) for package in first_party)
            and not within(target, rule.scope)
            and not any(within(target, allowed) for allowed in rule.may_import))


def _broken(rule: Rule, imports: list[Import],
            first_party: tuple[str, ...] = FIRST_PARTY) -> list[str]:
    return [f"{found.path}:{found.line}: {found.source} imports {found.target}"
            for found in imports
            if within(found.source, rule.scope) and _breaks(rule, found, first_party)]


def _all_imports(modules: dict[str, Path]) -> list[Import]:
    return [found for module, path in modules.items()
            for found in imports_of(module, path, modules)]


IMPORTS = _all_imports(MODULES)


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.scope)
def test_the_code_follows_the_rule(rule: Rule) -> None:
    problems = _broken(rule, IMPORTS)
    allowed = "nothing outside itself" if rule.may_import == () else (
        ", ".join(rule.may_import) if rule.may_import else "anything")
    assert not problems, (
        f"{rule.scope} may import {allowed}"
        + (f" and never {', '.join(rule.never)}" if rule.never else "")
        + f" ({rule.why}):\n" + "\n".join(problems))


@pytest.mark.parametrize("rule", RULES, ids=lambda rule: rule.scope)
def test_the_rule_still_governs_code_and_names_modules_that_exist(rule: Rule) -> None:
    assert any(within(module, rule.scope) for module in MODULES), f"no module {rule.scope}"
    for allowed in rule.may_import or ():
        assert any(within(module, allowed) for module in MODULES), f"no module {allowed}"


def test_the_checker_reports_a_forbidden_import_and_lets_type_only_ones_pass(
        tmp_path: Path) -> None:
    package = tmp_path / "shop"
    (package / "base").mkdir(parents=True)
    (package / "top").mkdir()
    for name in ("__init__.py", "base/__init__.py", "top/__init__.py", "top/ui.py"):
        (package / name).write_text("")
    (package / "base" / "money.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "import redis\n"
        "from shop.top import ui\n"
        "if TYPE_CHECKING:\n"
        "    from shop.top.ui import Screen\n"
        "def later() -> None:\n"
        "    from . import money\n")
    modules = modules_of(package, "shop")
    imports = _all_imports(modules)
    assert {(i.target, i.type_only) for i in imports} == {
        ("typing", False), ("redis", False), ("shop.top.ui", False), ("shop.top.ui", True),
        ("shop.base.money", False)}
    layering = _broken(Rule("shop.base", may_import=(), why="w"), imports, ("shop",))
    purity = _broken(Rule("shop.base.money", never=("redis",), why="w"), imports, ("shop",))
    assert layering == [f"{package / 'base' / 'money.py'}:3: shop.base.money imports shop.top.ui"]
    assert purity == [f"{package / 'base' / 'money.py'}:2: shop.base.money imports redis"]

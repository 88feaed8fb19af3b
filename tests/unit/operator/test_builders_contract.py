"""Cross-object consistency: what one child refers to, another provides; builders stay pure."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from agent_runtime.config import CONFIG_PATH_ENV, DATABASE_URL_ENV, parse_config
from agentpool_operator import builders
from agentpool_operator.builders import build_children
from tests.unit.operator.builder_samples import full_ctx, minimal_ctx

BUILDERS_DIR = Path(builders.__file__).parent
# No clock, randomness, environment, I/O or Kubernetes client in a pure builder.
FORBIDDEN_IMPORTS = {
    "kopf",
    "lightkube",
    "os",
    "time",
    "datetime",
    "random",
    "uuid",
    "socket",
    "subprocess",
    "asyncio",
    "redis",
    "asyncpg",
}


def _pod(children: builders.Children) -> dict[str, Any]:
    pod: dict[str, Any] = children.deployment["spec"]["template"]["spec"]
    return pod


def _mounted_files(children: builders.Children, container: dict[str, Any]) -> dict[str, str]:
    """Absolute path in the container -> (kind/name/key) for each projected file."""
    volumes = {v["name"]: v for v in _pod(children)["volumes"]}
    files = {}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        sources = volume.get("projected", {}).get("sources") or [
            {kind: volume[kind]} for kind in ("configMap", "secret") if kind in volume
        ]
        for source in sources:
            ((kind, ref),) = source.items()
            for item in ref.get("items", ()):
                name = ref["name"]
                files[f"{mount['mountPath']}/{item['path']}"] = f"{kind}/{name}/{item['key']}"
    return files


def test_runtime_config_file_is_mounted_where_the_env_points() -> None:
    children = build_children(full_ctx())
    runtime = next(c for c in _pod(children)["containers"] if c["name"] == "runtime")
    env = {item["name"]: item for item in runtime["env"]}
    path = env[CONFIG_PATH_ENV]["value"]
    assert _mounted_files(children, runtime)[path] == "configMap/research-config/runtime.yaml"
    parse_config(children.config_map["data"]["runtime.yaml"])


def test_pgbouncer_finds_every_file_its_ini_names() -> None:
    children = build_children(full_ctx())
    (sidecar,) = _pod(children)["initContainers"]
    files = _mounted_files(children, sidecar)
    assert files[sidecar["command"][1]] == "configMap/research-config/pgbouncer.ini"
    ini = children.config_map["data"]["pgbouncer.ini"]
    auth_file = next(line for line in ini.splitlines() if line.startswith("auth_file"))
    assert files[auth_file.split(" = ")[1]] == "secret/research-pgbouncer/userlist.txt"
    include = ini.splitlines()[-1].removeprefix("%include ")
    assert files[include] == "secret/research-pgbouncer/databases.ini"
    assert children.secret is not None
    assert {"userlist.txt", "databases.ini"} <= set(children.secret["data"])


def test_database_url_env_refers_to_a_key_of_the_derived_secret() -> None:
    children = build_children(full_ctx())
    runtime = next(c for c in _pod(children)["containers"] if c["name"] == "runtime")
    env = {item["name"]: item for item in runtime["env"]}
    ref = env[DATABASE_URL_ENV]["valueFrom"]["secretKeyRef"]
    assert children.secret is not None
    assert ref["name"] == children.secret["metadata"]["name"]
    assert ref["key"] in children.secret["data"]


def test_grace_period_leaves_time_after_the_runtime_drain() -> None:
    for ctx in (minimal_ctx(), full_ctx()):
        children = build_children(ctx)
        drain = parse_config(children.config_map["data"]["runtime.yaml"]).drain_grace_seconds
        assert _pod(children)["terminationGracePeriodSeconds"] >= drain + 10


def test_service_and_probes_use_the_declared_port() -> None:
    children = build_children(full_ctx())
    runtime = next(c for c in _pod(children)["containers"] if c["name"] == "runtime")
    port_names = {port["name"] for port in runtime["ports"]}
    assert children.service["spec"]["ports"][0]["targetPort"] in port_names
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert runtime[probe]["httpGet"]["port"] in port_names


def test_builder_modules_are_pure() -> None:
    for path in sorted(BUILDERS_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert not roots & FORBIDDEN_IMPORTS, f"{path.name} imports {roots}"

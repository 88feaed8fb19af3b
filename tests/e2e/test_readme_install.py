"""The README's "Installing into a cluster" section, walked through on a fresh cluster.

A control plane of its own (not the session's: nothing installed yet, no CRD, no namespace),
the pinned helm and kubectl on PATH, and the section's commands run as written, one by one,
from the repository's root. The chart's pods are simulated by KWOK, so once the chart is
installed the operator runs as a local process in place of its pod, exactly as `make up`
runs it (`agentpool_dev.chart`: the installed Deployment's flags, the chart's
ServiceAccount). The full example then reaches Ready in the fresh `default` namespace, and
`kubectl get agentpools` prints what the README shows: the same columns (REASON is only in
`-o wide`), the same pool, Ready.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentpool_dev import chart, procs
from agentpool_dev import cluster as cluster_mod
from agentpool_dev.paths import REPO_ROOT

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

README = REPO_ROOT / "README.md"
SECTION = "## Installing into a cluster"


def section() -> str:
    return README.read_text().split(f"\n{SECTION}\n", 1)[1].split("\n## ", 1)[0]


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of each fenced block."""
    return re.findall(r"^```(\w*)\n(.*?)^```$", text, re.MULTILINE | re.DOTALL)


def commands() -> list[str]:
    """The section's first shell block, one command per entry (continuations joined)."""
    body = next(body for language, body in code_blocks(section()) if language == "bash")
    joined = body.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def sample_output() -> list[list[str]]:
    """The block right after the commands: what `kubectl get agentpools` prints."""
    blocks = code_blocks(section())
    index = next(i for i, (language, _) in enumerate(blocks) if language == "bash")
    return [line.split() for line in blocks[index + 1][1].splitlines() if line.strip()]


def test_the_readme_shows_the_commands_and_their_output() -> None:
    steps = commands()
    assert steps[0].startswith("helm upgrade --install agentpool-operator")
    assert steps[-1] == "kubectl get agentpools"
    assert sample_output()[0] == ["NAME", "READY", "REPLICAS", "AVAILABLE", "BACKLOG", "AGE"]


def state(cluster: cluster_mod.Cluster, operator: procs.Proc | None) -> str:
    """What a failing step leaves to look at: the pools' conditions, the pods, the operator's
    log tail."""
    shown = [cluster.kubectl("get", "agentpools,pods", "-A", "-o", "wide", check=False).stdout,
             cluster.kubectl("get", "agentpools", "-A", "-o",
                             "jsonpath={.items[*].status.conditions}", check=False).stdout]
    if operator is not None:
        shown.append(procs.log_tail(operator.log))
    return "\n".join(shown)


@pytest.fixture(scope="module")
def fresh_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[cluster_mod.Cluster]:
    running = cluster_mod.up(tmp_path_factory.mktemp("fresh-cluster"))
    try:
        yield running
    finally:
        running.stop()


def test_the_readme_install_section_works_on_a_fresh_cluster(
        fresh_cluster: cluster_mod.Cluster, tmp_path: Path) -> None:
    env = {**os.environ, "KUBECONFIG": str(fresh_cluster.kubeconfig),
           "PATH": f"{fresh_cluster.bin_dir}{os.pathsep}{os.environ['PATH']}",
           "HELM_CACHE_HOME": str(tmp_path / "helm-cache"),
           "HELM_CONFIG_HOME": str(tmp_path / "helm-config"),
           "HELM_DATA_HOME": str(tmp_path / "helm-data")}
    operator: procs.Proc | None = None
    output = ""
    try:
        for command in commands():
            result = subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, env=env,
                                    capture_output=True, text=True, timeout=180)
            assert result.returncode == 0, (f"{command}\n{result.stdout}\n{result.stderr}\n"
                                            + state(fresh_cluster, operator))
            output = result.stdout
            if command.startswith("helm ") and operator is None:
                # The operator's pod is KWOK's: its process runs here instead, as in make up.
                deployment = fresh_cluster.kubectl_json("get", "deployment", chart.RELEASE,
                                                        "-n", chart.NAMESPACE)
                port = procs.free_port()
                operator = chart.start_operator(fresh_cluster, deployment, port)
                readyz = f"http://127.0.0.1:{port}/readyz"

                def ready(url: str = readyz) -> bool:
                    return procs.http_ok(url)

                procs.wait_until("the operator's /readyz", ready, 60, operator)
    finally:
        if operator is not None:
            procs.stop([operator])
    printed = [line.split() for line in output.splitlines() if line.strip()]
    wanted = sample_output()
    assert printed[0] == wanted[0], output  # the same columns
    assert [row[:2] for row in printed[1:]] == [row[:2] for row in wanted[1:]], output
    assert all(len(row) == len(wanted[1]) for row in printed[1:]), output

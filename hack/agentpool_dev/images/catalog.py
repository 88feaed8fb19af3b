"""Which images the harness builds, from what, and under which names.

Every image the operator or the chart renders by default is here, under exactly the name they
render, so the defaults really run on the test cluster's real nodes:

- sandbox (pause): upstream `build/pause` (its Dockerfile and pause.c, from the
  k8s.io/kubernetes module the control plane is built from), `registry.k8s.io/pause:<tag>`;
- Python base (a build input only): bookworm's Python 3.11 by mmdebstrap,
  `hack/images/python-base.Containerfile`, `localhost/agentpool/python:3.11-bookworm`;
- runtime: `agent_runtime/Dockerfile`, `ghcr.io/agentpool/agentpool-runtime:<version>`;
- example handlers: `examples/handlers/Dockerfile`, `ghcr.io/example/echo-agent:0.1.0`;
- the real-pod tests' handlers: `tests/e2e/images/test-handlers.Dockerfile`,
  `localhost/agentpool/test-handlers:<version>`;
- operator and metrics API: `operator/Dockerfile`,
  `ghcr.io/agentpool/agentpool-operator:<version>` (the chart's default);
- PgBouncer: trixie's pgbouncer by mmdebstrap, `hack/images/pgbouncer.Containerfile`, the
  operator's default PgBouncer image name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from agentpool_dev.paths import REPO_ROOT

RECIPES = REPO_ROOT / "hack" / "images"
PYTHON_LOCK = RECIPES / "python-requirements.lock"
KUBE_VERSION_FILE = REPO_ROOT / "hack" / "testcluster" / "versions.env"


def _project_version() -> str:
    found = re.search(r'^version = "([^"]+)"', (REPO_ROOT / "pyproject.toml").read_text(), re.M)
    if not found:
        raise RuntimeError("no version in pyproject.toml")
    return found.group(1)


def _default_pgbouncer_image() -> str:
    # Read from the operator's source rather than imported: the harness must not depend on
    # the operator package being importable.
    models = REPO_ROOT / "operator" / "agentpool_operator" / "api" / "models.py"
    found = re.search(r'^DEFAULT_PGBOUNCER_IMAGE = "([^"]+)"', models.read_text(), re.M)
    if not found:
        raise RuntimeError(f"no DEFAULT_PGBOUNCER_IMAGE in {models}")
    return found.group(1)


@dataclass(frozen=True)
class Rootfs:
    """A Debian root file system made by mmdebstrap: the content of a FROM-scratch image."""

    suite: str
    packages: tuple[str, ...]
    hooks: tuple[str, ...] = ()
    """mmdebstrap --customize-hook commands ("$1" is the root file system)."""
    version_of: str | None = None
    """A package whose installed version must match the image tag (checked after the build)."""


@dataclass(frozen=True)
class Image:
    """One image: its name, recipe and the files whose content decides its cache key."""

    key: str
    name: str
    dockerfile: Path
    """The Dockerfile; for `pause`, relative to the Kubernetes source."""
    context: str = "repo"
    """`repo` (the repository root), `rootfs` (a folder holding the `rootfs` as rootfs.tar) or
    `pause` (upstream's pause build folder with the binary compiled here)."""
    inputs: tuple[str, ...] = ()
    """Repository paths (files or folders) the build copies: part of the content hash."""
    base: str | None = None
    """The catalog key of the image this one is built FROM (passed as `base_arg`)."""
    base_arg: str | None = None
    build_args: dict[str, str] = field(default_factory=dict)
    rootfs: Rootfs | None = None
    uses_wheels: bool = False
    """pip in the Dockerfile installs from the locked wheelhouse (the build has no network)."""
    on_nodes: bool = True
    """Imported into real nodes (the Python base is only a build input)."""


DEBIAN_DPKG_OPTIONS = ("path-exclude=/usr/share/doc/*", "path-exclude=/usr/share/man/*",
                "path-exclude=/usr/share/locale/*", "path-exclude=/usr/share/info/*")


def pause_tag() -> str:
    """The pause version of the pinned Kubernetes release (its build/pause/Makefile TAG)."""
    from agentpool_dev.images.inputs import kubernetes_source  # local: avoids a cycle

    makefile = (kubernetes_source() / "build" / "pause" / "Makefile").read_text()
    found = re.search(r"^TAG \?= (\S+)", makefile, re.M)
    if not found:
        raise RuntimeError("no TAG in build/pause/Makefile")
    return found.group(1)


def catalog() -> dict[str, Image]:
    """Every image, in build order (bases before the images built on them)."""
    version = _project_version()
    python_base = "localhost/agentpool/python:3.11-bookworm"
    images = [
        Image(key="pause", name=f"registry.k8s.io/pause:{pause_tag()}",
              dockerfile=Path("build/pause/Dockerfile"), context="pause",
              build_args={"BASE": "scratch", "ARCH": "amd64"}),
        Image(key="python-base", name=python_base,
              dockerfile=RECIPES / "python-base.Containerfile", context="rootfs",
              on_nodes=False,
              rootfs=Rootfs(
                  suite="bookworm",
                  packages=("python3", "python3-venv", "python3-pip", "python-is-python3"),
                  # The official python images let pip install system-wide (the operator's
                  # Dockerfile does); Debian's marks its Python externally managed.
                  hooks=('rm -f "$1"/usr/lib/python3*/EXTERNALLY-MANAGED',))),
        Image(key="runtime", name=f"ghcr.io/agentpool/agentpool-runtime:{version}",
              dockerfile=REPO_ROOT / "agent_runtime" / "Dockerfile",
              inputs=("pyproject.toml", "README.md", "agent_runtime", ".dockerignore"),
              base="python-base", base_arg="PYTHON_IMAGE", uses_wheels=True),
        Image(key="echo-agent", name="ghcr.io/example/echo-agent:0.1.0",
              dockerfile=REPO_ROOT / "examples" / "handlers" / "Dockerfile",
              inputs=("examples/handlers", ".dockerignore"),
              base="runtime", base_arg="RUNTIME_IMAGE"),
        Image(key="operator", name=f"ghcr.io/agentpool/agentpool-operator:{version}",
              dockerfile=REPO_ROOT / "operator" / "Dockerfile",
              inputs=("pyproject.toml", "README.md", "operator", "agent_runtime",
                      ".dockerignore"),
              base="python-base", base_arg="PYTHON_IMAGE", uses_wheels=True),
        # Only for the real-pod tests: their handlers (memory, delivery) on the runtime image.
        Image(key="test-handlers", name=f"localhost/agentpool/test-handlers:{version}",
              dockerfile=REPO_ROOT / "tests" / "e2e" / "images" / "test-handlers.Dockerfile",
              inputs=("tests/__init__.py", "tests/e2e/__init__.py", "tests/e2e/pod_handlers.py",
                      "tests/integration/__init__.py", "tests/integration/runtime/__init__.py",
                      "tests/integration/runtime/handlers.py"),
              base="runtime", base_arg="RUNTIME_IMAGE"),
        Image(key="pgbouncer", name=_default_pgbouncer_image(),
              dockerfile=RECIPES / "pgbouncer.Containerfile", context="rootfs",
              rootfs=Rootfs(suite="trixie", packages=("pgbouncer",), version_of="pgbouncer")),
    ]
    return {image.key: image for image in images}


"""What image builds consume, made on this machine: content hashes, the locked wheelhouse,
Debian root file systems and the pause binary.

Nothing here talks to a container registry. Python packages come from PyPI through pip
(pinned with hashes in `hack/images/python-requirements.lock`), Debian packages through
mmdebstrap, and the pause container's C source from the Kubernetes module the control plane is
built from.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterable
from pathlib import Path

from agentpool_dev.images.catalog import DEBIAN_DPKG_OPTIONS, PYTHON_LOCK, Rootfs
from agentpool_dev.paths import REPO_ROOT

# The images' Python: Debian bookworm's 3.11.2 with glibc 2.36. Wheels are chosen for it,
# not for the host's interpreter.
IMAGE_PYTHON = "3.11"
_MANYLINUX = ("manylinux_2_36", "manylinux_2_34", "manylinux_2_31", "manylinux_2_28",
              "manylinux_2_17", "manylinux2014", "manylinux_2_12", "manylinux2010",
              "manylinux_2_5", "manylinux1")
_SKIP_PARTS = {"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"}


class BuildError(RuntimeError):
    """An image or one of its inputs could not be built; the message says which and why."""


def run(argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-40:])
        raise BuildError(f"{' '.join(argv[:4])}... failed ({done.returncode}):\n{tail}")
    return done.stdout


def _files(paths: Iterable[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += [p for p in path.rglob("*") if p.is_file()
                      and not _SKIP_PARTS.intersection(p.parts) and p.suffix not in (".pyc",)]
        elif path.exists():
            found.append(path)
        else:
            raise BuildError(f"image input {path} does not exist")
    return sorted(found)


def content_hash(parts: Iterable[str], files: Iterable[Path], root: Path = REPO_ROOT) -> str:
    """sha256 over labelled strings and the names and bytes of files (below `root`)."""
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() + b"\0")
    for path in _files(files):
        name = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        digest.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()[:16]


@functools.cache
def kubernetes_source() -> Path:
    """The k8s.io/kubernetes module the control plane is built from (in Go's module cache)."""
    # Prints the module's folder; downloads it first only if the cache lacks it.
    out = run(["go", "mod", "download", "-json", "k8s.io/kubernetes"],
              cwd=REPO_ROOT / "hack" / "testcluster", env={"GOTOOLCHAIN": "local"})
    return Path(json.loads(out)["Dir"])


def wheelhouse(target: Path) -> Path:
    """Download the locked wheels (hash-checked, for the images' Python) into `target`."""
    if (target / ".complete").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    platforms = [arg for tag in _MANYLINUX for arg in ("--platform", f"{tag}_x86_64")]
    run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes",
         "--only-binary=:all:", "--python-version", IMAGE_PYTHON, "--implementation", "cp",
         "--abi", "cp311", "--abi", "abi3", "--abi", "none", *platforms,
         "--dest", str(target), "--requirement", str(PYTHON_LOCK)])
    (target / ".complete").touch()
    return target


def pip_config(target: Path) -> Path:
    """pip's configuration inside the build: the wheelhouse, never an index."""
    target.write_text("[global]\nno-index = true\nfind-links = /wheelhouse\n")
    return target


def debian_rootfs(spec: Rootfs, target: Path, workdir: Path) -> None:
    """A root file system tar by mmdebstrap."""
    argv = ["mmdebstrap", "--variant=minbase", "--format=tar", "--quiet",
            f"--include={','.join(spec.packages)}"]
    argv += [f"--dpkgopt={option}" for option in DEBIAN_DPKG_OPTIONS]
    argv += [f"--customize-hook={hook}" for hook in spec.hooks]
    argv += [spec.suite, str(target)]
    # SOURCE_DATE_EPOCH: file times in the tar are fixed, so equal packages give equal tars.
    # TMPDIR: mmdebstrap's scratch space (and anything a crash leaves) stays in our folder.
    run(argv, env={"SOURCE_DATE_EPOCH": "0", "TMPDIR": str(workdir)})


def pause_binary(target: Path) -> None:
    """Compile upstream's pause.c as upstream's Makefile does (static, -Os)."""
    source = kubernetes_source() / "build" / "pause" / "linux" / "pause.c"
    target.parent.mkdir(parents=True, exist_ok=True)
    run(["gcc", "-Os", "-Wall", "-Werror", "-static", "-o", str(target), str(source)])
    run(["strip", str(target)])


def pause_sources() -> list[Path]:
    pause = kubernetes_source() / "build" / "pause"
    return [pause / "linux" / "pause.c", pause / "Dockerfile"]


def installed_version(rootfs_tar: Path, package: str) -> str | None:
    """A package's version from the dpkg status file inside a root file system tar."""
    with tarfile.open(rootfs_tar) as tar:
        member = tar.extractfile("./var/lib/dpkg/status")
        if member is None:
            return None
        status = member.read().decode()
    for stanza in status.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line)
        if fields.get("Package") == package:
            return fields.get("Version")
    return None

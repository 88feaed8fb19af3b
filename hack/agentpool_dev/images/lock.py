"""`hack/images/python-requirements.lock`: the images' Python packages, resolved for the
images' interpreter (bookworm's 3.11.2 on glibc 2.36) rather than the host's.

Resolved by uv (`uv pip compile --python-version --python-platform`), which evaluates
environment markers for that target; pip's `--python-version` does not (it would drop
`async-timeout`, which redis needs below Python 3.11.3). Only regenerating needs uv; builds
read the committed file.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from agentpool_dev.images.catalog import PYTHON_LOCK
from agentpool_dev.images.inputs import BuildError
from agentpool_dev.paths import REPO_ROOT

TARGET_PYTHON = "3.11.2"
TARGET_PLATFORM = "x86_64-manylinux_2_36"
HEADER = """\
# Python packages of the runtime and operator images, pinned with hashes for the images'
# Python (Debian bookworm's 3.11.2, x86_64, glibc 2.36), not the host's. Image builds install
# only these (pip in the Dockerfiles sees this wheelhouse and no index).
# Regenerate after changing pyproject.toml's dependencies: make images-lock
"""


def _uv() -> str:
    found = shutil.which("uv") or str(Path(sys.executable).with_name("uv"))
    if not Path(found).exists():
        raise BuildError("uv is needed to regenerate the lock: pip install uv")
    return found


def write_lock(target: Path = PYTHON_LOCK) -> None:
    pyproject = REPO_ROOT / "pyproject.toml"
    build_requires = tomllib.loads(pyproject.read_text())["build-system"]["requires"]
    with tempfile.TemporaryDirectory() as scratch:
        extra = Path(scratch) / "build-system.in"
        extra.write_text("".join(f"{req}\n" for req in build_requires))
        out = Path(scratch) / "lock.txt"
        done = subprocess.run(
            [_uv(), "pip", "compile", str(pyproject), str(extra), "--python-version",
             TARGET_PYTHON, "--python-platform", TARGET_PLATFORM, "--generate-hashes",
             "--no-header", "--no-annotate", "--quiet", "--output-file", str(out)],
            capture_output=True, text=True, cwd=REPO_ROOT)
        if done.returncode != 0:
            raise BuildError(f"uv pip compile failed:\n{done.stderr}")
        target.write_text(HEADER + out.read_text())

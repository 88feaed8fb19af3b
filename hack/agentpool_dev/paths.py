"""Where the development harness keeps its state and finds the repository's scripts."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def state_root() -> Path:
    """Runtime state (data dirs, logs, kubeconfig): outside the repo, overridable for CI."""
    configured = os.environ.get("AGENTPOOL_STATE_DIR")
    if configured:
        return Path(configured)
    return Path.home() / ".cache" / "agentpool" / "state"


def build_script() -> Path:
    return REPO_ROOT / "hack" / "testcluster" / "build.sh"

"""Golden files: every child of the minimal and the full sample pool, as YAML.

A changed builder shows up as a reviewable diff of `golden/*.yaml`. After an intended change,
regenerate with `UPDATE_GOLDEN=1 .venv/bin/pytest tests/unit/operator -k golden`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from agentpool_operator.builders import PoolContext, build_children
from tests.unit.operator.builder_samples import full_ctx, minimal_ctx

GOLDEN_DIR = Path(__file__).parent / "golden"


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (config files) as literal blocks, so diffs read like the files."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(ctx: PoolContext) -> str:
    manifests = build_children(ctx).manifests
    return yaml.dump_all(manifests, Dumper=_Dumper, sort_keys=False, width=100)


def test_golden_yaml_round_trips() -> None:
    # The literal-block representer must not change any value.
    children = build_children(full_ctx())
    assert list(yaml.safe_load_all(render(full_ctx()))) == list(children.manifests)


@pytest.mark.parametrize(
    ("name", "make"), [("minimal", minimal_ctx), ("full", full_ctx)], ids=["minimal", "full"]
)
def test_children_match_golden_file(name: str, make: Callable[[], PoolContext]) -> None:
    path = GOLDEN_DIR / f"{name}.yaml"
    rendered = render(make())
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(rendered, encoding="utf-8")
    assert path.exists(), f"{path} is missing: run with UPDATE_GOLDEN=1 to create it"
    assert rendered == path.read_text(encoding="utf-8"), (
        f"children differ from {path.name}; if intended, regenerate with UPDATE_GOLDEN=1"
    )


def test_builders_are_deterministic() -> None:
    assert render(full_ctx()) == render(full_ctx())

"""Write, or check, the generated CRDs: `python -m agentpool_tools.gen_crd`.

`make crds` runs it to regenerate every CRD of the API group (`crds/<group>_<plural>.yaml`:
AgentPool, AgentBudget) from the models; `--check` exits 1 (printing a diff) when a committed
file differs from what the models generate, so CI catches a model change without a
regenerated CRD. `--output FILE` writes or checks one CRD (`--crd`, AgentPool's by default).
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from agentpool_tools.crd import AGENTPOOL, CRDS, CrdSource, build_crd

CRDS_DIR = Path("crds")
DEFAULT_OUTPUT = CRDS_DIR / AGENTPOOL.file_name
HEADER = (
    "# Generated from the pydantic models in operator/agentpool_operator/api/ by\n"
    "# `python -m agentpool_tools.gen_crd` (make crds). Do not edit by hand.\n"
)


class _Dumper(yaml.SafeDumper):
    """Block style, and multi-line descriptions as readable literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def render(source: CrdSource = AGENTPOOL) -> str:
    """The CRD file's exact text."""
    body = yaml.dump(build_crd(source), Dumper=_Dumper, sort_keys=False, width=100,
                     default_flow_style=False, allow_unicode=True)
    return HEADER + body


def _check(path: Path, wanted: str) -> bool:
    current = path.read_text() if path.exists() else ""
    if current == wanted:
        return True
    sys.stdout.writelines(difflib.unified_diff(
        current.splitlines(keepends=True), wanted.splitlines(keepends=True),
        str(path), "generated"))
    print(f"{path} is out of date: run `make crds`", file=sys.stderr)
    return False


def main(argv: Sequence[str] | None = None) -> int:
    by_name = {source.name: source for source in CRDS}
    parser = argparse.ArgumentParser(prog="python -m agentpool_tools.gen_crd",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=None,
                        help="one CRD file to write or check (default: every CRD, as "
                        f"{CRDS_DIR}/<group>_<plural>.yaml)")
    parser.add_argument("--crd", choices=sorted(by_name), default=AGENTPOOL.name,
                        help="the CRD --output is for (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if a file differs from the models")
    args = parser.parse_args(argv)
    if args.output is not None:
        targets = [(args.output, by_name[args.crd])]
    else:
        targets = [(CRDS_DIR / source.file_name, source) for source in CRDS]
    if args.check:
        fresh = [_check(path, render(source)) for path, source in targets]
        return 0 if all(fresh) else 1
    for path, source in targets:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render(source))
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

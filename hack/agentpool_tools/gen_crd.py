"""Write, or check, the generated AgentPool CRD: `python -m agentpool_tools.gen_crd`.

`make crds` runs it to regenerate `crds/agentpool.dev_agentpools.yaml` from the models;
`--check` exits 1 (printing a diff) when the committed file differs from what the models
generate, so CI catches a model change without a regenerated CRD.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from agentpool_tools.crd import CRD_NAME, build_crd

DEFAULT_OUTPUT = Path("crds") / f"{CRD_NAME.split('.', 1)[1]}_{CRD_NAME.split('.', 1)[0]}.yaml"
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


def render() -> str:
    """The CRD file's exact text."""
    body = yaml.dump(build_crd(), Dumper=_Dumper, sort_keys=False, width=100,
                     default_flow_style=False, allow_unicode=True)
    return HEADER + body


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentpool_tools.gen_crd",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT,
                        help=f"CRD file to write or check (default: {DEFAULT_OUTPUT})")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if the file differs from the models")
    args = parser.parse_args(argv)
    wanted = render()
    if args.check:
        current = args.output.read_text() if args.output.exists() else ""
        if current == wanted:
            return 0
        sys.stdout.writelines(difflib.unified_diff(
            current.splitlines(keepends=True), wanted.splitlines(keepends=True),
            str(args.output), "generated"))
        print(f"{args.output} is out of date: run `make crds`", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(wanted)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

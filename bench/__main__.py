"""Run the benchmarks: `python -m bench all` or `python -m bench <name> [options]`.

    python -m bench throughput|latency|warmcold|crash|budget [--help for options]
    python -m bench operator-scale [options]     # needs the test control plane
    python -m bench real-pods [--reps N]         # a real node: cold start, burst, memory (root)
    python -m bench all [--smoke]                # every runtime benchmark, then operator-scale

Each prints a Markdown table (also pasteable into bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from types import ModuleType
from typing import cast

RUNTIME = {"throughput": "bench.runtime_throughput", "latency": "bench.runtime_latency",
           "warmcold": "bench.runtime_warmcold", "crash": "bench.runtime_crash",
           "budget": "bench.budget_limiter"}
# Smoke-sized options of each runtime benchmark (what the tests run).
SMOKE = {"throughput": ["--tasks", "200", "--reps", "1"],
         "latency": ["--tasks", "200", "--levels", "50"],
         "warmcold": ["--reps", "1"],
         "crash": ["--tasks", "200"],
         "budget": ["--ops", "1000"]}


def _module(name: str) -> ModuleType:
    return importlib.import_module(RUNTIME[name])


def run_one(name: str, argv: list[str]) -> str:
    module = _module(name)
    parser = argparse.ArgumentParser(prog=f"python -m bench {name}", description=module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    module.add_arguments(parser)
    main = cast(Callable[[argparse.Namespace], str], module.main)
    return main(parser.parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name == "operator-scale":
        from bench import operator_scale
        return operator_scale.main(rest)
    if name == "real-pods":
        from bench import real_pods
        return real_pods.main(rest)
    if name == "all":
        smoke = "--smoke" in rest
        for bench_name in RUNTIME:
            print(run_one(bench_name, SMOKE[bench_name] if smoke else []), "\n", flush=True)
        from bench import operator_scale
        return operator_scale.main(["--pools", "5", "--steady-seconds", "5"] if smoke else [])
    if name not in RUNTIME:
        print(f"unknown benchmark {name!r}; one of: all, operator-scale, {', '.join(RUNTIME)}",
              file=sys.stderr)
        return 2
    print(run_one(name, rest))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Reads which modules each module of a package imports, for the import-rule test (pure).

Only the source is parsed (nothing is imported), so a rule is checked on every module whether
or not a test loads it. Imports inside functions count like top-level ones; imports under
`if TYPE_CHECKING:` are marked type-only: they load nothing at run time, so layering rules
let them pass (a rule's `never` list does not).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module (a submodule when `from pkg import submodule`)
    path: Path
    line: int
    type_only: bool


def within(module: str, prefix: str) -> bool:
    """`module` is `prefix` or lies under it (`a.b` is within `a`, `ab` is not)."""
    return module == prefix or module.startswith(prefix + ".")


def modules_of(package_dir: Path, package: str) -> dict[str, Path]:
    """Every module of a package directory, by dotted name."""
    found = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join([package, *parts])] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST, type_only: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node, type_only
    for child in ast.iter_child_nodes(node):
        guarded = isinstance(node, ast.If) and _is_type_checking(node.test) and (
            child in node.body)
        yield from _walk(child, type_only or guarded)


def imports_of(module: str, path: Path, known: Iterable[str]) -> list[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    known = set(known)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[Import] = []
    for node, type_only in _walk(tree, False):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:  # relative: from the importing module's package upwards
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import submodule` imports the submodule.
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                       for alias in node.names]
        found.extend(Import(module, target, path, node.lineno, type_only)
                     for target in dict.fromkeys(targets))
    return found

"""Kubernetes label selectors in their string form, as the external metrics API receives them.

The HPA controller serialises its `metric.selector` into the `labelSelector` query parameter
(`agentpool.dev/pool=research`, or set-based forms such as `agentpool.dev/pool in (a,b)`);
`server.py` parses it here and keeps the pools whose metric labels match. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

Operator = Literal["=", "!=", "in", "notin", "exists", "!"]

# A qualified label key (optional DNS prefix + "/" + name) or a label value; deliberately a
# little more permissive than the API server's validation, which has already run on the HPA.
_KEY = r"[A-Za-z0-9](?:[-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET = re.compile(rf"^\s*(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)\s*$")
_EQUALITY = re.compile(rf"^\s*(?P<key>{_KEY})\s*(?P<op>==|=|!=)\s*(?P<value>{_VALUE})\s*$")
_EXISTS = re.compile(rf"^\s*(?P<op>!?)\s*(?P<key>{_KEY})\s*$")
_VALUE_ONLY = re.compile(rf"^{_VALUE}$")


class SelectorError(ValueError):
    """The labelSelector parameter is not a valid label selector (HTTP 400)."""


@dataclass(frozen=True)
class Requirement:
    """One comma-separated term of a selector."""

    key: str
    operator: Operator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.operator == "exists":
            return present
        if self.operator == "!":
            return not present
        if self.operator in ("=", "in"):
            return present and value in self.values
        # "!=" and "notin" also match objects without the label, as in Kubernetes.
        return not present or value not in self.values


@dataclass(frozen=True)
class Selector:
    """All requirements must hold; the empty selector matches everything."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    def exact_values(self, key: str) -> frozenset[str] | None:
        """The only values `key` may have to match (from `=` or `in`), or None when the
        selector does not pin `key`: lets the caller fetch named objects instead of listing."""
        pinned: frozenset[str] | None = None
        for requirement in self.requirements:
            if requirement.key == key and requirement.operator in ("=", "in"):
                pinned = requirement.values if pinned is None else pinned & requirement.values
        return pinned


def _split_terms(text: str) -> list[str]:
    """Split on the commas that separate terms, not those inside `in (a,b)` value sets."""
    terms: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unbalanced parenthesis in label selector {text!r}")
        if char == "," and depth == 0:
            terms.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise SelectorError(f"unbalanced parenthesis in label selector {text!r}")
    terms.append("".join(current))
    return terms


def _parse_term(term: str) -> Requirement:
    if match := _SET.match(term):
        values = [v.strip() for v in match["values"].split(",")]
        if not match["values"].strip() or any(not _VALUE_ONLY.match(v) for v in values):
            raise SelectorError(f"invalid value set in label selector term {term.strip()!r}")
        operator: Operator = "in" if match["op"] == "in" else "notin"
        return Requirement(match["key"], operator, frozenset(values))
    if match := _EQUALITY.match(term):
        operator = "!=" if match["op"] == "!=" else "="
        return Requirement(match["key"], operator, frozenset([match["value"]]))
    if match := _EXISTS.match(term):
        return Requirement(match["key"], "!" if match["op"] else "exists")
    raise SelectorError(f"invalid label selector term {term.strip()!r}")


def parse_selector(text: str | None) -> Selector:
    """Parse `labelSelector`; None or blank is the empty selector. Raises `SelectorError`."""
    if text is None or not text.strip():
        return Selector()
    return Selector(tuple(_parse_term(term) for term in _split_terms(text)))

"""Label selectors as the HPA controller sends them in `labelSelector`."""

from __future__ import annotations

import pytest

from agentpool_operator.metrics_api.selector import SelectorError, parse_selector

POOL = "agentpool.dev/pool"


def test_equality_pins_the_pool() -> None:
    selector = parse_selector(f"{POOL}=research")
    assert selector.exact_values(POOL) == frozenset({"research"})
    assert selector.matches({POOL: "research"})
    assert not selector.matches({POOL: "other"})
    assert not selector.matches({})
    assert parse_selector(f"{POOL}==research") == selector


def test_empty_selector_matches_everything() -> None:
    for text in (None, "", "  "):
        selector = parse_selector(text)
        assert selector.matches({})
        assert selector.exact_values(POOL) is None


@pytest.mark.parametrize(
    ("text", "labels", "matches"),
    [
        (f"{POOL} in (a, b)", {POOL: "b"}, True),
        (f"{POOL} in (a,b)", {POOL: "c"}, False),
        (f"{POOL} notin (a,b)", {POOL: "c"}, True),
        (f"{POOL} notin (a,b)", {}, True),
        (f"{POOL}!=a", {}, True),
        (f"{POOL}!=a", {POOL: "a"}, False),
        (POOL, {POOL: "x"}, True),
        (f"!{POOL}", {POOL: "x"}, False),
        (f"{POOL} in (a,b),tier=gold", {POOL: "a", "tier": "gold"}, True),
        (f"{POOL} in (a,b),tier=gold", {POOL: "a"}, False),
    ],
)
def test_set_based_and_negative_terms(text: str, labels: dict[str, str], matches: bool) -> None:
    assert parse_selector(text).matches(labels) is matches


def test_in_and_equality_together_intersect() -> None:
    selector = parse_selector(f"{POOL} in (a,b),{POOL}=b")
    assert selector.exact_values(POOL) == frozenset({"b"})


@pytest.mark.parametrize("text", [f"{POOL} in ()", f"{POOL} in (a", "a=b)", "=x", "a b",
                                  f"{POOL}=x y", "a in (b c)"])
def test_invalid_selectors_are_rejected(text: str) -> None:
    with pytest.raises(SelectorError):
        parse_selector(text)

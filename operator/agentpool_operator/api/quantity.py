"""Kubernetes resource quantities (`500m`, `1Gi`, `2`): the API type and a parser.

`Quantity` is the pydantic type used for CPU and memory fields. It keeps the value exactly as
the user wrote it (an int or a string), so a spec read from the API server round-trips
unchanged, and its JSON schema is what controller-gen emits for `resource.Quantity`
(int-or-string with the quantity pattern). `parse_quantity` turns a quantity into an exact
`Decimal` so the operator can compare values in Python (for instance a worker's memory cap
against the container limit) with the same result as the API server's CEL `quantity()`.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, WithJsonSchema

# The grammar of k8s.io/apimachinery resource.Quantity. controller-gen's pattern also admits a
# fractional exponent ("1e.5"), which ParseQuantity (and so the API server's `quantity()`)
# refuses: a value the schema let through would then be skipped by every CEL rule. Exponents
# have at most two digits: nothing a container can have needs more, and `1e3000000` would
# only be a way to make parsers fail.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?[0-9]{1,2}))?$"
)
# Resource amounts cannot be negative: the same grammar without the minus sign.
NON_NEGATIVE_QUANTITY_PATTERN = QUANTITY_PATTERN.replace(r"^(\+|-)?", r"^\+?", 1)
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)
_NUMBER_RE = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(.*)$")

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}

QUANTITY_JSON_SCHEMA: dict[str, Any] = {
    "anyOf": [{"type": "integer"}, {"type": "string"}],
    "pattern": QUANTITY_PATTERN,
    # Bounds the CEL rules' cost estimate (the API server budgets for the longest string);
    # no real quantity comes near it.
    "maxLength": 64,
    "x-kubernetes-int-or-string": True,
}


class QuantityError(ValueError):
    """A value that is not a Kubernetes quantity."""


def parse_quantity(value: int | str | float) -> Decimal:
    """The exact numeric value of a quantity: `parse_quantity("1Ki") == Decimal(1024)`.

    Raises `QuantityError` for anything the API server would reject.
    """
    if isinstance(value, float):
        raise QuantityError(
            f"{value!r} is a decimal number, not a quantity: quote it (\"{value}\") or use a "
            "suffix, e.g. \"500m\" for half a CPU or \"1.5Gi\" for memory")
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise QuantityError(f"a quantity must be an integer or a string, not {value!r}")
    if isinstance(value, int):
        return Decimal(value)
    if not _QUANTITY_RE.match(value):
        raise QuantityError(
            f"{value!r} is not a quantity: use a number with an optional suffix, "
            "e.g. 500m, 2, 512Mi, 1Gi, 1e3"
        )
    match = _NUMBER_RE.match(value)
    if match is None:  # unreachable: the pattern above already guarantees a leading number
        raise QuantityError(f"{value!r} is not a quantity")
    number, suffix = match.groups()
    try:
        base = Decimal(number)
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits only numbers
        raise QuantityError(f"{value!r} is not a quantity") from exc
    if suffix in _BINARY:
        return base * (Decimal(1024) ** _BINARY[suffix])
    if suffix in _DECIMAL:
        return base.scaleb(_DECIMAL[suffix])
    # Only the exponent form is left, e.g. "1e3" or "2.5E-2".
    return base.scaleb(int(suffix[1:]))


def _validate(value: int | str) -> int | str:
    parse_quantity(value)
    return value


def _not_a_float(value: Any) -> Any:
    # Before pydantic's int-or-str coercion, whose message would not say to quote the value.
    if isinstance(value, float):
        parse_quantity(value)
    return value


def _validate_non_negative(value: int | str) -> int | str:
    if parse_quantity(value) < 0:
        raise QuantityError(f"{value!r} is negative: a resource amount is 0 or more")
    return value


Quantity = Annotated[
    int | str,
    BeforeValidator(_not_a_float),
    AfterValidator(_validate),
    WithJsonSchema(QUANTITY_JSON_SCHEMA),
]
"""A resource quantity, kept as written (int or string); see `parse_quantity`."""

ResourceQuantity = Annotated[
    int | str,
    BeforeValidator(_not_a_float),
    AfterValidator(_validate),
    AfterValidator(_validate_non_negative),
    WithJsonSchema({**QUANTITY_JSON_SCHEMA, "pattern": NON_NEGATIVE_QUANTITY_PATTERN,
                    "minimum": 0}),
]
"""An amount of a resource (CPU, memory, ...): a quantity that is not negative."""


def whole_bytes(value: int | str) -> int:
    """A memory quantity in bytes; QuantityError unless it is a whole, positive number of
    bytes (`500m` is half a byte: the kubelet would silently round it)."""
    amount = parse_quantity(value)
    if amount <= 0 or amount != amount.to_integral_value():
        raise QuantityError(
            f"{value!r} is not a whole number of bytes above 0: use e.g. 512Mi or 1Gi "
            "(the suffix m means thousandths, so 500m is half a byte)")
    return int(amount)

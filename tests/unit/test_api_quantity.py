"""`parse_quantity` and the `Quantity` type agree with Kubernetes' resource.Quantity."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import BaseModel, ValidationError

from agentpool_operator.api.quantity import Quantity, QuantityError, parse_quantity


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        (3, 3),
        ("1Ki", 1024),
        ("1Mi", 1024**2),
        ("1.5Gi", Decimal("1.5") * 1024**3),
        ("2Ti", 2 * 1024**4),
        ("1Ei", 1024**6),
        ("500m", Decimal("0.5")),
        ("100n", Decimal("1e-7")),
        ("250u", Decimal("0.00025")),
        ("1k", 1000),
        ("1M", 10**6),
        ("3G", 3 * 10**9),
        ("1E", 10**18),
        ("1e3", 1000),
        ("2.5E-2", Decimal("0.025")),
        (".5", Decimal("0.5")),
        ("+1", 1),
        ("-1Gi", -(1024**3)),
    ],
)
def test_parse_quantity_returns_the_exact_value(text: int | str, value: int | Decimal) -> None:
    assert parse_quantity(text) == value


def test_units_compare_like_the_api_server() -> None:
    assert parse_quantity("1024Mi") == parse_quantity("1Gi")
    assert parse_quantity("1G") < parse_quantity("1Gi")
    assert parse_quantity(2) > parse_quantity("1500m")


@pytest.mark.parametrize("bad", ["", "1 Gi", "1GB", "Gi", "1.2.3", "1ki", "0x10", "1e", True, 1.5])
def test_parse_quantity_rejects_what_the_api_server_rejects(bad: object) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(bad)  # type: ignore[arg-type]


class _Holder(BaseModel):
    q: Quantity


def test_quantity_type_keeps_the_value_as_written() -> None:
    assert _Holder(q="1024Mi").q == "1024Mi"
    assert _Holder(q=1073741824).q == 1073741824
    assert _Holder.model_validate_json('{"q": 2}').q == 2


def test_quantity_type_rejects_malformed_values_with_an_example() -> None:
    with pytest.raises(ValidationError, match=r"e\.g\. 500m"):
        _Holder(q="1 GB")


def test_quantity_json_schema_is_what_controller_gen_emits() -> None:
    schema = _Holder.model_json_schema()["properties"]["q"]
    assert schema["x-kubernetes-int-or-string"] is True
    assert schema["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert schema["pattern"].startswith(r"^(\+|-)?(([0-9]+(\.[0-9]*)?)")

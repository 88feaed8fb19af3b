"""Does a live object already hold everything we would apply? (pure)

The applier skips server-side apply when the answer is yes, so a steady state makes no write
requests at all, while a hand edit of any field we own, or a deleted child, is still repaired on
the next reconcile. Fields other controllers or people add are not ours and are ignored, as
server-side apply itself would. Each desired manifest carries a hash of itself
(`agentpool.dev/applied-hash`), so removing a field from the desired state also changes the
comparison and the next apply drops it.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal, InvalidOperation
from typing import Any

from agentpool_operator.api import QuantityError, parse_quantity

APPLIED_HASH = "agentpool.dev/applied-hash"


def manifest_hash(manifest: dict[str, Any]) -> str:
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def with_applied_hash(manifest: dict[str, Any]) -> dict[str, Any]:
    """A copy of `manifest` annotated with the hash of its own content."""
    stamped: dict[str, Any] = json.loads(json.dumps(manifest))
    annotations = stamped.setdefault("metadata", {}).setdefault("annotations", {})
    annotations.pop(APPLIED_HASH, None)
    annotations[APPLIED_HASH] = manifest_hash(manifest)
    return stamped


def _is_empty(value: Any) -> bool:
    # The API server omits optional fields holding their zero value (`omitempty`), so such a
    # desired value matches an absent field.
    return value is None or value is False or (
        isinstance(value, int | str | list | dict) and not isinstance(value, bool) and not value)


def _same_scalar(desired: Any, live: Any) -> bool:
    if isinstance(desired, bool) or isinstance(live, bool):
        # Python's True == 1; Kubernetes' true and 1 are different values.
        return type(desired) is type(live) and desired == live
    if desired == live:
        return True
    if isinstance(desired, int | str) and isinstance(live, int | str):
        # The API server rewrites quantities to canonical form ("0.5" -> "500m").
        try:
            return parse_quantity(desired) == parse_quantity(live)
        except (QuantityError, InvalidOperation, ValueError):
            return str(desired) == str(live)
    if isinstance(desired, float) and isinstance(live, int | float):
        return Decimal(str(desired)) == Decimal(str(live))
    return False


def contains(live: Any, desired: Any) -> bool:
    """True when every field of `desired` is present in `live` with an equal value."""
    if isinstance(desired, dict):
        if not isinstance(live, dict):
            return False
        for key, value in desired.items():
            if key not in live:
                if _is_empty(value):
                    continue
                return False
            if not contains(live[key], value):
                return False
        return True
    if isinstance(desired, list):
        if not isinstance(live, list) or len(live) != len(desired):
            return _is_empty(desired) and _is_empty(live)
        return all(contains(lv, dv) for lv, dv in zip(live, desired, strict=True))
    return _same_scalar(desired, live)


def differing_paths(live: Any, desired: Any, prefix: str = "") -> list[str]:
    """Paths where `live` lacks or differs from `desired`, for events and logs (no values)."""
    if contains(live, desired):
        return []
    if isinstance(desired, dict) and isinstance(live, dict):
        found: list[str] = []
        for key, value in desired.items():
            found += differing_paths(live.get(key), value, f"{prefix}.{key}")
        return found or [prefix or "."]
    return [prefix or "."]

"""An AgentBudget's saturation (pure): from what its keys hold in Redis to `status.keys` and
the `Saturated` condition.

A key is saturated when its usage in the window is at `SATURATION_SHARE` of a limit or more,
a cool-down is active (the provider answered 429), or tasks wait for a permit. The status is
meant to be written only when something flips, so an entry whose `saturated` flag did not
flip is carried over as it was (reason, message and `since` included), messages name limits,
never usage counts that move, and an Unknown condition keeps its first message.

The readings come from `budget_usage.py`; `budget_status.py` puts the result into the status.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from agentpool_operator.api import (
    AgentBudgetSpec,
    BudgetKey,
    BudgetKeyStatus,
    Condition,
    ConditionType,
    Reason,
    find_condition,
)

SATURATION_SHARE = 0.95
"""Usage at this share of a limit counts as saturated: a limiter granting at the limit rarely
shows the last permit of a window in a reading taken at some moment of it."""


@dataclass(frozen=True)
class KeyReading:
    """What one budget key holds now (`agent_runtime.contract.BUDGET_USAGE_SCRIPT`)."""

    requests_last_second: int = 0
    requests_last_minute: int = 0
    tokens_last_minute: int = 0
    in_flight: int = 0
    cooldown_seconds: float = 0.0
    waiting: int = 0


@dataclass(frozen=True)
class ServerReading:
    """The budget's keys as read from one Redis server (`host:port/db`, no credentials)."""

    server: str
    keys: Mapping[str, KeyReading] = field(default_factory=dict)
    """By key name; a key never used has an all-zero reading."""
    error: str | None = None
    """Why the server could not be read (its message names the server, never credentials)."""


@dataclass(frozen=True)
class Saturation:
    keys: list[BudgetKeyStatus]
    condition: Condition


def key_saturation(key: BudgetKey, reading: KeyReading) -> tuple[str, str] | None:
    """(reason, message) when the key is saturated, else None."""
    if reading.cooldown_seconds > 0:
        return "CoolDown", "cooling down: the provider answered 429 (Retry-After)"
    limits: list[tuple[str, str, int | None, float]] = [
        ("ConcurrentRequests", "concurrent requests", key.concurrent_requests,
         reading.in_flight),
        ("RequestsPerSecond", "requests per second", key.requests_per_second,
         reading.requests_last_second),
        ("RequestsPerMinute", "requests per minute", key.requests_per_minute,
         reading.requests_last_minute),
        ("TokensPerMinute", "tokens per minute", key.tokens_per_minute,
         reading.tokens_last_minute),
    ]
    for reason, what, limit, used in limits:
        if limit is not None and used >= SATURATION_SHARE * limit:
            return reason, f"{what} at {SATURATION_SHARE:.0%} or more of the limit ({limit})"
    if reading.waiting > 0:
        return "TasksWaiting", "tasks are waiting for a permit"
    return None


def saturation(spec: AgentBudgetSpec, readings: Sequence[ServerReading] | None,
               current: Mapping[str, Any], generation: int, now: dt.datetime) -> Saturation:
    """The keys' entries and the Saturated condition. `readings` is None when no pool uses
    the budget, empty while the servers of the pools using it are not known yet."""
    previous = _previous_keys(current)
    old = _previous_condition(current)
    if readings is None:
        return Saturation([], _condition(
            "False", Reason.NOT_USED, "no pool uses the budget", generation, now, old))
    if not readings:
        return Saturation(_carried(spec, previous), _condition(
            "Unknown", Reason.USAGE_PENDING,
            "the queues of the pools using the budget are not known yet", generation, now,
            old))
    failed = [r.error for r in readings if r.error is not None]
    if failed:
        # Keep the last known entries: an outage says nothing about the keys.
        return Saturation(_carried(spec, previous), _condition(
            "Unknown", Reason.REDIS_UNREACHABLE, "; ".join(failed), generation, now, old))
    entries = []
    for key in spec.keys:
        found = [s for r in readings
                 if (s := key_saturation(key, r.keys.get(key.name, KeyReading()))) is not None]
        reason, message = found[0] if found else (
            Reason.BELOW_LIMITS, "below 95 % of its limits, no cool-down, no task waiting")
        before = previous.get(key.name)
        if before is not None and before.saturated == bool(found):
            entries.append(before)
        else:
            entries.append(BudgetKeyStatus(name=key.name, saturated=bool(found), since=now,
                                           reason=str(reason), message=message))
    saturated = [entry.name for entry in entries if entry.saturated]
    if saturated:
        condition = _condition("True", Reason.KEYS_SATURATED,
                               f"saturated: {', '.join(saturated)} (see status.keys)",
                               generation, now, old)
    else:
        condition = _condition("False", Reason.BELOW_LIMITS, "no key is saturated",
                               generation, now, old)
    return Saturation(entries, condition)


def _condition(status: str, reason: str, message: str, generation: int, now: dt.datetime,
               old: Condition | None) -> Condition:
    if old is not None and old.status == status and old.reason == reason:
        # Same state: an outage's error text may vary from one look to the next.
        if status == "Unknown":
            message = old.message
        now = old.last_transition_time
    return Condition.model_validate({
        "type": ConditionType.SATURATED, "status": status, "reason": reason,
        "message": message, "observedGeneration": generation, "lastTransitionTime": now})


def _carried(spec: AgentBudgetSpec, previous: Mapping[str, BudgetKeyStatus]
             ) -> list[BudgetKeyStatus]:
    return [previous[key.name] for key in spec.keys if key.name in previous]


def _previous_keys(current: Mapping[str, Any]) -> dict[str, BudgetKeyStatus]:
    found = {}
    for entry in current.get("keys") or []:
        try:
            parsed = BudgetKeyStatus.model_validate(entry)
        except ValidationError:
            continue
        found[parsed.name] = parsed
    return found


def _previous_condition(current: Mapping[str, Any]) -> Condition | None:
    try:
        conditions = [Condition.model_validate(c) for c in current.get("conditions") or []]
    except ValidationError:
        return None
    return find_condition(conditions, ConditionType.SATURATED)

"""An AgentBudget's saturation from its keys' readings (pure): which key is saturated and why,
the Saturated condition, and stability: an entry or condition that did not flip comes back
exactly as it was, so the status writer has nothing to write."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from agentpool_operator.api import AgentBudgetSpec
from agentpool_operator.budget_saturation import (
    KeyReading,
    Saturation,
    ServerReading,
    saturation,
)

T0 = dt.datetime(2026, 12, 5, 10, 0, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(seconds=30)
SPEC = AgentBudgetSpec.model_validate({"keys": [
    {"name": "openai", "requestsPerMinute": 100, "tokensPerMinute": 10_000,
     "concurrentRequests": 4},
    {"name": "search", "requestsPerSecond": 20},
]})
SERVER = "redis.platform:6379/0"


def read(**keys: KeyReading) -> list[ServerReading]:
    return [ServerReading(SERVER, keys)]


def as_status(result: Saturation) -> dict[str, Any]:
    return {"keys": [k.to_json() for k in result.keys],
            "conditions": [result.condition.to_json()]}


def keys_of(result: Saturation) -> dict[str, tuple[bool, str]]:
    return {k.name: (k.saturated, k.reason) for k in result.keys}


@pytest.mark.parametrize(("reading", "reason"), [
    (KeyReading(requests_last_minute=95), "RequestsPerMinute"),
    (KeyReading(tokens_last_minute=9_600), "TokensPerMinute"),
    (KeyReading(in_flight=4), "ConcurrentRequests"),
    (KeyReading(cooldown_seconds=2.5, requests_last_minute=100), "CoolDown"),
    (KeyReading(waiting=1), "TasksWaiting"),
])
def test_a_key_at_a_limit_cooling_down_or_with_tasks_waiting_is_saturated(
        reading: KeyReading, reason: str) -> None:
    result = saturation(SPEC, read(openai=reading), {}, 3, T0)
    assert keys_of(result) == {"openai": (True, reason), "search": (False, "BelowLimits")}
    condition = result.condition.to_json()
    assert (condition["type"], condition["status"], condition["reason"]) == (
        "Saturated", "True", "KeysSaturated")
    assert condition["observedGeneration"] == 3
    assert "openai" in condition["message"]
    assert "search" not in condition["message"]


def test_keys_below_95_percent_of_every_limit_are_not_saturated() -> None:
    result = saturation(SPEC, read(openai=KeyReading(
        requests_last_minute=94, tokens_last_minute=9_400, in_flight=3),
        search=KeyReading(requests_last_second=18)), {}, 1, T0)
    assert keys_of(result) == {"openai": (False, "BelowLimits"),
                               "search": (False, "BelowLimits")}
    assert (result.condition.status, result.condition.reason) == ("False", "BelowLimits")
    # A key never used has no reading: all zero.
    assert keys_of(saturation(SPEC, read(), {}, 1, T0))["search"] == (False, "BelowLimits")


def test_a_key_saturated_on_any_of_its_servers_is_saturated() -> None:
    readings = [ServerReading("a:6379/0", {"search": KeyReading()}),
                ServerReading("b:6379/0", {"search": KeyReading(requests_last_second=20)})]
    assert keys_of(saturation(SPEC, readings, {}, 1, T0))["search"] == (
        True, "RequestsPerSecond")


def test_what_did_not_flip_comes_back_unchanged_and_a_flip_moves_since() -> None:
    first = saturation(SPEC, read(openai=KeyReading(requests_last_minute=99)), {}, 1, T0)
    # Later, still saturated but for another reason, usage moving: nothing changes.
    again = saturation(SPEC, read(openai=KeyReading(in_flight=4, requests_last_minute=20)),
                       as_status(first), 1, T1)
    assert as_status(again) == as_status(first)
    # Below the limits: the key and the condition flip, at T1.
    calm = saturation(SPEC, read(), as_status(again), 1, T1)
    (openai, search) = as_status(calm)["keys"]
    assert (openai["saturated"], openai["since"], openai["reason"]) == (
        False, "2026-12-05T10:00:30Z", "BelowLimits")
    assert search == as_status(first)["keys"][1]  # never flipped: since stays T0
    condition = as_status(calm)["conditions"][0]
    assert (condition["status"], condition["lastTransitionTime"]) == (
        "False", "2026-12-05T10:00:30Z")


def test_an_unreachable_redis_makes_the_condition_unknown_and_keeps_the_last_keys() -> None:
    known = as_status(saturation(SPEC, read(search=KeyReading(waiting=2)), {}, 1, T0))
    down = saturation(SPEC, [ServerReading(SERVER, error=f"cannot read redis {SERVER}: "
                                                         "Connection refused")], known, 1, T1)
    assert as_status(down)["keys"] == known["keys"]
    condition = down.condition.to_json()
    assert (condition["status"], condition["reason"]) == ("Unknown", "RedisUnreachable")
    assert SERVER in condition["message"]
    # Another error text on the next look is the same outage: nothing to write.
    still = saturation(SPEC, [ServerReading(SERVER, error="Timeout reading from socket")],
                       as_status(down), 1, T1 + dt.timedelta(seconds=30))
    assert as_status(still) == as_status(down)


def test_a_budget_no_pool_uses_has_no_keys_and_one_waiting_for_its_queues_is_unknown() -> None:
    unused = saturation(SPEC, None, {}, 1, T0)
    assert (unused.keys, unused.condition.status, unused.condition.reason) == (
        [], "False", "NotUsed")
    pending = saturation(SPEC, [], {}, 1, T0)
    assert (pending.condition.status, pending.condition.reason) == ("Unknown", "UsagePending")

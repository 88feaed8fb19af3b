"""`set_condition` follows apimachinery's meta.SetStatusCondition."""

from __future__ import annotations

import datetime as dt

import pytest
from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from agentpool_operator.api.conditions import (
    Condition,
    ConditionType,
    find_condition,
    remove_condition,
    set_condition,
)

T0 = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(minutes=5)


def cond(
    status: str = "True", reason: str = "AsExpected", message: str = "", at: dt.datetime = T0,
    type_: str = ConditionType.READY, generation: int | None = 1,
) -> Condition:
    return Condition.model_validate({
        "type": type_, "status": status, "reason": reason, "message": message,
        "lastTransitionTime": at, "observedGeneration": generation,
    })


def test_a_new_type_is_appended() -> None:
    progressing = cond(type_=ConditionType.PROGRESSING)
    result, changed = set_condition([progressing], cond())
    assert changed
    assert [c.type for c in result] == ["Progressing", "Ready"]


def test_same_status_keeps_the_transition_time_but_updates_the_rest() -> None:
    result, changed = set_condition(
        [cond()], cond(reason="Scaled", message="3/3 ready", at=T1, generation=2)
    )
    assert changed
    (ready,) = result
    assert ready.last_transition_time == T0
    assert (ready.reason, ready.message, ready.observed_generation) == ("Scaled", "3/3 ready", 2)


def test_a_status_flip_moves_the_transition_time() -> None:
    (ready,), changed = set_condition([cond()], cond(status="False", reason="PodsNotReady", at=T1))
    assert changed
    assert ready.status == "False"
    assert ready.last_transition_time == T1


def test_an_identical_condition_is_no_change() -> None:
    # The reconcile loop relies on this to skip status writes in a steady state.
    result, changed = set_condition([cond()], cond(at=T1))
    assert not changed
    assert result == [cond()]


def test_other_conditions_and_order_are_kept() -> None:
    degraded = cond(type_=ConditionType.DEGRADED, status="False")
    progressing = cond(type_=ConditionType.PROGRESSING)
    result, _ = set_condition([degraded, cond(), progressing], cond(status="False", at=T1))
    assert [c.type for c in result] == ["Degraded", "Ready", "Progressing"]
    assert result[0] is degraded
    assert result[2] is progressing


def test_find_and_remove() -> None:
    conditions = [cond(), cond(type_=ConditionType.DEGRADED)]
    assert find_condition(conditions, "Degraded") == conditions[1]
    assert find_condition(conditions, "Progressing") is None
    kept, removed = remove_condition(conditions, "Degraded")
    assert removed
    assert kept == [conditions[0]]
    assert remove_condition(kept, "Degraded") == (kept, False)


def test_serialized_like_metav1_condition() -> None:
    at = T0.replace(microsecond=123456)
    assert cond(at=at).to_json() == {
        "type": "Ready", "status": "True", "reason": "AsExpected", "message": "",
        "lastTransitionTime": "2026-01-01T12:00:00Z", "observedGeneration": 1,
    }


def test_sub_second_differences_are_not_changes() -> None:
    _, changed = set_condition([cond()], cond(status="True", at=T0.replace(microsecond=5)))
    assert not changed


@pytest.mark.parametrize(
    "bad",
    [{"status": "Maybe"}, {"reason": "not camel case"}, {"reason": ""}, {"type": "bad type!"}],
)
def test_invalid_conditions_are_rejected(bad: dict[str, str]) -> None:
    fields = {"type": "Ready", "status": "True", "reason": "Ok", "message": "",
              "lastTransitionTime": T0, **bad}
    with pytest.raises(ValidationError):
        Condition.model_validate(fields)


def test_naive_timestamps_are_refused_on_output() -> None:
    naive = cond(at=T0.replace(tzinfo=None))
    with pytest.raises(PydanticSerializationError, match="timezone-aware"):
        naive.to_json()

"""Events a reconcile posts: one per reason for applied children, one per flipped condition."""

from __future__ import annotations

from agentpool_operator.announce import Applied, applied, flips


def test_children_applied_in_one_reconcile_make_one_event_per_reason() -> None:
    found = applied([Applied("ConfigMap", "p-config"), Applied("Service", "p"),
                     Applied("Deployment", "p", ["spec.template", "metadata.labels"])])
    assert found == [
        ("Normal", "Created", "created ConfigMap p-config, Service p"),
        ("Normal", "Updated", "updated Deployment p (spec.template, metadata.labels)"),
    ]
    assert applied([]) == []


def condition(type_: str, status: str, reason: str = "R") -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": f"{type_} {status}"}


def test_only_flips_are_announced_and_a_new_pool_not_yet_ready_is_quiet() -> None:
    new = {"conditions": [condition("Ready", "False"), condition("Degraded", "False")]}
    assert flips({}, new) == []
    ready = {"conditions": [condition("Ready", "True", "MinimumReplicasAvailable"),
                            condition("Degraded", "False")]}
    assert flips(new, ready) == [("Normal", "MinimumReplicasAvailable", "Ready True")]
    assert flips(ready, ready) == []
    broken = {"conditions": [condition("Ready", "False", "SecretMissing"),
                             condition("Degraded", "True", "SecretMissing")]}
    assert flips(ready, broken) == [("Warning", "SecretMissing", "Ready False"),
                                    ("Warning", "SecretMissing", "Degraded True")]

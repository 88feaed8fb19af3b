"""An AgentPool's status from what the reconcile observed (pure).

Called by `reconcile.py` after applying children. The result is compared with the live status
and written only when it differs; condition timestamps move only when a status flips
(`set_condition`), so a steady pool produces identical status and no writes.

Condition reasons, by type:
Every reason is a member of `api.Reason` (documented there). By condition type:
- Ready: `MinimumReplicasAvailable` / `MinimumReplicasUnavailable`, or the Degraded reason
  when the pool cannot be acted on at all (`InvalidSpec`, `SecretMissing`, ...).
- Progressing: `RollingOut` (new pod template not fully rolled out), `Scaling` (pod count
  moving towards spec.replicas), `Complete` (nothing in flight).
- Degraded: `SecretMissing`, `InvalidDatabaseDSN`, `InvalidSpec` (the spec passed the API
  server but cannot be built or run: the message names the field), `ChildConflict` (an object
  with a child's name exists and is not this pool's: never taken over), `QueueConflict`
  (another pool, created earlier, reads the same stream and group), `CrashLooping`,
  `PodCreationFailed` (e.g. a missing ServiceAccount or a quota), `RolloutStuck` (progress
  deadline exceeded), `ApplyFailed`; `AsExpected` when healthy.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from agentpool_operator.api import Condition, ConditionType, Reason, set_condition

# metav1.Condition allows 32768 characters; an API server's error (a whole rejected manifest)
# can be longer. Each problem gets a share, so one long message cannot hide the others.
MAX_CONDITION_MESSAGE = 32768
MAX_PROBLEM_MESSAGE = 4096


def clamp(message: str, limit: int) -> str:
    """`message` cut to at most `limit` characters, saying that it was."""
    if len(message) <= limit:
        return message
    marker = " ... (truncated)"
    return message[:limit - len(marker)] + marker


@dataclass(frozen=True, kw_only=True)
class Problem:
    """Something that makes the pool Degraded; `blocking` problems stop the reconcile."""

    reason: str
    message: str
    blocking: bool = False


@dataclass(frozen=True, kw_only=True)
class Observation:
    """What one reconcile saw and decided."""

    generation: int
    min_replicas: int
    spec_replicas: int
    selector: str | None
    deployment: dict[str, Any] | None
    problems: list[Problem] = field(default_factory=list)
    queue_backlog: int | None = None


def _deployment_counts(deployment: dict[str, Any] | None) -> dict[str, int]:
    status = (deployment or {}).get("status") or {}
    return {k: int(status.get(k) or 0) for k in (
        "replicas", "readyReplicas", "availableReplicas", "updatedReplicas", "observedGeneration")}


def _rollout_state(obs: Observation) -> tuple[bool, str, str]:
    """(in progress, reason, message) of the Deployment's rollout and scaling."""
    if obs.deployment is None:
        return True, Reason.ROLLING_OUT, "creating the Deployment"
    counts = _deployment_counts(obs.deployment)
    generation = int((obs.deployment.get("metadata") or {}).get("generation") or 0)
    if counts["observedGeneration"] < generation or counts["updatedReplicas"] < obs.spec_replicas:
        return True, Reason.ROLLING_OUT, (
            f"{counts['updatedReplicas']} of {obs.spec_replicas} pods run the current template")
    if counts["replicas"] != obs.spec_replicas or counts["availableReplicas"] < obs.spec_replicas:
        return True, Reason.SCALING, (
            f"{counts['availableReplicas']} of {obs.spec_replicas} pods available")
    return False, Reason.COMPLETE, f"{obs.spec_replicas} pods available and up to date"


def _condition(type_: str, ok: bool, reason: str, message: str, obs: Observation,
               now: dt.datetime) -> Condition:
    return Condition(type=type_, status="True" if ok else "False", reason=reason,
                     message=message, observed_generation=obs.generation,
                     last_transition_time=now)


def compute_status(obs: Observation, current: dict[str, Any], now: dt.datetime
                   ) -> dict[str, Any]:
    """The status to write, as the API's camelCase dict."""
    conditions = [Condition.model_validate(c) for c in current.get("conditions") or []]
    counts = _deployment_counts(obs.deployment)
    blocking = next((p for p in obs.problems if p.blocking), None)

    if blocking is not None:
        ready = _condition(ConditionType.READY, False, blocking.reason,
                           clamp(blocking.message, MAX_PROBLEM_MESSAGE), obs, now)
    elif counts["availableReplicas"] >= obs.min_replicas:
        ready = _condition(ConditionType.READY, True, Reason.MIN_AVAILABLE,
                           f"{counts['availableReplicas']} pods available "
                           f"(minReplicas {obs.min_replicas})", obs, now)
    else:
        ready = _condition(ConditionType.READY, False, Reason.MIN_UNAVAILABLE,
                           f"{counts['availableReplicas']} pods available, "
                           f"minReplicas is {obs.min_replicas}", obs, now)

    moving, reason, message = _rollout_state(obs)
    progressing = _condition(ConditionType.PROGRESSING, moving and blocking is None,
                             reason if blocking is None else blocking.reason,
                             message if blocking is None else "blocked: see Degraded", obs, now)

    if obs.problems:
        worst = blocking or obs.problems[0]
        text = clamp("; ".join(clamp(p.message, MAX_PROBLEM_MESSAGE) for p in obs.problems),
                     MAX_CONDITION_MESSAGE)
        degraded = _condition(ConditionType.DEGRADED, True, worst.reason, text, obs, now)
    else:
        degraded = _condition(ConditionType.DEGRADED, False, Reason.AS_EXPECTED, "", obs, now)

    for new in (ready, progressing, degraded):
        conditions, _ = set_condition(conditions, new)

    status: dict[str, Any] = {
        "observedGeneration": obs.generation,
        "replicas": counts["replicas"],
        "readyReplicas": counts["readyReplicas"],
        "availableReplicas": counts["availableReplicas"],
        "conditions": [c.model_dump(mode="json", by_alias=True, exclude_none=True)
                       for c in conditions],
    }
    if obs.selector is not None:
        status["selector"] = obs.selector
    if obs.queue_backlog is not None:
        status["queueBacklog"] = obs.queue_backlog
    elif "queueBacklog" in current:
        status["queueBacklog"] = current["queueBacklog"]
    return status


def status_changed(current: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Whether writing `desired` would change anything the operator owns."""
    return any(current.get(key) != value for key, value in desired.items())


def crash_looping(pods: list[dict[str, Any]]) -> Problem | None:
    """A Degraded problem when any pool container is in CrashLoopBackOff."""
    looping: list[str] = []
    for pod in pods:
        status = pod.get("status") or {}
        for container in (status.get("containerStatuses") or []) + (
                status.get("initContainerStatuses") or []):
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") == "CrashLoopBackOff":
                looping.append(f"{pod['metadata']['name']}/{container['name']}")
    if not looping:
        return None
    shown = ", ".join(sorted(looping)[:5])
    more = f" and {len(looping) - 5} more" if len(looping) > 5 else ""
    return Problem(reason=Reason.CRASH_LOOPING, message=f"containers crash-looping: {shown}{more}")


def deployment_problems(deployment: dict[str, Any] | None) -> list[Problem]:
    """Degraded problems the Deployment controller reports: pods it cannot create, a rollout
    past its progress deadline."""
    found = []
    for condition in ((deployment or {}).get("status") or {}).get("conditions") or []:
        kind, status = condition.get("type"), condition.get("status")
        if kind == "ReplicaFailure" and status == "True":
            found.append(Problem(reason=Reason.POD_CREATION_FAILED,
                                 message=f"pods cannot be created: {condition.get('message', '')}"))
        elif (kind == "Progressing" and status == "False"
              and condition.get("reason") == "ProgressDeadlineExceeded"):
            found.append(Problem(reason=Reason.ROLLOUT_STUCK,
                                 message=f"rollout stuck: {condition.get('message', '')}"))
    return found

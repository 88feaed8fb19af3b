"""How a worker process ends, as its supervisor reads its exit status (pure).

The worker exits with one of these codes (`worker/process.py`, `worker/lifeline.py`); the
supervisor turns any exit status into the words its tasks' last error and its log use.
"""

from __future__ import annotations

import signal

EXIT_OK = 0
EXIT_BOOT_ERROR = 3
"""Warm-up failed; the supervisor backs off before the next attempt."""
EXIT_SUPERVISOR_GONE = 4
"""The supervisor was gone: nothing renewed the pod's leases."""
EXIT_LEASES_LAPSING = 5
"""The leases the supervisor last confirmed were about to lapse with handlers running."""

_MEANINGS = {
    EXIT_SUPERVISOR_GONE: "its supervisor was gone",
    EXIT_LEASES_LAPSING: "the pod's leases could not be confirmed",
}


def describe_exit(code: int | None) -> str:
    if code is None:
        return "no exit status"
    if code in _MEANINGS:
        return f"exit code {code} ({_MEANINGS[code]})"
    if code < 0:
        try:
            return f"signal {-code} ({signal.Signals(-code).name})"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"

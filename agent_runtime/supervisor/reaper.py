"""Reaps orphaned processes when the supervisor is PID 1 (a container started without an init).

Processes whose parent exits are re-parented to PID 1: a handler that starts a subprocess and
does not wait for it, or the workers themselves if the fork server dies. Nothing else would
collect their exit status, so each would stay a zombie (a process-table slot) for the life of
the pod. The supervisor calls `reap_orphans` on its tick; it only touches zombies, and never
the children `multiprocessing` itself waits for (the fork server and the resource tracker),
so their bookkeeping is unaffected. Outside PID 1 it does nothing: the real init reaps.
"""

from __future__ import annotations

import contextlib
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os

import psutil


def multiprocessing_children() -> set[int]:
    """Children whose exit status `multiprocessing` collects itself."""
    pids = {getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None),
            getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None)}
    return {pid for pid in pids if isinstance(pid, int)}


def reap_orphans(is_init: bool | None = None) -> list[int]:
    """Collect exited children that nobody else waits for; returns their pids. `is_init`
    overrides the PID 1 check (tests)."""
    if not (os.getpid() == 1 if is_init is None else is_init):
        return []
    keep = multiprocessing_children()
    try:
        children = psutil.Process().children()
    except psutil.Error:
        return []
    reaped = []
    for child in children:
        if child.pid in keep:
            continue
        with contextlib.suppress(psutil.Error, ChildProcessError):
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
                reaped.append(child.pid)
    return reaped

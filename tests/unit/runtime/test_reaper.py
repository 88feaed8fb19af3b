"""Zombie reaping for a supervisor that runs as PID 1."""

from __future__ import annotations

import multiprocessing
import os
import time

import psutil

from agent_runtime.supervisor.reaper import multiprocessing_children, reap_orphans


def _zombie() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    for _ in range(200):  # until the child has exited (and is a zombie: nobody waited)
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return pid
        time.sleep(0.01)
    raise AssertionError("the forked child did not exit")


def test_as_init_exited_orphans_are_reaped() -> None:
    pid = _zombie()
    assert pid in reap_orphans(is_init=True)
    assert not psutil.pid_exists(pid)


def test_not_as_init_nothing_is_touched() -> None:
    pid = _zombie()
    try:
        assert reap_orphans() == []  # pytest is not PID 1
        assert psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    finally:
        os.waitpid(pid, 0)


def test_the_fork_server_is_left_to_multiprocessing() -> None:
    context = multiprocessing.get_context("forkserver")
    process = context.Process(target=time.sleep, args=(0,))
    process.start()
    process.join(10)
    assert process.exitcode == 0
    assert multiprocessing_children()  # the fork server (and resource tracker) exist
    reaped = reap_orphans(is_init=True)
    assert not set(reaped) & multiprocessing_children()
    again = context.Process(target=time.sleep, args=(0,))
    again.start()  # the fork server still works after a reaping pass
    again.join(10)
    assert again.exitcode == 0

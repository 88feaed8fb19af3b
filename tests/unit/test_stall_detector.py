"""Watch-stall detection: liveness fails only when the watch lags a fresh list for too long."""

from __future__ import annotations

from agentpool_operator.resync import StallDetector

KEY = ("ns", "pool")


def test_a_watch_that_keeps_up_is_never_stalled() -> None:
    detector = StallDetector(stall_seconds=30)
    detector.observed(KEY, "5")
    detector.listed({KEY: "5"}, now=0)
    assert not detector.stalled(now=1000)


def test_a_list_newer_than_the_watch_stalls_after_the_threshold() -> None:
    detector = StallDetector(stall_seconds=30)
    detector.observed(KEY, "5")
    detector.listed({KEY: "6"}, now=0)
    assert not detector.stalled(now=29)
    detector.listed({KEY: "6"}, now=20)  # still behind: the clock keeps running from t=0
    assert detector.stalled(now=31)


def test_any_event_for_the_pool_clears_the_lag() -> None:
    detector = StallDetector(stall_seconds=30)
    detector.listed({KEY: "6"}, now=0)
    detector.observed(KEY, "7")  # churn: the watch is alive even if versions never line up
    assert not detector.stalled(now=100)


def test_deleted_pools_stop_counting() -> None:
    detector = StallDetector(stall_seconds=30)
    detector.listed({KEY: "6"}, now=0)
    detector.listed({}, now=10)
    assert not detector.stalled(now=100)

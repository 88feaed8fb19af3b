"""How a worker's memory growth is put down to handlers (`supervisor/leaks.py`)."""

from __future__ import annotations

from agent_runtime.supervisor.leaks import MemoryTrend, build_report, summary

MB = 1 << 20


def test_growth_goes_to_the_handlers_by_the_time_their_tasks_ran_in_each_interval() -> None:
    trend = MemoryTrend()
    trend.sample(100 * MB, [], now=10.0)  # right after warm-up: the baseline
    # In (10, 10.5]: a 0.4 s leaking task and two instant ones; memory grew 10 MiB.
    trend.task_done("leak", 0.4, 10.45)
    trend.task_done("default", 0.0, 10.2)
    trend.task_done("default", 0.001, 10.3)
    trend.sample(110 * MB, [], now=10.5)
    # In (10.5, 11]: a leaking task still running since 10.6; memory grew 10 MiB more.
    trend.sample(120 * MB, [("leak", 10.6)], now=11.0)
    # Memory that shrinks is not negative growth for anyone.
    trend.sample(119 * MB, [("default", 10.9)], now=11.5)
    assert trend.growth["leak"] > 19.9 * MB
    assert trend.growth.get("default", 0) < 0.1 * MB
    report = build_report(pod="p", worker="p-abc-0.1", slot=0, pid=7, action="recycled",
                          detail="USS above the limit", uss=119 * MB, trend=trend)
    assert (report["growth_bytes"], report["tasks"]) == (19 * MB, 3)
    assert [row["handler"] for row in report["handlers"]] == ["leak", "default"]
    assert summary(report).startswith("worker p-abc-0.1 recycled for memory (USS above the "
                                      "limit); USS 119.0 MiB, 19.0 MiB more than after "
                                      "warm-up over 3 task(s) (6.3 MiB per task); growth came "
                                      "with handler leak (20.0 MiB over 1 task(s))")

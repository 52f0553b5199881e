"""The scheduler's lifecycle events counted per task for the metrics (worker/scheduler/broker_metrics)."""

from __future__ import annotations

from sluice import metrics
from worker.scheduler.broker_metrics import Lifecycle


def test_lifecycle_events_are_counted_per_task_and_drained_once() -> None:
    # Given a process's events: two ticks started late, one failing, skipped slots, a reseed
    lifecycle = Lifecycle()
    for task, event, fields in [
        ("a", "started", {"lateness_s": 0.004}),
        ("a", "succeeded", {}),
        ("a", "started", {"lateness_s": 0.012}),
        ("a", "failed", {"retry_in_s": 5}),
        ("a", "missed", {"missed": 3}),
        ("a", "scheduled", {"missed": 2}),  # a run overran two slots
        ("a", "scheduled", {"missed": 0}),
        ("b", "reseeded", {}),
        ("b", "duplicate", {}),  # not a metric
    ]:
        lifecycle.record(task, event, fields)
    # When the publisher drains them
    figures = {(f.name, f.dimensions): f.value for f in lifecycle.drain()}
    # Then each task has its counts and its worst lateness
    a, b = (("Task", "a"),), (("Task", "b"),)
    assert figures == {
        (metrics.TICK_EVENTS["started"], a): 2,
        (metrics.TICK_EVENTS["succeeded"], a): 1,
        (metrics.TICKS_FAILED, a): 1,
        (metrics.TICKS_MISSED, a): 5,
        (metrics.TICK_EVENTS["scheduled"], a): 2,
        (metrics.TICK_LATENESS, a): 12.0,
        (metrics.TICK_EVENTS["reseeded"], b): 1,
    }
    # and the next drain starts from zero
    assert lifecycle.drain() == []

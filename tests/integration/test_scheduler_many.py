"""Many tasks in one scheduler process against a real rabbitmq-server: one connection for all of
its runners, every task on its grid, no tick run twice."""

from __future__ import annotations

import time

import pytest

from devtools.rabbitmq import RabbitNode
from sluice.scheduling.names import Names
from sluice.scheduling.registry import PeriodicTask, Registry
from sluice.scheduling.schedule import Every
from tests.integration.scheduling import Recorder, grid_steps
from worker.scheduler.runner import Scheduler

TASKS = 40
PERIOD_S = 0.5


def connections(rabbit: RabbitNode) -> int:
    return len(rabbit.ctl("list_connections", "pid", "--silent").split())


@pytest.mark.slow
def test_many_tasks_share_one_connection_and_each_keeps_its_grid(rabbit: RabbitNode, names: Names):
    # Given 40 tasks at 500 ms, their ticks spread over the period, in one scheduler process
    recorders = [Recorder() for _ in range(TASKS)]
    registry = Registry(
        [
            PeriodicTask(f"many{i:02d}", Every(PERIOD_S, PERIOD_S * i / TASKS), action=rec)
            for i, rec in enumerate(recorders)
        ]
    )
    before = connections(rabbit)
    with Scheduler(registry, rabbit.url, names=names):
        # When every task has run a few ticks
        deadline = time.monotonic() + 60
        while min(len(r.completed()) for r in recorders) < 6 and time.monotonic() < deadline:
            time.sleep(0.1)
        during = connections(rabbit)
    # Then the process held one connection for its runners and one for its reconciler (a
    # connection per runner was most of a tick's CPU: bench/scheduler_bench.py, many tasks)
    assert during - before <= 2, f"{during - before} connections for {TASKS} tasks"
    for rec in recorders:
        runs = rec.completed()
        assert len(runs) >= 6
        dues = [r.due for r in runs]
        assert len(dues) == len(set(dues)), "a tick ran twice"
        # and each task stayed on its grid (a slot skipped only by a stall of the machine)
        steps = grid_steps(runs[1:], PERIOD_S)
        assert min(steps) >= 1 and steps.count(1) >= 0.8 * len(steps), steps

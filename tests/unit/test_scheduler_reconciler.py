"""The reconciler's quiet window: when a task with no token in sight counts as having lost it.

The broker's count (a passive queue declaration) leaves out a token delivered to its runner and
not yet acknowledged, so a token that fell due is invisible until its runner reports the tick.
The reconciler is driven here by hand: its clocks, the queues' count and the lifecycle events
are the test's, everything else is the real class. The real-broker cases (a purged hatchery
re-seeded within a period, a paused runner's spare dropped) are in tests/integration."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from sluice.scheduling.names import Names, quiet_window_s
from sluice.scheduling.registry import PeriodicTask, Registry
from sluice.scheduling.schedule import Every
from worker.scheduler.ledger import MemoryLedger
from worker.scheduler.runner import COUNT_BUDGET_PER_S, Reconciler

TASK = PeriodicTask("report", Every(1.0), action=lambda tick: None)
WINDOW = quiet_window_s(TASK)  # 0.5 s


class Drive:
    """A reconciler on a fake clock (epoch = 1000 + monotonic) and a fake token count."""

    def __init__(self) -> None:
        self.now = 0.0
        self.tokens = 0
        self.seeded: list[float] = []
        ledger = MemoryLedger()
        ledger.claim(TASK.name, 999_000, 999_000, 1000, "earlier")  # the task ran before
        self.reconciler = Reconciler(
            Registry([TASK]), "amqp://unused", names=Names(), clock=lambda: 1000 + self.now,
            ledger=ledger,
        )  # fmt: skip
        self.reconciler.monotonic = lambda: self.now
        self.counts = 0  # tasks' tokens counted (passive declares asked of the broker)
        self.reconciler.inventories = self._inventories  # type: ignore[method-assign]
        self.reconciler.publish_token = (  # type: ignore[method-assign]
            lambda token, delay=None: self.seeded.append(token.due)
        )
        self.reconciler.emit = lambda *a, **k: None  # type: ignore[method-assign]

    def _inventories(self, tasks: list[str]) -> dict[str, int]:
        self.counts += len(tasks)
        return {task: self.tokens for task in tasks}

    def event(self, name: str, **fields: Any) -> None:
        method = SimpleNamespace(routing_key=f"{TASK.name}.{name}")
        body = json.dumps({"task": TASK.name, "event": name, **fields}).encode()
        self.reconciler._on_event(None, method, None, body)

    def check_at(self, t: float, tokens: int) -> None:
        self.now, self.tokens = t, tokens
        self.reconciler._sweep([TASK])


def test_a_token_held_by_a_runner_that_reports_late_is_not_reseeded() -> None:
    # Given a token due at 0.2 s, seen waiting in its hatchery before then
    d = Drive()
    d.event("scheduled", due=1000.2)
    d.check_at(0.1, tokens=1)
    # When it falls due and its runner, busy, holds it unreported for 0.7 s (more than the
    # quiet window: the queues count nothing meanwhile)
    for t in (0.25, 0.5, 0.75, 0.9):
        d.check_at(t, tokens=0)
    d.now = 0.9
    d.event("started", due=1000.2)
    d.event("scheduled", due=1001.2)
    d.check_at(1.0, tokens=1)
    # Then no spare token was seeded
    assert d.seeded == []


def test_a_token_lost_from_its_hatchery_is_reseeded_within_the_window() -> None:
    # Given a token due at 1.0 s; When its hatchery is emptied before then (purged)
    d = Drive()
    d.event("scheduled", due=1001.0)
    d.check_at(0.1, tokens=0)
    d.check_at(0.35, tokens=0)
    assert d.seeded == []
    d.check_at(0.1 + WINDOW, tokens=0)
    # Then a new token is seeded one window after the loss was seen, for the next tick
    assert d.seeded == [1001.0]


def test_a_token_whose_runner_never_reports_after_its_due_time_is_reseeded() -> None:
    # Given a token due at 0.2 s whose runner froze holding it (or lost it without a word)
    d = Drive()
    d.event("scheduled", due=1000.2)
    t = 0.25
    while not d.seeded and t < 3:
        d.check_at(t, tokens=0)
        t += WINDOW / 2
    # Then it is re-seeded, about two windows after its due time (within a period)
    assert d.seeded and 0.2 + WINDOW <= d.now <= 0.2 + 2 * WINDOW + WINDOW / 2


def test_each_task_is_counted_as_often_as_its_own_window_needs() -> None:
    # Given a 1 s task and a 20 s one (windows 0.5 s and 10 s), both tokens waiting in their
    # hatcheries, swept every 0.25 s (half the shortest window) for 10 s
    slow = PeriodicTask("digest", Every(20.0), action=lambda tick: None)
    d = Drive()
    d.tokens = 1
    asked: list[str] = []

    def inventories(tasks: list[str]) -> dict[str, int]:
        asked.extend(tasks)
        return dict.fromkeys(tasks, 1)

    d.reconciler.inventories = inventories  # type: ignore[method-assign]
    d.event("scheduled", due=1100.0)
    for i in range(40):
        d.now = i * 0.25
        d.reconciler._sweep([TASK, slow])
    # Then the 1 s task was counted at every sweep, the 20 s one every 5 s (half its window)
    assert asked.count(TASK.name) == 40
    assert asked.count(slow.name) == 2  # at 0 s and 5 s
    assert d.seeded == []


def test_counts_keep_to_the_budget_and_reach_every_task_in_turn() -> None:
    # Given 2.5 x COUNT_BUDGET_PER_S tasks at 1 s, their tokens waiting, swept every 0.25 s
    tasks = [
        PeriodicTask(f"t{i:05d}", Every(1.0), action=lambda tick: None)
        for i in range(int(2.5 * COUNT_BUDGET_PER_S))
    ]
    d = Drive()
    d.tokens = 1
    rounds: list[list[str]] = []

    def inventories(names: list[str]) -> dict[str, int]:
        rounds.append(names)
        return dict.fromkeys(names, 1)

    d.reconciler.inventories = inventories  # type: ignore[method-assign]
    for i in range(20):
        d.now = 10 + i * 0.25
        d.reconciler._sweep(tasks)
    # Then no sweep asked for more than the budget allows for its quarter second (the first,
    # with no sweep before it, a second's worth)
    assert len(rounds[0]) == COUNT_BUDGET_PER_S
    assert all(len(r) == COUNT_BUDGET_PER_S / 4 for r in rounds[1:])
    # and every task was counted once before any was counted a second time
    order = [name for r in rounds for name in r]
    assert sorted(order[: len(tasks)]) == sorted(t.name for t in tasks)
    # And a task seen empty is counted at the next sweep, ahead of the others
    d.tokens = 0
    rounds.clear()
    lost = tasks[7]
    d.reconciler._empty_since[lost.name] = d.now
    d.now += 0.25
    d.reconciler._sweep(tasks)
    assert rounds[0][0] == lost.name


def test_a_token_its_runner_keeps_for_the_next_tick_is_not_counted_until_that_is_late() -> None:
    # Given a runner that keeps its task's delivery across ticks (SLUICE_SCHEDULER_HOLD_S): each
    # tick announces the next one as kept, and the queues count nothing meanwhile
    d = Drive()
    for tick in range(5):
        d.now = tick * 1.0 + 0.01
        d.event("scheduled", due=1000 + tick + 1.0, held=True)
        for t in (0.1, 0.35, 0.6, 0.85):
            d.check_at(tick + t, tokens=0)
    # Then the task is never counted and nothing is seeded
    assert (d.counts, d.seeded) == (0, [])


def test_a_kept_token_whose_runner_goes_silent_is_reseeded() -> None:
    # Given a kept token due at 1.0 s whose runner freezes with it (the delivery is neither
    # given back nor reported)
    d = Drive()
    d.event("scheduled", due=1001.0, held=True)
    t = 0.1
    while not d.seeded and t < 5:
        d.check_at(t, tokens=0)
        t += WINDOW / 2
    # Then it is counted only once its tick is a quiet window late, and re-seeded a window later
    assert d.seeded and 1.0 + 2 * WINDOW <= d.now <= 1.0 + 3 * WINDOW
    # and a token announced through the hatchery again is counted as before
    d.seeded.clear()
    counted = d.counts
    d.event("scheduled", due=1000 + d.now + 1.0)
    d.check_at(d.now + WINDOW / 2, tokens=1)
    assert d.counts == counted + 1


def test_a_new_leader_waits_a_period_for_a_kept_tokens_first_report() -> None:
    # Given a process that has just taken the lead, where runners keep their tokens across ticks
    # (it has heard nothing of the task yet: its token, kept, is out of the count)
    d = Drive()
    d.reconciler.hold_s = 30.0
    d.reconciler._led_at = 0.0
    # When the runner next reports only as its next tick runs, 0.9 s later
    for t in (0.0, 0.25, 0.5, 0.75):
        d.check_at(t, tokens=0)
    d.now = 0.9
    d.event("scheduled", due=1001.9, held=True)
    d.check_at(1.0, tokens=0)
    # Then no spare token was seeded
    assert d.seeded == []


def test_a_new_leader_still_reseeds_a_kept_token_that_is_never_reported() -> None:
    d = Drive()
    d.reconciler.hold_s = 30.0
    d.reconciler._led_at = 0.0
    t = 0.0
    while not d.seeded and t < 5:
        d.check_at(t, tokens=0)
        t += WINDOW / 2
    # Re-seeded once a period and a window have passed with no report
    assert d.seeded and 1.0 + WINDOW <= d.now <= 1.0 + WINDOW + WINDOW / 2

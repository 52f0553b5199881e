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
from worker.scheduler.runner import Reconciler

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
        self.reconciler.inventory = lambda task: self.tokens  # type: ignore[method-assign]
        self.reconciler.publish_token = (  # type: ignore[method-assign]
            lambda token, delay=None: self.seeded.append(token.due)
        )
        self.reconciler.emit = lambda *a, **k: None  # type: ignore[method-assign]

    def event(self, name: str, **fields: Any) -> None:
        method = SimpleNamespace(routing_key=f"{TASK.name}.{name}")
        body = json.dumps({"task": TASK.name, "event": name, **fields}).encode()
        self.reconciler._on_event(None, method, None, body)

    def check_at(self, t: float, tokens: int) -> None:
        self.now, self.tokens = t, tokens
        self.reconciler._check(TASK)


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

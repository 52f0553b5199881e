"""When ticks are due: fixed periods on a global grid, or 5-field cron expressions (UTC).

Tick times are absolute: a period schedule's ticks fall on multiples of the period since the Unix
epoch (plus an offset), so every process, every restart and every re-seeded token agrees on the
grid without shared state, and processing time can never shift it (no drift).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cronsim import CronSim, CronSimError


class ScheduleError(ValueError):
    """A period or cron expression that cannot be scheduled; the message says why."""


@dataclass(frozen=True)
class Every:
    """Every `period_s` seconds, ticks at `offset_s + k * period_s` (epoch seconds)."""

    period_s: float
    offset_s: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.period_s) and self.period_s > 0):
            raise ScheduleError(f"period must be a positive number of seconds, got {self.period_s}")
        if not 0 <= self.offset_s < self.period_s:
            raise ScheduleError(f"offset must be in [0, period), got {self.offset_s}")

    @property
    def nominal_period_s(self) -> float:
        return self.period_s

    def _index(self, t: float) -> int:
        return math.floor((t - self.offset_s) / self.period_s + 1e-9)

    def at(self, k: int) -> float:
        return self.offset_s + k * self.period_s

    def first_after(self, t: float) -> float:
        """The first tick strictly after `t`."""
        return self.at(self._index(t) + 1)

    def last_at_or_before(self, t: float) -> float:
        return self.at(self._index(t))

    def cron_expression(self) -> str:
        """The closest cron.yaml schedule (minute granularity; sub-minute periods run each minute)."""
        p = self.period_s
        if self.offset_s:
            raise ScheduleError("an offset period has no cron equivalent; use a Cron schedule")
        if p <= 60:
            return "* * * * *"
        minutes = p / 60
        if minutes < 60 and minutes == int(minutes) and 60 % int(minutes) == 0:
            return f"*/{int(minutes)} * * * *"
        hours = p / 3600
        if hours < 24 and hours == int(hours) and 24 % int(hours) == 0:
            return "0 * * * *" if hours == 1 else f"0 */{int(hours)} * * *"
        if p == 86_400:
            return "0 0 * * *"
        raise ScheduleError(
            f"a period of {p} s has no cron equivalent (use a divisor of an hour or a day, "
            "or a Cron schedule)"
        )


@dataclass(frozen=True)
class Cron:
    """A 5-field cron expression in UTC (minute hour day-of-month month day-of-week).

    Parsing and stepping are cronsim's (the library healthchecks.io runs its cron checks on),
    including standard cron's rule that a restricted day-of-month and day-of-week match either.
    """

    expression: str

    def __post_init__(self) -> None:
        if len(self.expression.split()) != 5:
            raise ScheduleError(f"cron needs 5 fields, got {self.expression!r}")
        try:
            self.first_after(0.0)  # an impossible date (31 February) fails here, not at run time
        except (CronSimError, StopIteration) as exc:
            raise ScheduleError(f"cron {self.expression!r}: {exc or 'never fires'}") from None

    @property
    def nominal_period_s(self) -> float:
        """The shortest gap between two fires (the reconciler's and alarms' time scale)."""
        fires = CronSim(self.expression, datetime.now(UTC))
        times = [next(fires).timestamp() for _ in range(9)]
        return min(b - a for a, b in itertools.pairwise(times))

    def first_after(self, t: float) -> float:
        """The first fire strictly after `t`."""
        return next(CronSim(self.expression, datetime.fromtimestamp(t, UTC))).timestamp()

    def last_at_or_before(self, t: float) -> float:
        # cronsim's reverse iteration starts strictly before its start: start just after `t`.
        start = datetime.fromtimestamp(t, UTC) + timedelta(microseconds=1)
        return next(CronSim(self.expression, start, reverse=True)).timestamp()

    def cron_expression(self) -> str:
        return " ".join(self.expression.split())


Schedule = Every | Cron


def latest_due(schedule: Schedule, due: float, now: float) -> tuple[float, int]:
    """The tick a token for `due` runs at `now`, and how many ticks it skips (missed).

    A token that arrives after later ticks fell due (a stall, an outage, a spare token) runs
    only the latest of them, at once (reported late); the ones before it are reported missed.
    """
    latest = schedule.last_at_or_before(now)
    if latest <= due:
        return due, 0
    missed = 0
    t = due
    while t < latest:
        missed += 1
        t = schedule.first_after(t)
    return latest, missed


def next_due(schedule: Schedule, previous_due: float, now: float) -> tuple[float, int]:
    """The tick to run after `previous_due`, and how many ticks were missed on the way.

    If processing overran one or more ticks, the latest tick that is already due runs at once (it
    is reported late) and the ones before it are reported missed: the grid never moves, runs
    never overlap, and an overrunning task neither piles up work nor waits idle.
    """
    return latest_due(schedule, schedule.first_after(previous_due), now)
